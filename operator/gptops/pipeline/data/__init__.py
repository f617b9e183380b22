"""The prepare stage: load raw records, clean them, dedupe, filter, split, tokenize and pack into fixed blocks.

Writes `<root>/dataset/` (a DatasetDict with train and validation, an `input_ids` column; for chat and
prompt-completion with completion-only loss a `labels` column, the ids with -100 where no loss is taken; for packed chat
and prompt-completion a `position_ids` column restarting at 0 per document, so packed documents do not attend to each
other), `eval_pairs.jsonl` (BLEU prompt/reference pairs), `manifest.json` (counts, digest), and `<root>/tokenizer/`.

Every step works on Arrow data on disk a batch at a time (`sources` loads, `cleaning` filters, `rendering` renders,
`packing` tokenizes and packs), so a dataset larger than memory prepares; the work files live under `<root>/cache/`
and are removed at the end. No torch here.
"""

from __future__ import annotations

import array
import json
import logging
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gptops.api.stageresult import StageResult
from gptops.pipeline import models
from gptops.pipeline.config import MAX_DEFAULT_BLOCK_SIZE, PrepareConfig
from gptops.pipeline.data.cleaning import Cleaner, fmt_counts, keep_rows, keys, select
from gptops.pipeline.data.mapped import ReleasedMappings
from gptops.pipeline.data.packing import Packer, SplitOutput, check_blocks, digest
from gptops.pipeline.data.rendering import Renderer, load_tokenizer, write_eval_pairs
from gptops.pipeline.data.sources import load_records
from gptops.pipeline.errors import PipelineError

__all__ = ["PrepareReport", "ProgressFn", "load_records", "run"]

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, dict[str, Any]], None]


@dataclass
class PrepareReport:
    """What prepare did: where it wrote, the counts of the manifest, and the dataset digest."""

    dataset_dir: Path
    tokenizer_dir: Path
    manifest: dict[str, Any]
    digest: str
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def result(self) -> StageResult:
        m = self.manifest
        return StageResult(
            stage="prepare",
            ok=True,
            message=(f"prepared {m['documents']['train']} train and {m['documents']['validation']} validation documents: "
                     f"{m['blocks']['train']} blocks of {m['blockSize']} tokens"),
            metrics={"documents": m["documents"]["kept"], "trainTokens": m["tokens"]["train"],
                     "validationTokens": m["tokens"]["validation"], "dropped": sum(m["dropped"].values())},
            artifacts={"dataset": str(self.dataset_dir), "tokenizer": str(self.tokenizer_dir)},
            digest=self.digest,
        )


def run(config: PrepareConfig, progress: ProgressFn | None = None) -> PrepareReport:
    """Run the prepare stage end to end; raises PipelineError on bad input."""
    started = time.monotonic()
    say = progress or (lambda event, fields: None)
    root = config.artifact_root
    root.mkdir(parents=True, exist_ok=True)
    work = root / "cache" / "prepare"
    try:
        with ReleasedMappings(root):  # memory-mapped Arrow pages read by a pass do not pile up in the stage's RSS
            return _run(config, say, work, started)
    finally:  # the loaders' Arrow copies and the unsaved blocks: nothing of them outlives the stage
        for scratch in (work, root / "cache" / "datasets"):
            shutil.rmtree(scratch, ignore_errors=True)


