"""The train stage: Hugging Face Trainer on the packed dataset, full or LoRA, resumable from checkpoints.

Reads `<root>/dataset` and `<root>/tokenizer`; writes `<root>/checkpoints/checkpoint-<step>/`, then `<root>/model/`
(full: safetensors + config + tokenizer, the layout vLLM loads) or `<root>/adapter/` (LoRA adapter + its config).
Works the same under torchrun: the Trainer reads WORLD_SIZE/RANK/LOCAL_RANK; only rank 0 writes the final model.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import load_from_disk
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from gptops.pipeline import models
from gptops.pipeline.config import TrainConfig
from gptops.pipeline.errors import PipelineError
from gptops.api.stageresult import StageResult

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, dict[str, Any]], None]
STATE_FILE = "trainer_state.json"  # the Trainer writes it last: a checkpoint without it is incomplete
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainReport:
    """What training did: steps, losses, throughput, and where the result is."""

    steps: int
    """The global step reached (the planned total when training completed)."""
    first_loss: float | None
    """The first logged training loss of this run."""
    final_loss: float | None
    """The last logged training loss."""
    losses: list[tuple[int, float]]
    """(step, loss) of every log line of this run."""
    tokens: int
    """Non-padding tokens trained on by this process in this run."""
    tokens_per_second: float
    """`tokens` over the wall time of trainer.train(), times the world size."""
    seconds: float
    """Wall time of the stage."""
    resumed_from: str | None
    """The checkpoint this run continued from, if any."""
    output_dir: Path
    """model/ (full) or adapter/ (LoRA)."""
    method: str
    base_model: str
    """The starting model, loadable: a hub id (revision in base_revision) or a directory; scratch: a description."""
    base_revision: str | None = None
    """The hub revision of base_model, when it is a hub id."""
    checkpoint: str | None = None
    """The newest complete checkpoint after training."""
    digest: str | None = None
    """sha256 of the saved weights (pipeline/revisions.py), once sealed."""
    extra: dict[str, Any] = field(default_factory=dict)

    def result(self) -> StageResult:
        metrics: dict[str, Any] = {"steps": self.steps, "trainLoss": _round(self.final_loss),
                                   "firstTrainLoss": _round(self.first_loss),
                                   "tokensPerSecond": round(self.tokens_per_second, 1)}
        artifacts = {"model" if self.method == "full" else "adapter": str(self.output_dir), "baseModel": self.base_model}
        if self.base_revision:
            artifacts["baseRevision"] = self.base_revision
        if self.checkpoint:
            artifacts["checkpoint"] = self.checkpoint
        resumed = f", resumed from {Path(self.resumed_from).name}" if self.resumed_from else ""
        return StageResult(stage="train", ok=True,
                           message=f"trained {self.method} to step {self.steps}, loss {_round(self.final_loss)}{resumed}",
                           metrics=metrics, artifacts=artifacts, digest=self.digest)


def run(config: TrainConfig, progress: ProgressFn | None = None, callbacks: list | None = None) -> TrainReport:
    """Train (resuming when a complete checkpoint exists and resume is auto) and save the result."""
    started = time.monotonic()
    say = progress or (lambda event, fields: None)
    train_data, tokenizer = _load_data(config)
    set_seed(config.seed)

    # Precision: bf16 autocast where the GPU has it. Full training keeps fp32 master weights; a LoRA base is
    # frozen, so it is loaded straight in the compute dtype (half the memory).
    dtype = models.pick_dtype(config.precision)
    model, base_ref = _build_model(config, tokenizer, dtype)
    base_revision = config.model.revision if config.model.kind == "huggingface" else None
    say("model", {"parameters": sum(p.numel() for p in model.parameters()),
                  "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad), "dtype": str(dtype)})

    resume_from = _resume_point(config, say)
    collator = PackedCollator(pad_token_id=tokenizer.pad_token_id)
    logger = _ProgressCallback(say)
    trainer = Trainer(model=model, args=_training_arguments(config, dtype), train_dataset=train_data,
                      data_collator=collator, processing_class=tokenizer, callbacks=[logger, *(callbacks or [])])
    output, train_seconds = _train(trainer, resume_from)
    output_dir = _save(config, trainer, tokenizer, base_ref, base_revision)

    checkpoints = config.artifact_root / "checkpoints"
    report = TrainReport(
        steps=output.global_step,
        first_loss=logger.losses[0][1] if logger.losses else None,
        final_loss=logger.losses[-1][1] if logger.losses else None,
        losses=logger.losses,
        tokens=collator.tokens,
        tokens_per_second=collator.tokens * int(os.environ.get("WORLD_SIZE", 1)) / max(train_seconds, 1e-9),
        seconds=time.monotonic() - started,
        resumed_from=str(resume_from) if resume_from else None,
        output_dir=output_dir,
        method=config.method,
        base_model=base_ref,
        base_revision=base_revision,
        checkpoint=str(c) if (c := _newest_complete_checkpoint(checkpoints)) else None,
    )
    say("saved", {"output": str(output_dir), "steps": report.steps})
    log.info("Trained steps=%d loss=%s output=%s", report.steps, report.final_loss, output_dir)
    return report


def _load_data(config: TrainConfig):
    """The packed training split and the tokenizer prepare wrote."""
    dataset_dir = config.artifact_root / "dataset"
    if not (dataset_dir / "dataset_dict.json").exists():
        raise PipelineError(f"{dataset_dir}: no prepared dataset; expected the output of the prepare stage")
    return load_from_disk(str(dataset_dir))["train"], models.load_tokenizer(config.artifact_root / "tokenizer")


def _resume_point(config: TrainConfig, say: ProgressFn) -> Path | None:
    """The newest complete checkpoint to resume from (resume: auto); resume: never removes the old ones instead.
    A torn checkpoint (the Pod died mid-save) is removed."""
    checkpoints = config.artifact_root / "checkpoints"
    resume_from = _newest_complete_checkpoint(checkpoints) if config.resume == "auto" else None
    if config.resume == "never" and checkpoints.exists() and is_main():
        shutil.rmtree(checkpoints)
    if resume_from:
        log.info("Resuming checkpoint=%s", resume_from)
        say("resume", {"checkpoint": str(resume_from)})
    return resume_from


def _training_arguments(config: TrainConfig, dtype: torch.dtype) -> TrainingArguments:
    """The Trainer's settings. The speed options act only on CUDA (fused AdamW, torch.compile, Liger kernels where
    installed), so CPU runs, and the tests on them, train exactly as before."""
    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(config.artifact_root / "checkpoints"),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,  # transformers 5: a float below 1 is a ratio of the total steps
        lr_scheduler_type="linear",
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        optim="adamw_torch_fused" if cuda else "adamw_torch",
        # Compiling costs tens of seconds once and pays back within a few hundred steps on a GPU; on CPU it would
        # mostly cost the compile time.
        torch_compile=cuda and config.compile,
        # Liger's Triton kernels (fused linear cross-entropy: no [tokens, vocab] logits in memory, RMSNorm, RoPE, SwiGLU)
        # need CUDA; they are an optional install, patched in only for the architectures Liger knows.
        use_liger_kernel=cuda and importlib.util.find_spec("liger_kernel") is not None,
        activation_checkpointing=config.activation_checkpointing,  # non-reentrant by default: fine with a frozen base
        save_strategy="steps",
        save_steps=config.checkpoint_every_steps,
        save_total_limit=config.keep_checkpoints,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        report_to="none",
        disable_tqdm=True,
        seed=config.seed,
        data_seed=config.seed,
        remove_unused_columns=False,
        dataloader_pin_memory=cuda,
        ddp_find_unused_parameters=False,
        # Without CUDA, say so: under torchrun Accelerate then trains data-parallel over gloo (several CPU nodes);
        # otherwise every process would train alone on the whole dataset.
        use_cpu=not cuda,
    )


def _train(trainer: Trainer, resume_from: Path | None):
    """trainer.train(), and its wall time in seconds."""
    train_started = time.monotonic()
    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    return output, time.monotonic() - train_started


def _save(config: TrainConfig, trainer: Trainer, tokenizer, base_ref: str, base_revision: str | None) -> Path:
    """Save where vLLM (and evaluate) look: model/ with safetensors, config and tokenizer; or adapter/. Rank 0 writes,
    through a .tmp directory renamed at the end, so the result appears whole or not at all."""
    output_dir = config.artifact_root / ("model" if config.method == "full" else "adapter")
    if is_main():
        tmp = output_dir.with_name(output_dir.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        unwrapped.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        if config.method == "lora":
            (tmp / "gptops-base.json").write_text(json.dumps({"baseModel": base_ref, "baseRevision": base_revision}) + "\n")
        if output_dir.exists():
            shutil.rmtree(output_dir)
        tmp.rename(output_dir)
    trainer.accelerator.wait_for_everyone()
    return output_dir


def _build_model(config: TrainConfig, tokenizer, dtype: torch.dtype):
    """The model to train and the reference of its starting point."""
    source = config.model
    if source.is_scratch:
        return models.build_scratch_model(source, tokenizer, config.seed), source.describe()
    path = models.resolve_model_dir(source, config.artifact_root / "cache")
    load_dtype = dtype if config.method == "lora" else torch.float32
    try:
        model = models.load_pretrained_model(path, load_dtype, **models.hub_kwargs(source))
    except OSError as e:
        raise PipelineError(f"{source.describe()}: cannot load the model ({e})") from e
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    # The reference vLLM (and peft) load the base from: the hub id, or the local directory.
    ref = source.location if source.kind == "huggingface" else path
    if config.method == "full":
        return model, ref

    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules or None,  # None: peft's known defaults for the architecture
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as e:
        raise PipelineError(f"training.lora.targetModules: {e}; name the modules to adapt") from e
    model.peft_config["default"].base_model_name_or_path = ref
    if source.kind == "huggingface":
        model.peft_config["default"].revision = source.revision
    return model, ref


class PackedCollator:
    """Stacks packed blocks into [batch, block] without padding or attention mask (full blocks, causal SDPA fast path).
    Rows of unequal length (packing off, or a short tail) are right-padded, masked, and their padding ignored by the loss.
    Labels are the rows' own `labels` column when prepare wrote one (completion-only loss: -100 on prompt tokens),
    else the ids. Counts the non-padding tokens it hands out, for throughput figures.

    Rows with `position_ids` (packed chat and prompt-completion: positions restart at 0 for each document) pass them on,
    as transformers' DataCollatorWithFlattening does: the models turn a restart into a document boundary (SDPA and eager:
    a block-diagonal causal mask; flash attention: varlen sequences), and a document's first token gets label -100, so
    neither attention nor the loss crosses from one document to the next. Such rows are right-padded without an
    attention mask: under causal attention no real token sees the padding after it, and the padding is a segment of
    its own (positions from 0 again) with label -100. transformers (5.24) reads the boundaries in create_causal_mask,
    which GPT-2 and Llama use, only when the model runs without a KV cache, as the Trainer runs it
    (TrainingArguments.use_cache=False); callers outside it pass use_cache=False. tests/pipeline/test_pipeline_packing.py
    checks both families on CPU, so a 4D block-diagonal mask of our own is not needed for them."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id
        self.tokens = 0

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [torch.as_tensor(r["input_ids"], dtype=torch.long) for r in rows]
        targets = [torch.as_tensor(r["labels"], dtype=torch.long) if "labels" in r else s
                   for r, s in zip(rows, seqs, strict=True)]
        lengths = [len(s) for s in seqs]
        self.tokens += sum(lengths)
        documents = "position_ids" in rows[0]
        if len(set(lengths)) == 1 and not documents:
            input_ids = torch.stack(seqs)  # [batch, block]
            return {"input_ids": input_ids, "labels": torch.stack(targets).clone()}
        longest = max(lengths)
        input_ids = torch.full((len(seqs), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(seqs), longest), -100, dtype=torch.long)
        for i, (s, t) in enumerate(zip(seqs, targets, strict=True)):
            input_ids[i, : len(s)] = s
            labels[i, : len(t)] = t
        if documents:
            positions = torch.zeros((len(seqs), longest), dtype=torch.long)
            for i, (row, n) in enumerate(zip(rows, lengths, strict=True)):
                positions[i, :n] = torch.as_tensor(row["position_ids"], dtype=torch.long)
                positions[i, n:] = torch.arange(longest - n)
            labels[positions == 0] = -100  # else a document's first token is learned from the one before
            return {"input_ids": input_ids, "labels": labels, "position_ids": positions}
        mask = torch.zeros((len(seqs), longest), dtype=torch.long)
        for i, n in enumerate(lengths):
            mask[i, :n] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


