"""The prepare stage: load raw records, clean them, dedupe, filter, split, tokenize and pack into fixed blocks.

Writes `<root>/dataset/` (a DatasetDict with train and validation, an `input_ids` column; for chat and
prompt-completion with completion-only loss a `labels` column, the ids with -100 where no loss is taken; for packed chat
and prompt-completion a `position_ids` column restarting at 0 per document, so packed documents do not attend to each
other), `eval_pairs.jsonl` (BLEU prompt/reference pairs), `manifest.json` (counts, digest), and `<root>/tokenizer/`.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import io
import itertools
import json
import logging
import os
import random
import re
import shutil
import string
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from gptops.pipeline import models
from gptops.pipeline.config import MAX_DEFAULT_BLOCK_SIZE, PrepareConfig
from gptops.pipeline.errors import PipelineError
from gptops.api.stageresult import StageResult

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, dict[str, Any]], None]
SUFFIX_FORMATS = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "jsonl", ".ndjson": "jsonl",
                  ".json": "json", ".csv": "csv", ".parquet": "parquet"}


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
    dataset_dir, tokenizer_dir = root / "dataset", root / "tokenizer"
    root.mkdir(parents=True, exist_ok=True)

    # 1. Load: every source ends as a Dataset with the normalized columns of the format.
    records, origin = load_records(config)
    n_read = len(records)
    say("loaded", {"documents": n_read, "source": origin})
    log.info("Loaded documents count=%d source=%s", n_read, origin)

    # 2. Clean (lowercase, sentences, stop words), then drop empty, too short, too long and duplicate documents.
    clean = _Cleaner(config)
    if clean.changes_text:
        records = records.map(clean, batched=True, num_proc=_procs(config, len(records)), desc="clean")
    keys = _keys(records, config.format)
    keep, dropped = _select(keys, config)
    records = records.select(keep).flatten_indices()
    keys = [keys[i] for i in keep]
    say("cleaned", {"kept": len(records), "dropped": dict(dropped)})
    if len(records) < 2:
        raise PipelineError(
            f"{origin}: {len(records)} usable document(s) after cleaning (dropped: {_fmt_counts(dropped)}); "
            f"expected at least 2, one for training and one for validation"
        )

    # 3. Seeded document-level split: validation never shares a document with training.
    order = list(range(len(records)))
    random.Random(config.seed).shuffle(order)
    n_val = min(max(1, round(len(order) * config.validation_split)), len(order) - 1)
    rows = {"train": sorted(order[n_val:]), "validation": sorted(order[:n_val])}
    splits = {name: records.select(indices) for name, indices in rows.items()}

    # 4. The tokenizer: the starting model's, or (scratch) a byte-level BPE trained on the training split.
    tokenizer = _tokenizer(config, [keys[i] for i in rows["train"]])
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
        render = _Renderer(config, tokenizer)
        splits = {name: ds.map(render, batched=True, num_proc=_procs(config, len(ds)), desc=f"render {name}")
                  for name, ds in splits.items()}
    pairs = _eval_pairs(splits["validation"], config)

    # 6. Tokenize (the Rust tokenizer, numProc calls at a time), EOS after each document, then pack. With
    # completion-only loss each token also gets a label: its id where it overlaps a completion (assistant) span of
    # the rendered text, -100 elsewhere; the labels are packed the same way, so a block carries its own mask.
    # Text pretraining packs by plain concatenation (a document may run on into the next block, as in GPT-2). Chat and
    # prompt-completion pack whole documents and record where each starts (position ids): an answer must be learned
    # from its own prompt, never from the end of another conversation.
    masked = config.completion_only_loss and config.format != "text"
    by_document = config.packing and config.format != "text"
    token_counts, label_counts, packed, labels, positions = {}, {}, {}, {}, {}
    for name, ds in splits.items():
        if masked:
            flat, mask, lengths = _token_ids_and_mask(_offsets_encoder(tokenizer), _column(ds, "text"),
                                                      _column(ds, "_spans"), tokenizer.eos_token_id, config.num_proc)
            flat_labels = np.where(mask, flat, np.int32(IGNORE_INDEX)).astype(np.int32)
            label_counts[name] = int(mask.sum())
        else:
            flat, lengths = _token_ids(_ids_encoder(tokenizer), _column(ds, "text"), tokenizer.eos_token_id,
                                       config.num_proc)
        token_counts[name] = int(flat.size)
        if by_document:
            if (longer := int((lengths > block_size).sum())):
                log.warning("Truncating documents longer than a block split=%s count=%d blockSize=%d",
                            name, longer, block_size)
            layout = _pack_documents(lengths, block_size)
            packed[name] = _gather(flat, layout)
            positions[name] = [np.concatenate([np.arange(n, dtype=np.int32) for _, n in block]) for block in layout]
            if masked:
                labels[name] = _gather(flat_labels, layout)
        else:
            packed[name] = _pack(flat, lengths, block_size, config.packing, keep_remainder=(name == "validation"))
            if masked:
                labels[name] = _pack(flat_labels, lengths, block_size, config.packing,
                                     keep_remainder=(name == "validation"))
        if masked and name == "train":  # a block without one completion token adds nothing to the loss: leave it out
            keep = [i for i, block in enumerate(labels[name]) if (block[1:] != IGNORE_INDEX).any()]
            for columns in (packed, labels, positions):
                if name in columns:
                    columns[name] = [columns[name][i] for i in keep]
    if len(packed["train"]) == 0:
        what = " with a completion token" if masked else ""
        raise PipelineError(
            f"{origin}: the training split has {token_counts['train']} tokens, fewer than one block{what} of "
            f"{block_size} (dataset.preprocessing.blockSize); expected more data or a smaller blockSize"
        )
    if len(packed["validation"]) == 0:
        raise PipelineError(f"{origin}: the validation split has no tokens; expected a larger dataset.validationSplit")

    # 7. Save: the DatasetDict, BLEU pairs, and the manifest with its digest.
    from datasets import Dataset, DatasetDict

    digest = _digest(packed, labels, positions)
    out = DatasetDict({name: Dataset(_table(blocks, labels.get(name), positions.get(name)))
                       for name, blocks in packed.items()})
    tmp = dataset_dir.with_name("dataset.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    out.save_to_disk(str(tmp))
    with open(tmp / "eval_pairs.jsonl", "w", encoding="utf-8") as f:
        for prompt, reference in pairs:
            f.write(json.dumps({"prompt": prompt, "reference": reference}, ensure_ascii=False) + "\n")
    manifest = {
        "source": origin,
        "format": config.format,
        "blockSize": block_size,
        "packing": config.packing,
        "documentBoundaries": by_document,
        "completionOnlyLoss": masked,
        "tokenizer": str(tokenizer_dir),
        "vocabSize": len(tokenizer),
        "documents": {"read": n_read, "kept": len(records), "train": len(splits["train"]),
                      "validation": len(splits["validation"])},
        "tokens": token_counts,
        "lossTokens": label_counts if masked else token_counts,
        "blocks": {name: len(blocks) for name, blocks in packed.items()},
        "dropped": dict(dropped),
        "evalPairs": len(pairs),
        "digest": digest,
        "seed": config.seed,
        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if dataset_dir.exists():
        shutil.rmtree(dataset_dir)
    tmp.rename(dataset_dir)  # the dataset appears whole or not at all
    say("saved", {"dataset": str(dataset_dir), "digest": digest})
    log.info("Prepared dataset dir=%s digest=%s", dataset_dir, digest)
    return PrepareReport(dataset_dir, tokenizer_dir, manifest, digest, time.monotonic() - started)


# ---------------------------------------------------------------------------------------------------------------
# Loading


def load_records(config: PrepareConfig):
    """The raw documents as a Dataset with the format's normalized columns, and a description of where they came from."""
    from datasets import Dataset

    source = config.source
    if source.kind == "huggingface":
        return _load_hub(config), source.describe()
    if source.kind == "path":
        files = _list_files(Path(source.location), config)
        origin = source.location
    else:
        download_dir = config.artifact_root / "cache" / "raw"
        if download_dir.exists():
            shutil.rmtree(download_dir)
        download_dir.mkdir(parents=True)
        files = _download_url(source.location, download_dir) if source.kind == "url" else \
            _download_s3(source.location, source.endpoint_url, download_dir, config)
        origin = source.location
    columns: dict[str, list] = {name: [] for name in _columns(config.format)}
    for path, shown in files:
        for record in _parse_file(path, shown, config):
            for name, value in record.items():
                columns[name].append(value)
    if not columns[_columns(config.format)[0]]:
        raise PipelineError(f"{origin}: no records found; expected {config.format} data")
    return Dataset.from_dict(columns), origin


