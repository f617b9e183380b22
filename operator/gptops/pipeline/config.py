"""Typed configs of the three pipeline stages, built from the api/ models of the FineTuneJob and GPTModel.

The spec is parsed by the same pydantic models the operator uses (whose bounds the CRDs' schemas repeat, tested), so
whatever the cluster admits a stage accepts; these dataclasses only say what each stage needs. No torch.
Every `__post_init__` names the bad field in its ValueError.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gptops.api.constants import CONFIGMAP_MOUNT_ROOT, PVC_MOUNT_ROOT
from gptops.api.finetunejob import DatasetSource as DatasetSourceSpec
from gptops.api.finetunejob import FineTuneJobSpec
from gptops.api.gptmodel import GPTModelSpec
from gptops.api.gptmodel import ModelSource as ModelSourceSpec

# Where a stage Pod sees the volumes and ConfigMaps a spec names (the Job builder mounts them at the api/constants
# roots); the environment variables exist so that a test or an unusual cluster can move them.
PVC_MOUNT_ROOT_ENV = "GPTOPS_PVC_ROOT"
CONFIGMAP_MOUNT_ROOT_ENV = "GPTOPS_CONFIGMAP_ROOT"

FILE_FORMATS = ("auto", "text", "jsonl", "json", "csv", "parquet")
DATA_FORMATS = ("text", "chat", "prompt-completion")
DEDUPE_MODES = ("none", "exact", "normalized")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
ARCHITECTURES = ("gpt2", "llama")
METRICS = ("perplexity", "bleu")
MAX_DEFAULT_BLOCK_SIZE = 1024


def pvc_path(claim_name: str, path: str = "") -> Path:
    """The path inside a stage Pod of `path` on the volume `claim_name`."""
    root = Path(os.environ.get(PVC_MOUNT_ROOT_ENV, PVC_MOUNT_ROOT))
    return root / claim_name / path.lstrip("/")


def configmap_path(name: str, key: str) -> Path:
    """The path inside a stage Pod of the key `key` of the mounted ConfigMap `name`."""
    return Path(os.environ.get(CONFIGMAP_MOUNT_ROOT_ENV, CONFIGMAP_MOUNT_ROOT)) / name / key


@dataclass
class DataSource:
    """Where the raw dataset comes from; `kind` picks which of the other fields are used."""

    kind: str
    """One of huggingface, url, s3, path (a local file or directory: local, pvc and configMap sources)."""
    location: str
    """A hub dataset name, an http(s) URL, an s3:// URI, or a filesystem path, depending on `kind`."""
    hf_config: str | None = None
    """huggingface: the dataset configuration name."""
    hf_split: str = "train"
    """huggingface: the split to read."""
    hf_revision: str | None = None
    """huggingface: a revision (branch, tag or commit) of the dataset repository."""
    endpoint_url: str | None = None
    """s3: an S3-compatible endpoint (MinIO, moto); None means AWS. Credentials come from the usual AWS_* env."""

    def __post_init__(self) -> None:
        if self.kind not in ("huggingface", "url", "s3", "path"):
            raise ValueError(f"dataset.source: unknown source kind {self.kind!r}")
        if not self.location:
            raise ValueError(f"dataset.source.{self.kind}: the location must not be empty")
        if self.kind == "url" and not self.location.startswith(("http://", "https://")):
            raise ValueError(f"dataset.source.url.url: expected an http(s) URL, got {self.location!r}")
        if self.kind == "s3" and not self.location.startswith("s3://"):
            raise ValueError(f"dataset.source.s3.uri: expected s3://bucket/key, got {self.location!r}")

    def describe(self) -> str:
        """A one-line, secret-free description for manifests and logs."""
        return f"{self.kind}:{self.location}"


