"""The FineTuneJob kind: one run of prepare -> train -> evaluate against a GPTModel.
Mirrors crds/gptops.io_finetunejobs.yaml (tested against it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gptops.api.common import (
    LIST_MAX,
    Name,
    ObjectModel,
    Quantity,
    Scheduling,
    ShortString,
    SpecModel,
    StatusModel,
    Toleration,
)
from gptops.api.conditions import Condition
from gptops.api.constants import DEFAULT_TRAINER_IMAGE, KIND_FINETUNEJOB, LORA_RANK_MAX
from gptops.api.sources import (  # noqa: F401  (re-exported: the dataset source types)
    ConfigMapDatasetSource,
    DatasetFields,
    DatasetSource,
    HuggingFaceDatasetSource,
    LocalSource,
    PVCDatasetSource,
    S3Source,
    URLDatasetSource,
)
from gptops.api.stageresult import Sample, StageResult


class ModelRef(SpecModel):
    """A GPTModel in the same namespace."""

    name: Name


# --- dataset -------------------------------------------------------------------------------------------------


#: The stop-word lists the stop-words package ships: a language name or its two-letter code (the prepare stage
#: refuses any other, so the CRD does too).
StopWordsLanguage = Literal[
    "arabic", "bulgarian", "catalan", "czech", "danish", "dutch", "english", "finnish", "french", "german",
    "gujarati", "hebrew", "hindi", "hungarian", "indonesian", "malaysian", "italian", "norwegian", "polish",
    "portuguese", "romanian", "russian", "slovak", "spanish", "swedish", "turkish", "ukrainian", "vietnamese",
    "persian", "greek", "chinese", "japanese", "korean", "ar", "bg", "ca", "cs", "da", "nl", "en", "fi", "fr", "de",
    "gu", "he", "hi", "hu", "id", "ms", "it", "nb", "pl", "pt", "ro", "ru", "sk", "es", "sv", "tr", "uk", "vi", "fa",
    "el", "zh", "ja", "ko",
]


class Preprocessing(SpecModel):
    """Cleaning and tokenization applied by the prepare stage."""

    lowercase: bool = False
    remove_stop_words: bool = False
    stop_words_language: StopWordsLanguage = "english"
    sentence_segmentation: bool = False
    dedupe: Literal["none", "exact", "normalized"] = "exact"
    min_chars: int = Field(default=1, ge=0, le=100_000_000)
    max_chars: int | None = Field(default=None, ge=1, le=100_000_000)
    packing: bool = True
    block_size: int | None = Field(default=None, ge=8, le=1_048_576)
    completion_only_loss: bool = True
    num_proc: int = Field(default=1, ge=1, le=256)

    @model_validator(mode="after")
    def _min_le_max(self) -> Preprocessing:
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError(f"maxChars ({self.max_chars}) must be at least minChars ({self.min_chars})")
        return self


class Dataset(SpecModel):
    """The training data and how it is prepared."""

    source: DatasetSource
    file_format: Literal["auto", "text", "jsonl", "json", "csv", "parquet"] = "auto"
    format: Literal["text", "chat", "prompt-completion"] = "text"
    fields: DatasetFields = Field(default_factory=DatasetFields)
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    validation_split: float = Field(default=0.1, gt=0, le=0.5)
    seed: int = Field(default=42, ge=0, le=2**32 - 1)


# --- training ------------------------------------------------------------------------------------------------


class LoraSettings(SpecModel):
    """LoRA adapter settings (method: lora)."""

    r: int = Field(default=8, ge=1, le=LORA_RANK_MAX)  # vLLM serves adapters up to this rank
    alpha: int = Field(default=16, ge=1, le=4096)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[Name] = Field(default_factory=list, max_length=LIST_MAX)


class TrainingResources(SpecModel):
    """Resources of each training Pod; nodes > 1 runs an Indexed Job with torchrun."""

    gpus: int = Field(default=1, ge=0, le=16)
    nodes: int = Field(default=1, ge=1, le=64)
    cpu: Quantity | None = None
    memory: Quantity | None = None

    @model_validator(mode="after")
    def _multinode_needs_gpus(self) -> TrainingResources:
        if self.nodes > 1 and self.gpus < 1:
            raise ValueError("training on more than one node needs gpus >= 1")
        return self


class Training(SpecModel):
    """How the model is trained."""

    method: Literal["full", "lora"] = "full"
    epochs: float = Field(default=1.0, gt=0, le=10000)
    max_steps: int | None = Field(default=None, ge=1, le=100_000_000)
    learning_rate: float = Field(default=5e-5, gt=0, le=1)
    batch_size: int = Field(default=8, ge=1, le=65536)
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=65536)
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    compile: bool = True  # torch.compile on a CUDA GPU; ignored on CPU
    activation_checkpointing: bool = False
    lora: LoraSettings | None = None
    checkpoint_every_steps: int = Field(default=200, ge=1, le=100_000_000)
    resume: Literal["auto", "never"] = "auto"
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    resources: TrainingResources = Field(default_factory=TrainingResources)
    node_selector: dict[str, ShortString] = Field(default_factory=dict, max_length=LIST_MAX)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=LIST_MAX)
    image: str = Field(default=DEFAULT_TRAINER_IMAGE, min_length=1, max_length=512)
    backoff_limit: int = Field(default=2, ge=0, le=100)

    @model_validator(mode="after")
    def _lora_only_with_lora(self) -> Training:
        if self.lora is not None and self.method != "lora":
            raise ValueError("training.lora may only be set when training.method is lora")
        return self

    @property
    def lora_settings(self) -> LoraSettings:
        """The LoRA settings in effect (defaults when unset)."""
        return self.lora or LoraSettings()


# --- evaluation ----------------------------------------------------------------------------------------------


class Thresholds(SpecModel):
    """The gate: every threshold set must hold for the run to pass."""

    max_perplexity: float | None = Field(default=None, gt=1)
    min_bleu: float | None = Field(default=None, ge=0, le=100)
    min_perplexity_improvement: float | None = Field(default=None, ge=0, le=1)
    min_bleu_improvement: float | None = Field(default=None, ge=-100, le=100)


class BleuSettings(SpecModel):
    """How BLEU is measured: greedy continuations of held-out prompts."""

    max_new_tokens: int = Field(default=64, ge=1, le=4096)
    max_samples: int = Field(default=100, ge=1, le=100_000)


class Evaluation(SpecModel):
    """What is measured and what must hold before promotion."""

    metrics: list[Literal["perplexity", "bleu"]] = Field(default_factory=lambda: ["perplexity"], min_length=1,
                                                         max_length=2)
    compare_with_base: bool = True
    thresholds: Thresholds = Field(default_factory=Thresholds)
    bleu: BleuSettings = Field(default_factory=BleuSettings)
    promote: bool = False
    approval: Literal["auto", "manual"] = "auto"
    """manual: a passed revision is served only after a person approves it (annotation gptops.io/approved)."""

    @model_validator(mode="after")
    def _thresholds_need_metrics(self) -> Evaluation:
        if len(set(self.metrics)) != len(self.metrics):
            raise ValueError("evaluation.metrics must not repeat a metric")
        t = self.thresholds
        if (t.min_bleu is not None or t.min_bleu_improvement is not None) and "bleu" not in self.metrics:
            raise ValueError("BLEU thresholds need bleu in evaluation.metrics")
        if (t.max_perplexity is not None or t.min_perplexity_improvement is not None) and \
                "perplexity" not in self.metrics:
            raise ValueError("perplexity thresholds need perplexity in evaluation.metrics")
        if (t.min_bleu_improvement is not None or t.min_perplexity_improvement is not None) and \
                not self.compare_with_base:
            raise ValueError("improvement thresholds need compareWithBase: true")
        return self


class FineTuneJobSpec(SpecModel):
    """The desired state of a FineTuneJob."""

    model: ModelRef
    start_from: Literal["auto", "source", "serving"] = "auto"
    dataset: Dataset
    training: Training = Field(default_factory=Training)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    scheduling: Scheduling | None = None
    """The Kueue LocalQueue of the stage Jobs; unset: the GPTModel's spec.scheduling."""