def _columns(fmt: str) -> tuple[str, ...]:
    return {"text": ("text",), "chat": ("messages",), "prompt-completion": ("prompt", "completion")}[fmt]


def _list_files(path: Path, config: PrepareConfig) -> list[tuple[Path, str]]:
    if path.is_file():
        return [(path, str(path))]
    if not path.exists():
        raise PipelineError(f"{path}: no such file or directory; expected the dataset file or a directory of them")
    files = sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if config.file_format == "auto":
        files = [p for p in files if p.suffix.lower() in SUFFIX_FORMATS]
    if not files:
        raise PipelineError(f"{path}: an empty directory; expected files ending in {', '.join(sorted(SUFFIX_FORMATS))}")
    return [(p, str(p)) for p in files]


def _download_url(url: str, target: Path) -> list[tuple[Path, str]]:
    name = Path(urllib.parse.urlparse(url).path).name or "data"
    path = target / name
    log.info("Downloading dataset url=%s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as f:
            shutil.copyfileobj(response, f)
    except OSError as e:
        raise PipelineError(f"{url}: cannot download ({e}); expected a reachable http(s) URL") from e
    return [(path, url)]


def _download_s3(uri: str, endpoint_url: str | None, target: Path, config: PrepareConfig) -> list[tuple[Path, str]]:
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint_url} if endpoint_url else {})
    key = uri.removeprefix("s3://").rstrip("/")
    try:
        if fs.isdir(key):
            keys = sorted(k for k in fs.find(key) if config.file_format != "auto" or Path(k).suffix.lower() in SUFFIX_FORMATS)
        else:
            keys = [key]
        if not keys:
            raise PipelineError(f"{uri}: no data files under this prefix; expected files ending in {', '.join(sorted(SUFFIX_FORMATS))}")
        files = []
        for i, k in enumerate(keys):
            local = target / f"{i:05d}-{Path(k).name}"
            fs.get(k, str(local))
            files.append((local, "s3://" + k))
        return files
    except FileNotFoundError as e:
        raise PipelineError(f"{uri}: no such object or prefix; expected an existing s3://bucket/key") from e
    except PipelineError:
        raise
    except Exception as e:  # botocore and aiohttp errors vary; the message is what a person needs
        raise PipelineError(f"{uri}: cannot read from S3 ({type(e).__name__}: {e})") from e