@dataclass
class ModelSource:
    """The model a stage starts from: pretrained weights somewhere, or a fresh architecture (`scratch`)."""

    kind: str
    """One of huggingface (a hub id), path (a local or mounted directory), s3 (a prefix to download), scratch."""
    location: str = ""
    """The hub id, directory or s3:// prefix; empty for scratch."""
    revision: str | None = None
    """huggingface: the revision to load."""
    endpoint_url: str | None = None
    """s3: an S3-compatible endpoint; None means AWS."""
    architecture: str = "gpt2"
    """scratch: gpt2 or llama."""
    layers: int = 4
    """scratch: transformer blocks."""
    heads: int = 4
    """scratch: attention heads per block."""
    hidden: int = 256
    """scratch: model width; divisible by heads."""
    context_length: int = 256
    """scratch: maximum sequence length (positions)."""
    vocab_size: int = 8000
    """scratch: size of the byte-level BPE vocabulary trained on the data."""

    def __post_init__(self) -> None:
        if self.kind not in ("huggingface", "path", "s3", "scratch"):
            raise ValueError(f"model.source: unknown source kind {self.kind!r}")
        if self.kind != "scratch" and not self.location:
            raise ValueError(f"model.source.{self.kind}: the location must not be empty")
        if self.kind == "scratch":
            if self.architecture not in ARCHITECTURES:
                raise ValueError(f"source.scratch.architecture: expected one of {ARCHITECTURES}, got {self.architecture!r}")
            for name in ("layers", "heads", "hidden", "context_length"):
                if getattr(self, name) < 1:
                    raise ValueError(f"source.scratch.{_camel(name)}: must be at least 1, got {getattr(self, name)}")
            if self.hidden % self.heads:
                raise ValueError(f"source.scratch.hidden: {self.hidden} is not divisible by heads ({self.heads})")
            if self.vocab_size < 300:
                raise ValueError(f"source.scratch.tokenizer.vocabSize: must be at least 300 (256 bytes + merges), got {self.vocab_size}")

    @property
    def is_scratch(self) -> bool:
        return self.kind == "scratch"

    def describe(self) -> str:
        """A one-line description: the base reference recorded with adapters and reports."""
        if self.kind == "scratch":
            return f"scratch:{self.architecture}-{self.layers}l-{self.hidden}h"
        return self.location + (f"@{self.revision}" if self.revision else "")


