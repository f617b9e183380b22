"""Cleaning: lowercase, sentence segmentation and stop words (a batched map), and the filters that drop empty, too
short, too long and duplicate documents, read a batch at a time. No torch here.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections import Counter
from collections.abc import Iterator

import numpy as np

from gptops.pipeline.config import PrepareConfig

BATCH = 10_000
"""Documents per batch when prepare reads a column: bounded memory whatever the dataset's size."""


class Cleaner:
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


def column_batches(ds, name: str, size: int = BATCH) -> Iterator[list]:
    """A column as Python lists of `size` rows, each in one Arrow conversion (row by row is ~30x slower)."""
    ds = ds.select_columns([name])
    for start in range(0, len(ds), size):
        yield ds[start: start + size][name]


def key_batches(records, fmt: str, size: int = BATCH) -> Iterator[list[str]]:
    """Each document's content as one string, a batch at a time: what the length filters measure, dedupe hashes and
    a scratch tokenizer learns from."""
    for batch in (records[start: start + size] for start in range(0, len(records), size)):
        if fmt == "text":
            yield batch["text"]
        elif fmt == "prompt-completion":
            yield [p + "\n" + c for p, c in zip(batch["prompt"], batch["completion"], strict=True)]
        else:
            yield ["\n".join(m["role"] + ": " + m["content"] for m in ms) for ms in batch["messages"]]


def keys(records, fmt: str) -> Iterator[str]:
    """`key_batches`, one document at a time."""
    for batch in key_batches(records, fmt):
        yield from batch


def _dedupe_form(key: str) -> str:
    """Normalized dedupe compares this: case folded, punctuation and runs of whitespace as one space."""
    return " ".join(_NON_WORD.sub(" ", key.casefold()).split())


EMPTY, TOO_SHORT, TOO_LONG = 1, 2, 3
_REASONS = {EMPTY: "empty", TOO_SHORT: "tooShort", TOO_LONG: "tooLong"}


def select(records, config: PrepareConfig) -> tuple[np.ndarray, Counter]:
    """Which documents to keep (a bool per document), and how many were dropped for which reason. Reads a batch at a time and
    holds one code and one 8-byte digest (blake2b) per document; dedupe keeps each content's first document.

    Memory is about 17 bytes per document: the codes, the digests and one sorted copy of them, which finds the digests
    that repeat; only the documents carrying one of those are ordered to find their first. (Two different documents
    share a 64-bit digest with a probability of about n^2 / 2^65: one in 200,000 for 12 million documents.)"""
    n = len(records)
    verdict = np.zeros(n, dtype=np.int8)
    dedupe = config.dedupe != "none"
    digests = np.zeros(n if dedupe else 0, dtype=np.uint64)
    at = 0
    for batch in key_batches(records, config.format):
        for i, key in enumerate(batch, at):
            content = key.strip()
            if not content:
                verdict[i] = EMPTY
            elif len(content) < config.min_chars:
                verdict[i] = TOO_SHORT
            elif config.max_chars is not None and len(content) > config.max_chars:
                verdict[i] = TOO_LONG
            elif dedupe:
                form = _dedupe_form(key) if config.dedupe == "normalized" else key
                digests[i] = int.from_bytes(hashlib.blake2b(form.encode(), digest_size=8).digest(), "little")
        at += len(batch)
    dropped: Counter = Counter({_REASONS[code]: int((verdict == code).sum()) for code in _REASONS})
    keep = verdict == 0
    del verdict
    if dedupe:
        later = _later_duplicates(digests, keep)
        keep[later] = False
        dropped["duplicate"] = int(later.size)
    return keep, +dropped  # unary plus drops the zero counts


def keep_rows(ds, keep: np.ndarray, desc: str):
    """The rows of `ds` where `keep` is True, as an indices mapping that `datasets` writes to the dataset's cache a
    batch at a time. (`Dataset.select` would turn the indices into a Python list first: ~40 bytes per row.)"""
    if keep.all():
        return ds
    return ds.filter(lambda rows: keep[np.asarray(rows)], with_indices=True, batched=True, batch_size=BATCH,
                     input_columns=[], desc=desc)


DIGEST_CHUNK = 1 << 20
"""Digests looked up at a time against the repeated ones: bounded scratch memory."""


def _later_duplicates(digests: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """The candidate documents whose digest an earlier candidate already has, in document order."""
    ordered = np.sort(digests[candidates])
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    del ordered
    if not repeated.size:
        return np.zeros(0, dtype=np.int64)
    hits = []
    for start in range(0, digests.size, DIGEST_CHUNK):
        chunk = digests[start: start + DIGEST_CHUNK]
        at = np.minimum(np.searchsorted(repeated, chunk), repeated.size - 1)
        hit = (repeated[at] == chunk) & candidates[start: start + DIGEST_CHUNK]
        hits.append(np.flatnonzero(hit) + start)
    rows = np.concatenate(hits)  # the candidates that share a digest with another, in document order
    order = np.argsort(digests[rows], kind="stable")  # stable: equal digests stay in document order
    shared = digests[rows][order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = shared[1:] != shared[:-1]
    return np.sort(rows[order[~first]])


def fmt_counts(counts: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