def _load_hub(config: PrepareConfig):
    from datasets import load_dataset

    s = config.source
    try:
        ds = load_dataset(s.location, s.hf_config, split=s.hf_split, revision=s.hf_revision,
                          token=os.environ.get("HF_TOKEN") or None)
    except Exception as e:
        raise PipelineError(f"{s.location}: cannot load the Hugging Face dataset ({type(e).__name__}: {e})") from e
    wanted = _wanted_fields(config)
    missing = [f for f in wanted.values() if f not in ds.column_names]
    if missing:
        raise PipelineError(f"{s.location}: no column {missing[0]!r} (dataset.fields); found columns: {', '.join(ds.column_names)}")
    ds = ds.select_columns(list(wanted.values()))
    ds = ds.rename_columns({v: k for k, v in wanted.items() if k != v})
    return ds.map(_HubRowCheck(s.location, wanted), batched=True, with_indices=True, desc="check")


class _HubRowCheck:
    """Batched: the same field checks as for files (strings; chat messages as role/content lists), in hub rows."""

    def __init__(self, name: str, wanted: dict[str, str]):
        self.name, self.wanted = name, wanted

    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        out: dict[str, list] = {column: [] for column in batch}
        for column, values in batch.items():
            for i, value in zip(indices, values, strict=True):
                row = {self.wanted[column]: value}
                out[column].append(_normalize(row, {column: self.wanted[column]}, self.name, f"row {i}")[column])
        return out


