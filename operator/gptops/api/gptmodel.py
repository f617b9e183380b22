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
    Scheduling,
    ShortString,
    SpecModel,
    StatusModel,
    TokenSecretRef,
    Toleration,
)
from gptops.api.conditions import Condition
from gptops.api.constants import (
    DEFAULT_TRAINER_IMAGE,
    DEFAULT_VLLM_IMAGE,
    KIND_GPTMODEL,
    LORA_RANK_MAX,
    VLLM_PORT,
)
from gptops.api.sources import DatasetFields, DatasetSource, LocalSource, S3Source


class HuggingFaceModelSource(SpecModel):
    """A model repository on the Hugging Face Hub."""

    repo: Name
    revision: Name = "main"
    token_secret_ref: TokenSecretRef | None = None


class PVCModelSource(SpecModel):
    """A model directory on a PersistentVolumeClaim."""

    claim_name: Name
    path: Path


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
    """Resources of each server replica (GPUs for vLLM only)."""

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


#: The most LoRA adapters one vLLM server serves (spec.serving.lora.maxAdapters).
LORA_ADAPTERS_MAX = 32


class LoRAServing(SpecModel):
    """How many promoted LoRA adapters of the same base one vLLM server serves side by side."""

    max_adapters: int = Field(default=1, ge=1, le=LORA_ADAPTERS_MAX)


class Autoscaling(SpecModel):
    """A HorizontalPodAutoscaler on the requests waiting in each vLLM Pod (custom metrics API), or a KEDA
    ScaledObject where KEDA is installed (then minReplicas may be 0)."""

    min_replicas: int = Field(default=1, ge=0, le=100)
    max_replicas: int = Field(ge=1, le=100)
    target_waiting_requests: int = Field(default=4, ge=1, le=10_000)

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.minReplicas must not exceed autoscaling.maxReplicas")
        return self


class Serving(SpecModel):
    """How the model is served: vLLM on GPUs, or `transformers serve` from the trainer image on CPU."""

    engine: Literal["vllm", "transformers"] = "vllm"
    image: str | None = Field(default=None, min_length=1, max_length=512)
    replicas: int = Field(default=1, ge=0, le=100)
    revision: Name | None = None
    autoscaling: Autoscaling | None = None
    rollout_deadline_seconds: int = Field(default=600, ge=30, le=86400)
    resources: ServingResources = Field(default_factory=ServingResources)
    node_selector: dict[str, ShortString] = Field(default_factory=dict, max_length=LIST_MAX)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=LIST_MAX)
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)
    lora: LoRAServing = Field(default_factory=LoRAServing)
    api_key_secret_ref: ApiKeySecretRef | None = None

    @model_validator(mode="after")
    def _tensor_parallel_fits(self) -> Serving:
        if self.resources.gpus and self.vllm.tensor_parallel_size > self.resources.gpus:
            raise ValueError("vllm.tensorParallelSize must not exceed resources.gpus")
        return self

    @model_validator(mode="after")
    def _engine_supports(self) -> Serving:
        if self.engine == "transformers":
            if self.autoscaling is not None:
                raise ValueError("serving.autoscaling needs engine vllm (it scales on vLLM's waiting requests); "
                                 "remove it or set engine: vllm")
            if self.api_key_secret_ref is not None:
                raise ValueError("serving.apiKeySecretRef needs engine vllm (transformers serve checks no API key); "
                                 "remove it or set engine: vllm")
        return self

    @property
    def server_image(self) -> str:
        """The image the server runs: spec.serving.image, else the pinned vLLM image for vllm and the trainer image
        (which has `transformers serve`) for transformers."""
        if self.image:
            return self.image
        return DEFAULT_TRAINER_IMAGE if self.engine == "transformers" else DEFAULT_VLLM_IMAGE


class InputDrift(SpecModel):
    """The live prompt-length distribution against the monitoring dataset's (population stability index)."""

    psi_threshold: float = Field(default=0.2, gt=0, le=10)
    min_requests: int = Field(default=20, ge=1, le=1_000_000)


class MonitoringDataset(SpecModel):
    """Held-out data the live endpoint is evaluated on: the same sources and record formats as a FineTuneJob's."""

    source: DatasetSource
    file_format: Literal["auto", "text", "jsonl", "json", "csv", "parquet"] = "auto"
    format: Literal["text", "chat", "prompt-completion"] = "prompt-completion"
    fields: DatasetFields = Field(default_factory=DatasetFields)
    max_samples: int = Field(default=64, ge=1, le=10_000)


class Monitoring(SpecModel):
    """Live evaluation of the served revision against the numbers that promoted it, and input drift."""

    interval_seconds: int = Field(default=3600, ge=60, le=604_800)
    dataset: MonitoringDataset
    metrics: list[Literal["perplexity", "bleu"]] = Field(default_factory=lambda: ["perplexity", "bleu"],
                                                         min_length=1, max_length=2)
    tolerance: float = Field(default=0.1, ge=0, le=10)
    action: Literal["alert", "rollback"] = "alert"
    input_drift: InputDrift = Field(default_factory=InputDrift)
    max_new_tokens: int = Field(default=64, ge=1, le=4096)
    image: str = Field(default=DEFAULT_TRAINER_IMAGE, min_length=1, max_length=512)

    @model_validator(mode="after")
    def _metrics_fit_the_data(self) -> Monitoring:
        if len(set(self.metrics)) != len(self.metrics):
            raise ValueError("monitoring.metrics must not repeat a metric")
        if "bleu" in self.metrics and self.dataset.format == "text":
            raise ValueError("monitoring.metrics bleu needs prompt/reference pairs: dataset.format chat or "
                             "prompt-completion")
        return self


class GPTModelSpec(SpecModel):
    """The desired state of a GPTModel."""

    source: ModelSource
    artifacts: Artifacts = Field(default_factory=Artifacts)
    scheduling: Scheduling | None = None
    """The default Kueue LocalQueue of this model's FineTuneJobs' stage Jobs."""
    serving: Serving = Field(default_factory=Serving)
    monitoring: Monitoring | None = None


class MonitoringRun(StatusModel):
    """One run of the monitor Job."""

    job: str | None = None
    revision: str | None = None
    finished_at: str | None = None
    result: Literal["ok", "drifted", "error"] | None = None
    message: str | None = None


class MonitoringStatus(StatusModel):
    """The last live evaluation of the served revision."""

    last_run: MonitoringRun | None = None
    live: dict[str, float] = Field(default_factory=dict)
    at_promotion: dict[str, float] = Field(default_factory=dict)
    change: dict[str, float] = Field(default_factory=dict)
    input_psi: float | None = None


class ServedAdapter(StatusModel):
    """One LoRA adapter the vLLM server serves, and the model name clients ask for to get it."""

    revision: str | None = None
    model_name: str | None = None
    adapter: str | None = None


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
    adapters: list[ServedAdapter] | None = None
    endpoint: str | None = None
    serving: str | None = None
    ready: str | None = None
    ready_replicas: int | None = None
    monitoring: MonitoringStatus | None = None
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