@dataclass
class PrepareConfig:
    """The prepare stage: load, clean, tokenize, pack and split a dataset into `<artifact_root>/dataset`."""

    source: DataSource
    """The raw data."""
    model: ModelSource
    """The starting model: its tokenizer is reused, or (scratch) a new one is trained on the data."""
    artifact_root: Path
    """The run's artifact directory; writes dataset/ and tokenizer/ under it."""
    file_format: str = "auto"
    """How to parse files: auto (by suffix), text, jsonl, json, csv or parquet."""
    format: str = "text"
    """What a record is: text, chat (a list of messages) or prompt-completion."""
    text_field: str = "text"
    """The field holding the document (format text); plain text files have it implicitly."""
    messages_field: str = "messages"
    """The field holding the list of {role, content} messages (format chat)."""
    prompt_field: str = "prompt"
    """The field holding the prompt (format prompt-completion)."""
    completion_field: str = "completion"
    """The field holding the completion (format prompt-completion)."""
    lowercase: bool = False
    """Lowercase every document."""
    remove_stop_words: bool = False
    """Drop the stop words of `stop_words_language` (the list shipped by the stop-words package)."""
    stop_words_language: str = "english"
    """Language of the stop-word list."""
    sentence_segmentation: bool = False
    """Split documents into sentences (pysbd), one sentence per line."""
    dedupe: str = "exact"
    """none, exact (identical text) or normalized (equal after case folding and collapsing whitespace/punctuation)."""
    min_chars: int = 1
    """Documents shorter than this, after preprocessing, are dropped."""
    max_chars: int | None = None
    """Documents longer than this are dropped; None keeps all."""
    packing: bool = True
    """Pack documents (EOS-separated) into blocks of `block_size`. text: plain concatenation into full blocks; chat and
    prompt-completion: whole documents per block, with position ids restarting at each one so none attends to another."""
    block_size: int | None = None
    """Tokens per block; None means the model's context length, capped at 1024."""
    completion_only_loss: bool = True
    """chat and prompt-completion: take the loss (and validation perplexity) only on completion tokens, the
    assistant turns with their end-of-turn marker, and the EOS after them; prompt and user tokens get label -100.
    Ignored for text."""
    num_proc: int = 1
    """Workers for batched preprocessing: processes for cleaning and rendering, threads for tokenization."""
    validation_split: float = 0.1
    """Fraction of documents held out for evaluation, in (0, 0.5]."""
    seed: int = 42
    """Seed of the train/validation split."""

    def __post_init__(self) -> None:
        self.artifact_root = Path(self.artifact_root)
        if self.file_format not in FILE_FORMATS:
            raise ValueError(f"dataset.fileFormat: expected one of {FILE_FORMATS}, got {self.file_format!r}")
        if self.format not in DATA_FORMATS:
            raise ValueError(f"dataset.format: expected one of {DATA_FORMATS}, got {self.format!r}")
        if self.dedupe not in DEDUPE_MODES:
            raise ValueError(f"dataset.preprocessing.dedupe: expected one of {DEDUPE_MODES}, got {self.dedupe!r}")
        if self.min_chars < 0:
            raise ValueError(f"dataset.preprocessing.minChars: must be >= 0, got {self.min_chars}")
        if self.max_chars is not None and self.max_chars < max(self.min_chars, 1):
            raise ValueError(f"dataset.preprocessing.maxChars: must be >= minChars ({self.min_chars}), got {self.max_chars}")
        if self.block_size is not None and self.block_size < 2:
            raise ValueError(f"dataset.preprocessing.blockSize: must be at least 2, got {self.block_size}")
        if self.num_proc < 1:
            raise ValueError(f"dataset.preprocessing.numProc: must be at least 1, got {self.num_proc}")
        if not 0 < self.validation_split <= 0.5:
            raise ValueError(f"dataset.validationSplit: must be in (0, 0.5], got {self.validation_split}")
        if self.remove_stop_words:
            from stop_words import AVAILABLE_LANGUAGES, LANGUAGE_MAPPING

            if self.stop_words_language not in AVAILABLE_LANGUAGES and self.stop_words_language not in LANGUAGE_MAPPING:
                raise ValueError(
                    f"dataset.preprocessing.stopWordsLanguage: no stop-word list for {self.stop_words_language!r}"
                )