def _wanted_fields(config: PrepareConfig) -> dict[str, str]:
    """normalized column -> the field name in the user's data."""
    if config.format == "text":
        return {"text": config.text_field}
    if config.format == "chat":
        return {"messages": config.messages_field}
    return {"prompt": config.prompt_field, "completion": config.completion_field}


def _parse_file(path: Path, shown: str, config: PrepareConfig):
    """Yield normalized records of one file, validating fields as they come."""
    fmt = config.file_format if config.file_format != "auto" else SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise PipelineError(f"{shown}: cannot tell the file format from the suffix {path.suffix!r}; "
                            f"expected one of {', '.join(sorted(SUFFIX_FORMATS))} or dataset.fileFormat")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PipelineError(f"{shown}: cannot read the file ({e.strerror}); expected a readable {fmt} file") from e
    if not raw.strip():
        raise PipelineError(f"{shown}: the file is empty; expected {fmt} data")
    wanted = _wanted_fields(config)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(io.BytesIO(raw)).to_pylist()
        except Exception as e:
            raise PipelineError(f"{shown}: not a readable Parquet file ({e}); expected Parquet") from e
        for i, row in enumerate(rows, 1):
            yield _normalize(row, wanted, shown, f"row {i}")
        return
    text = _decode(raw, shown)
    if fmt == "text":
        if config.format != "text":
            raise PipelineError(f"{shown}: a plain text file has no fields; dataset.format {config.format} expects "
                                f"jsonl, json, csv or parquet records")
        for line in text.splitlines():
            if line.strip():
                yield {"text": line}
    elif fmt == "jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PipelineError(f"{shown}: line {n}: not valid JSON ({e.msg}); expected one JSON object per line") from e
            yield _normalize(row, wanted, shown, f"line {n}")
    elif fmt == "json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise PipelineError(f"{shown}: line {e.lineno}: not valid JSON ({e.msg}); expected a JSON array of objects") from e
        if isinstance(doc, dict) and isinstance(doc.get("data"), list):
            doc = doc["data"]
        if not isinstance(doc, list):
            raise PipelineError(f"{shown}: the top level is a {type(doc).__name__}; expected a JSON array of objects "
                                f"(or an object with a 'data' array)")
        for i, row in enumerate(doc, 1):
            yield _normalize(row, wanted, shown, f"item {i}")
    elif fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        for n, row in enumerate(reader, 2):  # line 1 is the header
            yield _normalize(row, wanted, shown, f"line {n}")
    else:
        raise PipelineError(f"{shown}: unknown file format {fmt!r} (dataset.fileFormat)")


def _decode(raw: bytes, shown: str) -> str:
    try:
        return raw.decode("utf-8-sig")  # strict; a leading byte-order mark (Excel CSVs) is dropped
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise PipelineError(f"{shown}: line {line}, byte {e.start}: invalid UTF-8 ({raw[e.start:e.start + 1]!r}); "
                            f"expected UTF-8 text") from e