# --- status --------------------------------------------------------------------------------------------------


class StageStatus(StatusModel):
    """One stage's Job and its reported result."""

    job_name: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    result: StageResult | None = None


class Stages(StatusModel):
    prepare: StageStatus | None = None
    train: StageStatus | None = None
    evaluate: StageStatus | None = None


class RunArtifacts(StatusModel):
    """Where this run's current revision and its outputs are (paths as the stage Pods see them)."""

    revision: str | None = None
    """The revision key (api/revisions.py): a hash of what the weights depend on."""
    directory: str | None = None
    """The revision's own directory; nothing else writes there, and it is never rewritten once written."""
    digest: str | None = None
    """sha256 of the trained weights (the adapter for LoRA), as the train stage recorded it."""
    dataset: str | None = None
    checkpoint: str | None = None
    model: str | None = None
    adapter: str | None = None
    base_model: str | None = None


class Lineage(StatusModel):
    """dataset digest -> checkpoint -> evaluation -> served revision."""

    dataset_digest: str | None = None
    checkpoint: str | None = None
    directory: str | None = None
    weights_digest: str | None = None
    evaluation: str | None = None
    served_by: str | None = None


Phase = Literal["Pending", "Queued", "Preparing", "Training", "Evaluating", "AwaitingApproval", "Passed", "Rejected",
                "Promoted", "Failed"]

ApprovalDecision = Literal["Pending", "Approved", "Rejected"]


class Approval(StatusModel):
    """A person's decision on a revision (evaluation.approval: manual), recorded with the revision it is about."""

    revision: str | None = None
    """The revision key the decision is about; a decision never carries over to another revision."""
    decision: ApprovalDecision = "Pending"
    unbound: str | None = None
    """The gptops.io/approved value once it decided (or was named for) a revision: while it stays unchanged and
    gptops.io/approved-revision does not name a later revision, it is not taken as a decision about that one."""


class FineTuneJobStatus(StatusModel):
    """What the operator observed for a FineTuneJob. `phase` is derived from conditions, for display only."""

    observed_generation: int | None = None
    phase: Phase | None = None
    stages: Stages = Field(default_factory=Stages)
    metrics: dict[str, float] = Field(default_factory=dict)
    artifacts: RunArtifacts = Field(default_factory=RunArtifacts)
    lineage: Lineage = Field(default_factory=Lineage)
    samples: list[Sample] = Field(default_factory=list)
    """A few of the evaluate stage's sample generations, for a person reviewing the run."""
    approval: Approval | None = None
    conditions: list[Condition] = Field(default_factory=list)


class FineTuneJob(ObjectModel):
    """A whole FineTuneJob object as read from the API or a file."""

    kind: Literal["FineTuneJob"] = KIND_FINETUNEJOB  # type: ignore[assignment]
    spec: FineTuneJobSpec
    status: FineTuneJobStatus = Field(default_factory=FineTuneJobStatus)
