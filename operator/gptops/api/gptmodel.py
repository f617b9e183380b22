"""The GPTModel kind: a model and how it is served. Mirrors crds/gptops.io_gptmodels.yaml (tested against it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gptops.api.common import (
    LIST_MAX,
    NAME_MAX,
    ApiKeySecretRef,
    Name,
    ObjectModel,
    Path,
    Quantity,
    SecretRef,
    ShortString,
    SpecModel,
    StatusModel,
    TokenSecretRef,
    Toleration,
    URI_MAX,
)
from gptops.api.conditions import Condition
from gptops.api.constants import DEFAULT_VLLM_IMAGE, KIND_GPTMODEL, LORA_RANK_MAX, VLLM_PORT


class HuggingFaceModelSource(SpecModel):
    """A model repository on the Hugging Face Hub."""

    repo: Name
    revision: Name = "main"
    token_secret_ref: TokenSecretRef | None = None


class PVCModelSource(SpecModel):
    """A model directory on a PersistentVolumeClaim."""

    claim_name: Name
    path: Path


class S3Source(SpecModel):
    """An S3 (or S3-compatible) prefix."""

    uri: str = Field(min_length=6, max_length=URI_MAX, pattern=r"^s3://")
    credentials_secret_ref: SecretRef | None = None
    endpoint_url: str | None = Field(default=None, max_length=URI_MAX)


class LocalSource(SpecModel):
    """gptops run only: a path on this machine, relative to the spec file."""

    path: Path = Field(pattern=r"^[^\x00]*$")  # no NUL byte: no filesystem path has one


class TokenizerSettings(SpecModel):
    """The byte-level BPE tokenizer trained for a scratch model."""

    vocab_size: int = Field(default=8000, ge=256, le=262144)


class ScratchSource(SpecModel):
    """A new model built from a config and trained from scratch."""

    architecture: Literal["gpt2", "llama"] = "gpt2"
    layers: int = Field(default=4, ge=1, le=256)
    heads: int = Field(default=4, ge=1, le=256)
    hidden: int = Field(default=256, ge=8, le=65536)
    context_length: int = Field(default=256, ge=8, le=1048576)
    tokenizer: TokenizerSettings = Field(default_factory=TokenizerSettings)

    @model_validator(mode="after")
    def _hidden_divisible(self) -> ScratchSource:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        return self


class ModelSource(SpecModel):
    """Exactly one of the sources."""

    huggingface: HuggingFaceModelSource | None = None
    pvc: PVCModelSource | None = None
    s3: S3Source | None = None
    local: LocalSource | None = None
    scratch: ScratchSource | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        if sum(v is not None for v in (self.huggingface, self.pvc, self.s3, self.local, self.scratch)) != 1:
            raise ValueError("exactly one of huggingface, pvc, s3, local or scratch must be set")
        return self

    @property
    def kind(self) -> str:
        """Which source is set: huggingface, pvc, s3, local or scratch."""
        for name in ("huggingface", "pvc", "s3", "local", "scratch"):
            if getattr(self, name) is not None:
                return name
        raise AssertionError("validated: one source is set")


class ArtifactsPVC(SpecModel):
    """The claim that holds datasets, checkpoints and models."""

    claim_name: Name


class Artifacts(SpecModel):
    """Where this model's runs keep their artifacts."""

    pvc: ArtifactsPVC | None = None


class ServingResources(SpecModel):
    """Resources of each vLLM replica."""

    gpus: int = Field(default=1, ge=0, le=64)
    cpu: Quantity | None = None
    memory: Quantity | None = None


class VLLMSettings(SpecModel):
    """vLLM engine arguments."""

    max_model_len: int | None = Field(default=None, ge=1, le=10_000_000)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    enable_prefix_caching: bool = True
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    extra_args: list[ShortString] = Field(default_factory=list, max_length=LIST_MAX)


class Serving(SpecModel):
    """How the model is served."""

    engine: Literal["vllm"] = "vllm"
    image: str = Field(default=DEFAULT_VLLM_IMAGE, min_length=1, max_length=512)
    replicas: int = Field(default=1, ge=0, le=100)
    revision: Name | None = None
    rollout_deadline_seconds: int = Field(default=600, ge=30, le=86400)
    resources: ServingResources = Field(default_factory=ServingResources)
    node_selector: dict[str, ShortString] = Field(default_factory=dict, max_length=LIST_MAX)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=LIST_MAX)
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)
    api_key_secret_ref: ApiKeySecretRef | None = None

    @model_validator(mode="after")
    def _tensor_parallel_fits(self) -> Serving:
        if self.resources.gpus and self.vllm.tensor_parallel_size > self.resources.gpus:
            raise ValueError("vllm.tensorParallelSize must not exceed resources.gpus")
        return self


class GPTModelSpec(SpecModel):
    """The desired state of a GPTModel."""

    source: ModelSource
    artifacts: Artifacts = Field(default_factory=Artifacts)
    serving: Serving = Field(default_factory=Serving)


class GPTModelStatus(StatusModel):
    """What the operator observed and decided for a GPTModel."""

    serving_revision: str | None = Field(default=None, max_length=NAME_MAX)
    previous_revision: str | None = Field(default=None, max_length=NAME_MAX)
    serving_artifact: str | None = None
    serving_adapter: str | None = None
    serving_lora_rank: int | None = Field(default=None, ge=1, le=LORA_RANK_MAX)
    serving_digest: str | None = None
    serving_passed_at: str | None = None
    previous_artifact: str | None = None
    previous_adapter: str | None = None
    previous_lora_rank: int | None = Field(default=None, ge=1, le=LORA_RANK_MAX)
    previous_digest: str | None = None
    previous_passed_at: str | None = None
    endpoint: str | None = None
    serving: str | None = None
    ready: str | None = None
    ready_replicas: int | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)


class GPTModel(ObjectModel):
    """A whole GPTModel object as read from the API or a file."""

    kind: Literal["GPTModel"] = KIND_GPTMODEL  # type: ignore[assignment]
    spec: GPTModelSpec
    status: GPTModelStatus = Field(default_factory=GPTModelStatus)

    def endpoint(self) -> str:
        """The OpenAI-compatible base URL of the Service."""
        return f"http://{self.name}.{self.namespace}.svc:{VLLM_PORT}/v1"