def _normalize(row: Any, wanted: dict[str, str], shown: str, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise PipelineError(f"{shown}: {where}: a {type(row).__name__}, expected an object with the field "
                            f"{next(iter(wanted.values()))!r}")
    out = {}
    for column, name in wanted.items():
        if name not in row or row[name] is None:
            found = ", ".join(map(str, row)) or "none"
            raise PipelineError(f"{shown}: {where}: no field {name!r} (dataset.fields.{column}); found fields: {found}")
        value = row[name]
        if column == "messages":
            value = _messages(value, shown, where, name)
        elif not isinstance(value, str):
            raise PipelineError(f"{shown}: {where}: field {name!r} is a {type(value).__name__}; expected a string")
        out[column] = value
    return out


def _messages(value: Any, shown: str, where: str, name: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise PipelineError(f"{shown}: {where}: field {name!r} is not a non-empty list; expected "
                            f"[{{\"role\": ..., \"content\": ...}}, ...]")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise PipelineError(f"{shown}: {where}: {name}[{i}] is not an object with string 'role' and 'content'")
        out.append({"role": m["role"], "content": m["content"]})
    return out


# ---------------------------------------------------------------------------------------------------------------
# Cleaning, keys, filters


class _Cleaner:
    """Batched cleaning of every text field: lowercase, sentence segmentation, stop-word removal (in that order)."""

    def __init__(self, config: PrepareConfig):
        self.lowercase = config.lowercase
        self.stop_words: frozenset[str] = frozenset()
        if config.remove_stop_words:
            from stop_words import get_stop_words

            self.stop_words = frozenset(w.lower() for w in get_stop_words(config.stop_words_language))
        self.segment = config.sentence_segmentation
        self.language = _pysbd_language(config.stop_words_language)
        self._segmenter = None

    @property
    def changes_text(self) -> bool:
        """False when every switch is off: then there is nothing to map over."""
        return self.lowercase or self.segment or bool(self.stop_words)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out = {}
        for column, values in batch.items():
            if column == "messages":
                out[column] = [[{"role": m["role"], "content": self.clean(m["content"])} for m in ms] for ms in values]
            else:
                out[column] = [self.clean(v) for v in values]
        return out

    def clean(self, text: str) -> str:
        if self.lowercase:
            text = text.lower()
        if self.segment:
            if self._segmenter is None:  # built lazily: one per worker process
                import pysbd

                self._segmenter = pysbd.Segmenter(language=self.language, clean=False)
            text = "\n".join(s.strip() for s in self._segmenter.segment(text) if s.strip())
        if self.stop_words:
            lines = (" ".join(w for w in line.split() if w.lower().strip(string.punctuation) not in self.stop_words)
                     for line in text.split("\n"))
            text = "\n".join(line for line in lines if line)
        return text


def _pysbd_language(stop_words_language: str) -> str:
    from stop_words import LANGUAGE_MAPPING

    codes = {name: code for code, name in LANGUAGE_MAPPING.items()}
    code = codes.get(stop_words_language, stop_words_language)
    return code if len(code) == 2 else "en"


_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def _column(ds, name: str) -> list:
    """A column as a Python list in one Arrow conversion (iterating `ds[name]` decodes row by row, ~30x slower)."""
    return ds[name][:]


def _keys(records, fmt: str) -> list[str]:
    """Each document's content as one string: what the length filters measure, dedupe hashes and a scratch
    tokenizer learns from."""
    if fmt == "text":
        return _column(records, "text")
    if fmt == "prompt-completion":
        return [p + "\n" + c for p, c in zip(_column(records, "prompt"), _column(records, "completion"), strict=True)]
    return ["\n".join(m["role"] + ": " + m["content"] for m in ms) for ms in _column(records, "messages")]


def _dedupe_form(key: str) -> str:
    """Normalized dedupe compares this: case folded, punctuation and runs of whitespace as one space."""
    return " ".join(_NON_WORD.sub(" ", key.casefold()).split())


def _select(keys: list[str], config: PrepareConfig) -> tuple[list[int], Counter]:
    """Indices of the documents to keep, and how many were dropped for which reason."""
    dropped: Counter = Counter()
    seen: set[bytes] = set()
    keep = []
    for i, key in enumerate(keys):
        content = key.strip()
        if not content:
            dropped["empty"] += 1
        elif len(content) < config.min_chars:
            dropped["tooShort"] += 1
        elif config.max_chars is not None and len(content) > config.max_chars:
            dropped["tooLong"] += 1
        elif config.dedupe == "none":
            keep.append(i)
        else:
            digest = hashlib.sha1((_dedupe_form(key) if config.dedupe == "normalized" else key).encode()).digest()
            if digest in seen:
                dropped["duplicate"] += 1
            else:
                seen.add(digest)
                keep.append(i)
    return keep, dropped


def _fmt_counts(counts: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer, rendering, tokenization, packing


def _tokenizer(config: PrepareConfig, train_keys: list[str]):
    source = config.model
    if source.is_scratch:
        log.info("Training tokenizer vocabSize=%d documents=%d", source.vocab_size, len(train_keys))
        return models.train_tokenizer(train_keys, source.vocab_size, source.context_length)
    path = models.resolve_model_dir(source, config.artifact_root / "cache")
    try:
        return models.load_tokenizer(path, **models.hub_kwargs(source))
    except (OSError, ValueError) as e:
        raise PipelineError(f"{source.describe()}: cannot load the model's tokenizer ({e})") from e


class _Renderer:
    """Batched: the `text` a document trains on (format-specific), what BLEU prompts with and expects, and `_spans`:
    the [start, end) character ranges of `text` that completion-only loss learns (all after the prompt; each assistant
    turn with the template's end-of-turn marker)."""

    def __init__(self, config: PrepareConfig, tokenizer):
        self.format = config.format
        self.tokenizer = tokenizer

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if self.format == "text":
            texts = batch["text"]
            return {"text": texts, "_prompt": [None] * len(texts), "_reference": [None] * len(texts),
                    "_spans": [[] for _ in texts]}
        if self.format == "prompt-completion":
            texts = [_join(p, c) for p, c in zip(batch["prompt"], batch["completion"], strict=True)]
            # The completion with the space _join put before it: generation from the bare prompt must write it too.
            spans = [[[len(p), len(t)]] for t, p in zip(texts, batch["prompt"], strict=True)]
            return {"text": texts, "_prompt": batch["prompt"], "_reference": batch["completion"], "_spans": spans}
        texts, prompts, refs, spans = [], [], [], []
        for messages in batch["messages"]:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False)
            texts.append(text)
            spans.append(self._assistant_spans(messages, text))
            if messages[-1]["role"] == "assistant" and len(messages) > 1:
                prompts.append(self.tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True))
                refs.append(messages[-1]["content"])
            else:
                prompts.append(None)
                refs.append(None)
        return {"text": texts, "_prompt": prompts, "_reference": refs, "_spans": spans}

    def _assistant_spans(self, messages: list[dict[str, str]], text: str) -> list[list[int]]:
        """Each assistant turn as what the template adds after the generation prompt: the content and its end-of-turn
        marker (so the model learns to stop). A template whose renderings are not prefixes of each other (one that
        rewrites earlier turns) falls back to the content alone, found in order."""
        render = self.tokenizer.apply_chat_template
        spans: list[list[int]] = []
        search_from = 0
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            try:
                before = render(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
                through = render(messages[: i + 1], tokenize=False)
            except Exception:  # a template that refuses a partial conversation (e.g. one that must end with a user)
                before, through = "", None
            # Whitespace the template puts after the end-of-turn marker is not learned: it is also what precedes the
            # next turn, and learning "newline -> end of document" teaches the model to answer with nothing.
            end = len(through.rstrip()) if through is not None else 0
            if through is not None and text.startswith(through) and through.startswith(before) \
                    and end > len(before) and len(before) >= search_from:
                spans.append([len(before), end])
                search_from = len(through)
                continue
            start = text.find(message["content"], search_from)
            if start >= 0 and message["content"]:
                spans.append([start, start + len(message["content"])])
                search_from = start + len(message["content"])
        return spans


def _join(prompt: str, completion: str) -> str:
    if not prompt or not completion or prompt[-1].isspace() or completion[0].isspace():
        return prompt + completion
    return prompt + " " + completion


def _eval_pairs(validation, config: PrepareConfig) -> list[tuple[str, str]]:
    """BLEU pairs from held-out documents: the format's prompt/reference, or a text document's two halves."""
    pairs = []
    if config.format == "text":
        for text in _column(validation, "text"):
            words = text.split()
            if len(words) >= 2:
                half = len(words) // 2
                pairs.append((" ".join(words[:half]), " ".join(words[half:])))
        return pairs
    for prompt, reference in zip(_column(validation, "_prompt"), _column(validation, "_reference"), strict=True):
        if prompt is not None and reference and reference.strip():
            pairs.append((prompt, reference.strip()))
    return pairs


TOKENIZE_BATCH = 4096
"""Documents per call into the tokenizer: enough to keep its threads busy, few enough to share out among workers."""


def _ids_encoder(tokenizer) -> Callable[[list[str]], list[list[int]]]:
    """texts -> token ids, exactly as `tokenizer(texts, add_special_tokens=False)["input_ids"]` gives them, faster.

    A fast tokenizer's Rust backend is called directly with `encode_batch_fast`: it skips the character offsets, and
    the transformers wrapper's attention masks and per-encoding conversions, which prepare throws away. The backend
    spreads a batch over all cores unless TOKENIZERS_PARALLELISM=false, and releases the GIL, so calls from several
    threads also run at once. It is a copy, set up the way the wrapper sets it for this call (no truncation, no
    padding, special tokens in the text recognized unless the tokenizer splits them): the saved tokenizer is untouched.
    """
    if getattr(tokenizer, "backend_tokenizer", None) is None:  # a tokenizer without a Rust backend
        return lambda texts: tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                                       verbose=False)["input_ids"]
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    backend.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
    return lambda texts: [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]


def _token_ids(encode: Callable[[list[str]], list[list[int]]], texts: list[str], eos: int,
               workers: int) -> tuple[np.ndarray, np.ndarray]:
    """All documents' ids, flat, each followed by EOS (so packed blocks keep document boundaries visible), and each
    document's length with its EOS. `workers` batches are tokenized at a time (threads: the tokenizer releases the
    GIL); the per-document work is the tokenizer's, the rest is numpy."""
    batches = [texts[start: start + TOKENIZE_BATCH] for start in range(0, len(texts), TOKENIZE_BATCH)]
    flats, lengths = [np.zeros(0, dtype=np.int32)], [np.zeros(0, dtype=np.int64)]
    with ThreadPoolExecutor(workers) as pool:
        for ids in pool.map(encode, batches):  # in order
            n = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
            flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(n.sum()))
            flats.append(np.insert(flat, np.cumsum(n), eos))  # EOS at each document's end
            lengths.append(n + 1)
    return np.concatenate(flats), np.concatenate(lengths)