@dataclass
class LoraConfig:
    """LoRA adapter settings (peft)."""

    r: int = 8
    """Rank of the update matrices."""
    alpha: int = 16
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the adapter input."""
    target_modules: list[str] = field(default_factory=list)
    """Module names to adapt; empty lets peft pick the attention projections it knows for the architecture."""

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"training.lora.r: must be at least 1, got {self.r}")
        if self.alpha < 1:
            raise ValueError(f"training.lora.alpha: must be at least 1, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"training.lora.dropout: must be in [0, 1), got {self.dropout}")


@dataclass
class TrainConfig:
    """The train stage: fine-tune (or train from scratch) on `<artifact_root>/dataset`, write model/ or adapter/."""

    model: ModelSource
    """The starting model."""
    artifact_root: Path
    """The run's artifact directory: reads dataset/ and tokenizer/, writes checkpoints/, model/ or adapter/."""
    method: str = "full"
    """full (every weight) or lora (a peft adapter; needs pretrained weights)."""
    epochs: float = 1.0
    """Passes over the training split; ignored when max_steps is set."""
    max_steps: int | None = None
    """Optimizer steps to take; wins over epochs."""
    learning_rate: float = 5e-5
    """Peak learning rate (linear decay after warmup)."""
    batch_size: int = 8
    """Sequences per device per micro-batch."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step."""
    warmup_ratio: float = 0.0
    """Fraction of the steps spent warming the learning rate up from 0."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    precision: str = "auto"
    """auto (bf16 where the GPU supports it, else fp32), bf16, fp16 or fp32."""
    compile: bool = True
    """torch.compile the model on a CUDA GPU (ignored on CPU, where compiling costs more than tiny runs gain)."""
    activation_checkpointing: bool = False
    """Recompute activations in the backward pass instead of storing them: less memory, about 1/3 more compute."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA settings, used when method is lora."""
    checkpoint_every_steps: int = 200
    """Save a resumable checkpoint every this many optimizer steps."""
    resume: str = "auto"
    """auto: continue from the newest complete checkpoint in checkpoints/; never: start over."""
    seed: int = 42
    """Seed of weight init (scratch, LoRA), data order and dropout."""
    logging_steps: int = 10
    """Log (and report progress) every this many steps."""
    keep_checkpoints: int = 2
    """How many checkpoints to keep on disk; older ones are deleted."""

    @property
    def output_dir(self) -> Path:
        """model/ (full) or adapter/ (LoRA): written once, sealed with its digest (pipeline/revisions.py)."""
        return self.artifact_root / ("model" if self.method == "full" else "adapter")

    def __post_init__(self) -> None:
        self.artifact_root = Path(self.artifact_root)
        if self.method not in ("full", "lora"):
            raise ValueError(f"training.method: expected full or lora, got {self.method!r}")
        if self.method == "lora" and self.model.is_scratch:
            raise ValueError("training.method: lora needs pretrained weights, but the GPTModel's source is scratch; use full")
        if self.epochs <= 0:
            raise ValueError(f"training.epochs: must be > 0, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"training.maxSteps: must be at least 1, got {self.max_steps}")
        if self.learning_rate <= 0:
            raise ValueError(f"training.learningRate: must be > 0, got {self.learning_rate}")
        if self.batch_size < 1:
            raise ValueError(f"training.batchSize: must be at least 1, got {self.batch_size}")
        if self.gradient_accumulation_steps < 1:
            raise ValueError(f"training.gradientAccumulationSteps: must be at least 1, got {self.gradient_accumulation_steps}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"training.warmupRatio: must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0:
            raise ValueError(f"training.weightDecay: must be >= 0, got {self.weight_decay}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"training.precision: expected one of {PRECISIONS}, got {self.precision!r}")
        if self.checkpoint_every_steps < 1:
            raise ValueError(f"training.checkpointEverySteps: must be at least 1, got {self.checkpoint_every_steps}")
        if self.resume not in ("auto", "never"):
            raise ValueError(f"training.resume: expected auto or never, got {self.resume!r}")
        if self.logging_steps < 1:
            raise ValueError(f"logging_steps: must be at least 1, got {self.logging_steps}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints: must be at least 1, got {self.keep_checkpoints}")


@dataclass
class EvalConfig:
    """The evaluate stage: perplexity and BLEU of the trained model (and of the starting model) on held-out data."""

    model: ModelSource
    """The starting model: the baseline, and for LoRA the base the adapter applies to."""
    artifact_root: Path
    """The run's artifact directory: reads dataset/, tokenizer/, model/ or adapter/; writes eval/report.json."""
    method: str = "full"
    """How the model was trained (full: load model/; lora: base + adapter/)."""
    metrics: list[str] = field(default_factory=lambda: ["perplexity"])
    """Which metrics to compute: perplexity, bleu."""
    compare_with_base: bool = True
    """Also evaluate the starting model (for scratch: its seeded random init) for relative gates."""
    max_new_tokens: int = 64
    """BLEU: tokens generated (greedily) per prompt."""
    max_samples: int = 100
    """BLEU: at most this many prompt/reference pairs."""
    batch_size: int = 8
    """Sequences per forward pass."""
    precision: str = "auto"
    """Like training.precision: the dtype the models run in."""
    seed: int = 42
    """Seed of the scratch baseline's init (the same as training's, so it is the true starting point)."""
    evaluation_dir: Path | None = None
    """Where report.json goes; None means `<artifact_root>/eval`. Beside the weights, never over them."""

    @property
    def output_dir(self) -> Path:
        """The weights under evaluation: model/ (full) or adapter/ (LoRA)."""
        return self.artifact_root / ("model" if self.method == "full" else "adapter")

    def __post_init__(self) -> None:
        self.artifact_root = Path(self.artifact_root)
        self.evaluation_dir = Path(self.evaluation_dir) if self.evaluation_dir else self.artifact_root / "eval"
        if self.method not in ("full", "lora"):
            raise ValueError(f"training.method: expected full or lora, got {self.method!r}")
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise ValueError(f"evaluation.metrics: expected a non-empty subset of {METRICS}, got {self.metrics!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"evaluation.bleu.maxNewTokens: must be at least 1, got {self.max_new_tokens}")
        if self.max_samples < 1:
            raise ValueError(f"evaluation.bleu.maxSamples: must be at least 1, got {self.max_samples}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be at least 1, got {self.batch_size}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"training.precision: expected one of {PRECISIONS}, got {self.precision!r}")


@dataclass
class StageConfigs:
    """The three stage configs of one FineTuneJob run."""

    prepare: PrepareConfig
    train: TrainConfig
    evaluate: EvalConfig


def configs_from_spec(
    ftj_spec: dict[str, Any],
    model_spec: dict[str, Any],
    artifact_root: Path | str,
    base_dir: Path | None = None,
    start_model: str | None = None,
    evaluation_dir: Path | str | None = None,
) -> StageConfigs:
    """Map the FineTuneJob and GPTModel specs (camelCase, docs/api.md) to the three stage configs.

    Either argument may also be the whole object (with `spec`). Both are parsed by the api/ models, so defaults and
    bounds are the cluster's. `base_dir` resolves relative `local.path`s; `start_model` (a directory, e.g. the served
    revision's model/ or LoRA adapter/) overrides the GPTModel's source (startFrom: serving). Raises ValueError
    naming the bad field.
    """
    ftj_doc = _unwrap(ftj_spec)
    model_obj = model_spec if isinstance(model_spec, dict) else {}
    spec = _parse(FineTuneJobSpec, {"model": {"name": "pipeline"}, **ftj_doc})
    mspec = _parse(GPTModelSpec, _unwrap(model_obj))
    artifact_root = Path(artifact_root).absolute()
    base_dir = Path(base_dir) if base_dir is not None else Path.cwd()

    model = _model_source(mspec.source, base_dir)
    if start_model is None and spec.start_from in ("auto", "serving"):
        # A LoRA revision serves its base plus an adapter: start from the adapter (merged into its base).
        status = (model_obj.get("status") or {}) if "spec" in model_obj else {}
        served = status.get("servingAdapter") or status.get("servingArtifact")
        if served:
            start_model = served
        elif spec.start_from == "serving":
            raise ValueError("startFrom: serving, but the GPTModel has no status.servingArtifact yet")
    if start_model:
        model = ModelSource(kind="s3" if str(start_model).startswith("s3://") else "path", location=str(start_model))

    dataset = spec.dataset
    fields, pre = dataset.fields, dataset.preprocessing
    block_size = pre.block_size
    if block_size is None and model.is_scratch:
        block_size = min(model.context_length, MAX_DEFAULT_BLOCK_SIZE)
    prepare = PrepareConfig(
        source=_data_source(dataset.source, base_dir),
        model=model,
        artifact_root=artifact_root,
        file_format=dataset.file_format,
        format=dataset.format,
        text_field=fields.text,
        messages_field=fields.messages,
        prompt_field=fields.prompt,
        completion_field=fields.completion,
        lowercase=pre.lowercase,
        remove_stop_words=pre.remove_stop_words,
        stop_words_language=pre.stop_words_language,
        sentence_segmentation=pre.sentence_segmentation,
        dedupe=pre.dedupe,
        min_chars=pre.min_chars,
        max_chars=pre.max_chars,
        packing=pre.packing,
        block_size=block_size,
        completion_only_loss=pre.completion_only_loss,
        num_proc=pre.num_proc,
        validation_split=dataset.validation_split,
        seed=dataset.seed,
    )

    training = spec.training
    lora = training.lora_settings
    train = TrainConfig(
        model=model,
        artifact_root=artifact_root,
        method=training.method,
        epochs=training.epochs,
        max_steps=training.max_steps,
        learning_rate=training.learning_rate,
        batch_size=training.batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        warmup_ratio=training.warmup_ratio,
        weight_decay=training.weight_decay,
        precision=training.precision,
        compile=training.compile,
        activation_checkpointing=training.activation_checkpointing,
        lora=LoraConfig(r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=list(lora.target_modules)),
        checkpoint_every_steps=training.checkpoint_every_steps,
        resume=training.resume,
        seed=training.seed,
    )

    evaluation = spec.evaluation
    evaluate = EvalConfig(
        model=model,
        artifact_root=artifact_root,
        method=train.method,
        metrics=list(evaluation.metrics),
        compare_with_base=evaluation.compare_with_base,
        max_new_tokens=evaluation.bleu.max_new_tokens,
        max_samples=evaluation.bleu.max_samples,
        batch_size=train.batch_size,
        precision=train.precision,
        seed=train.seed,
        evaluation_dir=Path(evaluation_dir) if evaluation_dir else None,
    )
    return StageConfigs(prepare=prepare, train=train, evaluate=evaluate)


def _parse(cls: type[FineTuneJobSpec] | type[GPTModelSpec], doc: dict[str, Any]) -> Any:
    """The spec as the api/ model parses it; a ValueError that names the first bad field (camelCase) otherwise."""
    try:
        return cls.model_validate(doc)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        raise ValueError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None


def _unwrap(obj: dict[str, Any] | None) -> dict[str, Any]:
    """Accept a whole object ({apiVersion, kind, spec, ...}) or a bare spec."""
    obj = obj or {}
    return obj["spec"] if isinstance(obj.get("spec"), dict) else obj


def _local(path: str, base_dir: Path, field_name: str) -> str:
    try:
        p = Path(path).expanduser()
        return str(p if p.is_absolute() else (base_dir / p).resolve())
    except (RuntimeError, OSError) as e:  # ~user that does not exist, a path the OS refuses
        raise ValueError(f"{field_name}: {path!r} is not a usable path on this machine ({e})") from None


def _data_source(source: DatasetSourceSpec, base_dir: Path) -> DataSource:
    if source.huggingface is not None:
        hf = source.huggingface
        return DataSource(kind="huggingface", location=hf.name, hf_config=hf.config, hf_split=hf.split,
                          hf_revision=hf.revision)
    if source.url is not None:
        return DataSource(kind="url", location=source.url.url)
    if source.s3 is not None:
        return DataSource(kind="s3", location=source.s3.uri, endpoint_url=source.s3.endpoint_url)
    if source.pvc is not None:
        return DataSource(kind="path", location=str(pvc_path(source.pvc.claim_name, source.pvc.path)))
    if source.config_map is not None:
        return DataSource(kind="path", location=str(configmap_path(source.config_map.name, source.config_map.key)))
    assert source.local is not None  # the model validated exactly one source
    return DataSource(kind="path", location=_local(source.local.path, base_dir, "dataset.source.local.path"))


def _model_source(source: ModelSourceSpec, base_dir: Path) -> ModelSource:
    if source.huggingface is not None:
        return ModelSource(kind="huggingface", location=source.huggingface.repo, revision=source.huggingface.revision)
    if source.pvc is not None:
        return ModelSource(kind="path", location=str(pvc_path(source.pvc.claim_name, source.pvc.path)))
    if source.s3 is not None:
        return ModelSource(kind="s3", location=source.s3.uri, endpoint_url=source.s3.endpoint_url)
    if source.local is not None:
        return ModelSource(kind="path", location=_local(source.local.path, base_dir, "source.local.path"))
    scratch = source.scratch
    assert scratch is not None  # the model validated exactly one source
    return ModelSource(kind="scratch", architecture=scratch.architecture, layers=scratch.layers, heads=scratch.heads,
                       hidden=scratch.hidden, context_length=scratch.context_length,
                       vocab_size=scratch.tokenizer.vocab_size)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