def _run(config: PrepareConfig, say: ProgressFn, work: Path, started: float) -> PrepareReport:
    root = config.artifact_root
    dataset_dir, tokenizer_dir = root / "dataset", root / "tokenizer"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)

    # 1. Load: every source ends as a Dataset with the normalized columns of the format.
    records, origin = load_records(config)
    n_read = len(records)
    say("loaded", {"documents": n_read, "source": origin})
    log.info("Loaded documents count=%d source=%s", n_read, origin)

    # 2. Clean (lowercase, sentences, stop words), then drop empty, too short, too long and duplicate documents.
    records, dropped = _clean(records, config)
    say("cleaned", {"kept": len(records), "dropped": dict(dropped)})
    if len(records) < 2:
        raise PipelineError(
            f"{origin}: {len(records)} usable document(s) after cleaning (dropped: {fmt_counts(dropped)}); "
            f"expected at least 2, one for training and one for validation"
        )

    # 3. Seeded document-level split: validation never shares a document with training.
    splits = _split(records, config)

    # 4. The tokenizer: the starting model's, or (scratch) a byte-level BPE trained on the training split.
    tokenizer = load_tokenizer(config, keys(splits["train"], config.format), len(splits["train"]))
    if tokenizer_dir.exists():
        shutil.rmtree(tokenizer_dir)
    tokenizer.save_pretrained(str(tokenizer_dir))
    max_length = models.context_length(config.model, root / "cache")
    if config.block_size and config.block_size > max_length:
        raise PipelineError(f"dataset.preprocessing.blockSize: {config.block_size} is longer than the model's context "
                            f"length ({max_length}); expected at most {max_length}")
    block_size = config.block_size or min(max_length, MAX_DEFAULT_BLOCK_SIZE)
    say("tokenizer", {"vocab": len(tokenizer), "blockSize": block_size})

    # 5. Render the training text of each document (plain text trains as it is), and BLEU pairs from the held-out ones.
    if config.format != "text":
        render = Renderer(config, tokenizer)
        splits = {name: ds.map(render, batched=True, num_proc=_procs(config, len(ds)), desc=f"render {name}")
                  for name, ds in splits.items()}
    n_pairs = write_eval_pairs(splits["validation"], config, work / "eval_pairs.jsonl")

    # 6. Tokenize (the Rust tokenizer, numProc calls at a time), EOS after each document, then pack. With
    # completion-only loss each token also gets a label: its id where it overlaps a completion (assistant) span of
    # the rendered text, -100 elsewhere; the labels are packed the same way, so a block carries its own mask.
    # Text pretraining packs by plain concatenation (a document may run on into the next block, as in GPT-2). Chat and
    # prompt-completion pack whole documents and record where each starts (position ids): an answer must be learned
    # from its own prompt, never from the end of another conversation.
    masked = config.completion_only_loss and config.format != "text"
    by_document = config.packing and config.format != "text"
    packer = Packer(tokenizer, block_size, config.packing, masked, by_document, config.num_proc)
    outputs = {name: packer.write(name, ds, work / f"{name}.arrow") for name, ds in splits.items()}
    check_blocks(outputs, origin, block_size, masked)

    # 7. Save: the DatasetDict, BLEU pairs, and the manifest with its digest.
    manifest = _manifest(config, origin, tokenizer, tokenizer_dir, block_size, masked, by_document, n_read,
                         len(records), splits, outputs, dropped, n_pairs, digest({n: o.path for n, o in outputs.items()}))
    _save(outputs, work, dataset_dir, manifest)
    say("saved", {"dataset": str(dataset_dir), "digest": manifest["digest"]})
    log.info("Prepared dataset dir=%s digest=%s", dataset_dir, manifest["digest"])
    return PrepareReport(dataset_dir, tokenizer_dir, manifest, manifest["digest"], time.monotonic() - started)


def _clean(records, config: PrepareConfig):
    """Cleaned records, less the dropped ones, and the drop counts by reason."""
    clean = Cleaner(config)
    if clean.changes_text:
        records = records.map(clean, batched=True, num_proc=_procs(config, len(records)), desc="clean")
    keep, dropped = select(records, config)
    return keep_rows(records, keep, "drop"), dropped


def _split(records, config: PrepareConfig) -> dict[str, Any]:
    """Train and validation by a seeded shuffle of the document order (an 8-byte array, not a list of ints: the same
    order as shuffling `list(range(n))`); validation takes the first documents of that order."""
    order = array.array("q", range(len(records)))
    random.Random(config.seed).shuffle(order)
    n_val = min(max(1, round(len(order) * config.validation_split)), len(order) - 1)
    validation = np.zeros(len(records), dtype=bool)
    validation[np.frombuffer(order, dtype=np.int64)[:n_val]] = True
    del order
    return {"train": keep_rows(records, ~validation, "split train"),
            "validation": keep_rows(records, validation, "split validation")}


def _manifest(config: PrepareConfig, origin: str, tokenizer, tokenizer_dir: Path, block_size: int, masked: bool,
              by_document: bool, n_read: int, n_kept: int, splits: dict[str, Any], outputs: dict[str, SplitOutput],
              dropped: Counter, n_pairs: int, digest_: str) -> dict[str, Any]:
    tokens = {name: o.tokens for name, o in outputs.items()}
    return {
        "source": origin,
        "format": config.format,
        "blockSize": block_size,
        "packing": config.packing,
        "documentBoundaries": by_document,
        "completionOnlyLoss": masked,
        "tokenizer": str(tokenizer_dir),
        "vocabSize": len(tokenizer),
        "documents": {"read": n_read, "kept": n_kept, "train": len(splits["train"]),
                      "validation": len(splits["validation"])},
        "tokens": tokens,
        "lossTokens": {name: o.loss_tokens for name, o in outputs.items()} if masked else tokens,
        "blocks": {name: o.blocks for name, o in outputs.items()},
        "dropped": dict(dropped),
        "evalPairs": n_pairs,
        "digest": digest_,
        "seed": config.seed,
        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _save(outputs: dict[str, SplitOutput], work: Path, dataset_dir: Path, manifest: dict[str, Any]) -> None:
    """The DatasetDict (copied in shards from the block files), BLEU pairs and manifest, renamed into place whole."""
    from datasets import Dataset, DatasetDict

    tmp = dataset_dir.with_name("dataset.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    DatasetDict({name: Dataset.from_file(str(o.path)) for name, o in outputs.items()}).save_to_disk(str(tmp))
    shutil.move(str(work / "eval_pairs.jsonl"), str(tmp / "eval_pairs.jsonl"))
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if dataset_dir.exists():
        shutil.rmtree(dataset_dir)
    tmp.rename(dataset_dir)  # the dataset appears whole or not at all


def _procs(config: PrepareConfig, n: int) -> int | None:
    """Processes for a map: several only when there is enough work to pay for them."""
    return config.num_proc if config.num_proc > 1 and n >= 1000 * config.num_proc else None