IGNORE_INDEX = -100
"""The label of a token the loss skips (what Hugging Face models and torch's cross_entropy ignore)."""


def _offsets_encoder(tokenizer) -> Callable[[list[str]], list[tuple[list[int], list[tuple[int, int]]]]]:
    """texts -> (ids, character offsets) per text; the same ids as `_ids_encoder`. Offsets need a fast tokenizer."""
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise PipelineError("dataset.preprocessing.completionOnlyLoss: the model's tokenizer has no fast (Rust) "
                            "version, which the completion mask needs for token offsets; set completionOnlyLoss: false")
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    backend.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
    return lambda texts: [(e.ids, e.offsets) for e in backend.encode_batch(texts, add_special_tokens=False)]


def _token_ids_and_mask(encode, texts: list[str], spans: list[list[list[int]]], eos: int,
                        workers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like `_token_ids`, plus a flat bool mask: a token is learned when its characters overlap one of its document's
    spans (a token straddling the prompt/completion boundary belongs to the completion); the EOS after a document is
    learned when a span reaches the document's end."""
    batches = [range(start, min(start + TOKENIZE_BATCH, len(texts))) for start in range(0, len(texts), TOKENIZE_BATCH)]
    flats, masks, lengths = [np.zeros(0, dtype=np.int32)], [np.zeros(0, dtype=bool)], [np.zeros(0, dtype=np.int64)]
    with ThreadPoolExecutor(workers) as pool:
        for rows, encoded in zip(batches, pool.map(lambda r: encode([texts[i] for i in r]), batches), strict=True):
            for i, (ids, offsets) in zip(rows, encoded, strict=True):
                offs = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
                starts, ends = offs[:, 0], np.maximum(offs[:, 1], offs[:, 0] + 1)  # an empty offset covers its char
                mask = np.zeros(len(ids) + 1, dtype=bool)
                for a, b in spans[i]:
                    mask[:-1] |= (starts < b) & (ends > a)
                mask[-1] = any(b >= len(texts[i]) for _, b in spans[i])
                flats.append(np.append(np.asarray(ids, dtype=np.int32), np.int32(eos)))
                masks.append(mask)
                lengths.append(np.array([len(ids) + 1], dtype=np.int64))
    return np.concatenate(flats), np.concatenate(masks), np.concatenate(lengths)


def _pack(flat: np.ndarray, lengths: np.ndarray, block_size: int, packing: bool, keep_remainder: bool) -> list[np.ndarray]:
    """Packing: concatenated ids cut into full blocks [n, block] (validation keeps the short tail so no token is lost).
    Without packing: one row per document, truncated to the block size (the trainer pads per batch)."""
    if packing:
        n = flat.size // block_size
        blocks = list(flat[: n * block_size].reshape(n, block_size))
        if keep_remainder and flat.size - n * block_size >= 2:
            blocks.append(flat[n * block_size:])
        return blocks
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return [flat[s: s + min(n, block_size)] for s, n in zip(starts, lengths, strict=True) if n >= 2]


def _pack_documents(lengths: np.ndarray, block_size: int) -> list[list[tuple[int, int]]]:
    """Best-fit decreasing: each document, truncated to a block, goes whole into the fullest block it still fits.
    Returns each block as its documents' (start in the flat ids, length), in document order. Blocks come out at most
    `block_size` long (the collator pads a batch to its longest); documents of one token are left out, as unpacked."""
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    sizes = np.minimum(lengths, block_size)
    blocks: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free positions, block index), sorted: bisect finds the best fit
    for i in np.argsort(-sizes, kind="stable"):
        n = int(sizes[i])
        if n < 2:
            continue
        at = bisect.bisect_left(room, (n, -1))
        if at == len(room):
            blocks.append([int(i)])
            free, b = block_size - n, len(blocks) - 1
        else:
            free, b = room.pop(at)
            blocks[b].append(int(i))
            free -= n
        if free >= 2:
            bisect.insort(room, (free, b))
    return [[(int(starts[i]), int(sizes[i])) for i in sorted(block)] for block in blocks]