class _ProgressCallback(TrainerCallback):
    """Forwards the Trainer's log lines to the progress function and keeps the losses."""

    def __init__(self, say: ProgressFn):
        self.say = say
        self.losses: list[tuple[int, float]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self.losses.append((state.global_step, float(logs["loss"])))
        self.say("step", {"step": state.global_step, "maxSteps": state.max_steps,
                          **{k: v for k, v in logs.items() if isinstance(v, int | float)}})

    def on_save(self, args, state, control, **kwargs):
        self.say("checkpoint", {"step": state.global_step})


def _newest_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The highest-step checkpoint-N directory that has its trainer state, whole; incomplete newer ones are removed."""
    if not checkpoints.is_dir():
        return None
    found = sorted(((int(m.group(1)), p) for p in checkpoints.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()),
                   reverse=True)
    for _, path in found:
        if _readable_state(path / STATE_FILE):
            return path
        if is_main():
            log.warning("Removing incomplete checkpoint path=%s", path)
            shutil.rmtree(path, ignore_errors=True)
    return None


def _readable_state(path: Path) -> bool:
    """The trainer state is there and parses: a Pod killed while writing it leaves an empty or cut-off file."""
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def is_main() -> bool:
    return int(os.environ.get("RANK", 0)) == 0


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)