def _gather(flat: np.ndarray, layout: list[list[tuple[int, int]]]) -> list[np.ndarray]:
    """The blocks of a `_pack_documents` layout, cut from `flat` (ids or labels)."""
    return [np.concatenate([flat[s: s + n] for s, n in block]) for block in layout]


def _table(blocks: list[np.ndarray], labels: list[np.ndarray] | None = None,
           positions: list[np.ndarray] | None = None) -> pa.Table:
    """input_ids (and labels and position_ids, cut the same way) as Arrow list<int32> columns."""
    lengths = np.array([len(b) for b in blocks], dtype=np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))

    def column(rows: list[np.ndarray]) -> pa.ListArray:
        values = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int32)
        return pa.ListArray.from_arrays(offsets, pa.array(values, type=pa.int32()))

    columns = {"input_ids": column(blocks)}
    if labels is not None:
        columns["labels"] = column(labels)
    if positions is not None:
        columns["position_ids"] = column(positions)
    return pa.table(columns)


def _digest(packed: dict[str, list[np.ndarray]], labels: dict[str, list[np.ndarray]] | None = None,
            positions: dict[str, list[np.ndarray]] | None = None) -> str:
    """sha256 over the tokenized blocks of each split (names, lengths, ids, and the labels and position ids when there
    are any): equal digests mean equal training data, loss mask and document boundaries included."""
    h = hashlib.sha256()
    for name in sorted(packed):
        h.update(name.encode() + b"\0")
        for block in packed[name]:
            h.update(np.int64(len(block)).tobytes())
            h.update(np.ascontiguousarray(block, dtype="<i4").tobytes())
        if labels and name in labels:
            h.update(b"labels\0")
            for block in labels[name]:
                h.update(np.ascontiguousarray(block, dtype="<i4").tobytes())
        if positions and name in positions:
            h.update(b"positions\0")
            for block in positions[name]:
                h.update(np.ascontiguousarray(block, dtype="<i4").tobytes())
    return "sha256:" + h.hexdigest()


def _procs(config: PrepareConfig, n: int) -> int | None:
    """Processes for a map: several only when there is enough work to pay for them."""
    return config.num_proc if config.num_proc > 1 and n >= 1000 * config.num_proc else None
