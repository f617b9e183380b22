"""Tokenizing and packing, a batch of documents at a time: ids from the Rust tokenizer (with a completion-only loss
mask when asked), EOS after each document, cut into blocks by plain concatenation (text) or by best-fit packing of
whole documents with position ids (chat, prompt-completion), written as Arrow record batches to a file on disk; and the
digest of the blocks, read back from those files. Memory holds one batch of documents, and for document packing one
length per document. No torch here.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from gptops.pipeline.data.cleaning import column_batches
from gptops.pipeline.errors import PipelineError

log = logging.getLogger(__name__)

TOKENIZE_BATCH = 4096
"""Documents per call into the tokenizer: enough to keep its threads busy, few enough to share out among workers."""


def ids_encoder(tokenizer) -> Callable[[list[str]], list[list[int]]]:
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


def token_ids(encode: Callable[[list[str]], list[list[int]]], texts: list[str], eos: int,
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


def offsets_encoder(tokenizer) -> Callable[[list[str]], list[tuple[list[int], list[tuple[int, int]]]]]:
    """texts -> (ids, character offsets) per text; the same ids as `ids_encoder`. Offsets need a fast tokenizer."""
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise PipelineError("dataset.preprocessing.completionOnlyLoss: the model's tokenizer has no fast (Rust) "
                            "version, which the completion mask needs for token offsets; set completionOnlyLoss: false")
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    backend.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
    return lambda texts: [(e.ids, e.offsets) for e in backend.encode_batch(texts, add_special_tokens=False)]


def token_ids_and_mask(encode, texts: list[str], spans: list[list[list[int]]], eos: int,
                        workers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like `token_ids`, plus a flat bool mask: a token is learned when its characters overlap one of its document's
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


def pack(flat: np.ndarray, lengths: np.ndarray, block_size: int, packing: bool, keep_remainder: bool) -> list[np.ndarray]:
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


def document_blocks(lengths: np.ndarray, block_size: int) -> list[list[int]]:
    """Best-fit decreasing: each document, truncated to a block, goes whole into the fullest block it still fits.
    Returns each block as its documents' indices, in document order. Blocks come out at most `block_size` long (the
    collator pads a batch to its longest); documents of one token are left out, as unpacked."""
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
    return [sorted(block) for block in blocks]


def pack_documents(lengths: np.ndarray, block_size: int) -> list[list[tuple[int, int]]]:
    """`document_blocks` as each block's documents' (start in the flat ids, length truncated to the block)."""
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    sizes = np.minimum(lengths, block_size)
    return [[(int(starts[i]), int(sizes[i])) for i in block] for block in document_blocks(lengths, block_size)]


def gather(flat: np.ndarray, layout: list[list[tuple[int, int]]]) -> list[np.ndarray]:
    """The blocks of a `pack_documents` layout, cut from `flat` (ids or labels)."""
    return [np.concatenate([flat[s: s + n] for s, n in block]) for block in layout]


# ---------------------------------------------------------------------------------------------------------------
# A split, streamed: tokenize a batch, pack, write record batches


@dataclass
class SplitOutput:
    """One split as written: its Arrow stream file, its token counts and its number of blocks."""

    path: Path
    tokens: int
    loss_tokens: int
    blocks: int
    truncated: int


@dataclass
class Packer:
    """How prepare turns a split's rendered `text` (and `_spans`) into blocks."""

    tokenizer: object
    block_size: int
    packing: bool
    masked: bool
    by_document: bool
    workers: int

    def write(self, name: str, ds, path: Path) -> SplitOutput:
        """Tokenize and pack the split `ds`, appending its blocks to the Arrow stream file at `path`."""
        keep_remainder = name == "validation"
        drop_unlearned = self.masked and name == "train"  # a block without a completion token adds no loss
        out = _BlockWriter(path, self.masked, self.by_document)
        counts = {"tokens": 0, "loss": 0, "truncated": 0}
        try:
            if self.by_document:
                self._by_document(name, ds, path.with_suffix(".documents"), out, counts, drop_unlearned)
            else:
                carry_ids, carry_labels = np.zeros(0, np.int32), np.zeros(0, np.int32)
                for flat, labels, lengths in self._tokenized(ds, counts):
                    if self.packing:  # concatenation: a document may run on into the next block, as in GPT-2
                        carry_ids, carry_labels = np.concatenate([carry_ids, flat]), np.concatenate([carry_labels, labels])
                        n = carry_ids.size // self.block_size
                        ids_blocks = list(carry_ids[: n * self.block_size].reshape(n, self.block_size))
                        label_blocks = list(carry_labels[: n * self.block_size].reshape(n, self.block_size))
                        carry_ids, carry_labels = carry_ids[n * self.block_size:], carry_labels[n * self.block_size:]
                    else:
                        ids_blocks = pack(flat, lengths, self.block_size, False, False)
                        label_blocks = pack(labels, lengths, self.block_size, False, False)
                    out.write(ids_blocks, label_blocks, None, drop_unlearned)
                if self.packing and keep_remainder and carry_ids.size >= 2:
                    out.write([carry_ids], [carry_labels], None, drop_unlearned)
        finally:
            out.close()
        return SplitOutput(path, counts["tokens"], counts["loss"], out.blocks, counts["truncated"])

    def _tokenized(self, ds, counts: dict[str, int]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(flat ids with EOS after each document, flat labels, document lengths) per batch of documents."""
        size = TOKENIZE_BATCH * max(1, self.workers) * 2
        eos = self.tokenizer.eos_token_id
        texts = column_batches(ds, "text", size)
        if self.masked:
            encode = offsets_encoder(self.tokenizer)
            for batch, spans in zip(texts, column_batches(ds, "_spans", size), strict=True):
                flat, mask, lengths = token_ids_and_mask(encode, batch, spans, eos, self.workers)
                counts["tokens"] += int(flat.size)
                counts["loss"] += int(mask.sum())
                yield flat, np.where(mask, flat, np.int32(IGNORE_INDEX)).astype(np.int32), lengths
        else:
            encode = ids_encoder(self.tokenizer)
            for batch in texts:
                flat, lengths = token_ids(encode, batch, eos, self.workers)
                counts["tokens"] += int(flat.size)
                counts["loss"] += int(flat.size)
                yield flat, flat, lengths

    def _by_document(self, name: str, ds, documents: Path, out: _BlockWriter, counts: dict[str, int],
                     drop_unlearned: bool) -> None:
        """Whole documents into blocks: each document's first block of ids (and labels) goes to a file on disk, one
        length per document stays in memory; the layout is computed on the lengths, then the blocks are cut from
        the memory-mapped documents a chunk at a time."""
        schema = pa.schema([("ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32()))])
        all_lengths = []
        with pa.OSFile(str(documents), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for flat, labels, lengths in self._tokenized(ds, counts):
                all_lengths.append(lengths)
                sizes = np.minimum(lengths, self.block_size)
                starts = np.cumsum(lengths) - lengths  # each document's first id in `flat`
                take = np.repeat(starts, sizes) + _positions(sizes)  # its first `sizes` ids
                offsets = pa.array(np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32))
                writer.write_batch(pa.record_batch([pa.ListArray.from_arrays(offsets, pa.array(flat[take])),
                                                    pa.ListArray.from_arrays(offsets, pa.array(labels[take]))],
                                                   schema=schema))
        lengths = np.concatenate(all_lengths) if all_lengths else np.zeros(0, np.int64)
        if (longer := int((lengths > self.block_size).sum())):
            counts["truncated"] = longer
            log.warning("Truncating documents longer than a block split=%s count=%d blockSize=%d",
                        name, longer, self.block_size)
        sizes = np.minimum(lengths, self.block_size)
        blocks = document_blocks(lengths, self.block_size)
        del lengths, all_lengths
        with pa.memory_map(str(documents)) as source:
            table = pa.ipc.open_stream(source).read_all()
            for start in range(0, len(blocks), BLOCKS_PER_BATCH):
                chunk = blocks[start: start + BLOCKS_PER_BATCH]
                order = np.fromiter(itertools.chain.from_iterable(chunk), dtype=np.int64)
                taken = table.take(pa.array(order))
                ids = taken.column("ids").combine_chunks().flatten().to_numpy()
                labels = taken.column("labels").combine_chunks().flatten().to_numpy()
                doc_sizes = sizes[order]
                cuts = np.cumsum(doc_sizes)[np.cumsum([len(b) for b in chunk])[:-1] - 1]  # where each block ends
                positions = _positions(doc_sizes).astype(np.int32)
                out.write(np.split(ids, cuts), np.split(labels, cuts), np.split(positions, cuts), drop_unlearned)
            del table
        documents.unlink()


BLOCKS_PER_BATCH = 4096
"""Blocks per Arrow record batch written."""


def _positions(sizes: np.ndarray) -> np.ndarray:
    """0, 1, ..., n - 1 for each n in `sizes`, concatenated."""
    total = int(sizes.sum())
    return np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)


class _BlockWriter:
    """Appends blocks (input_ids, and labels and position_ids when the dataset has them) to an Arrow stream file."""

    def __init__(self, path: Path, labels: bool, positions: bool):
        fields = [("input_ids", pa.list_(pa.int32()))]
        if labels:
            fields.append(("labels", pa.list_(pa.int32())))
        if positions:
            fields.append(("position_ids", pa.list_(pa.int32())))
        self.schema = pa.schema(fields)
        self.labels, self.positions = labels, positions
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, self.schema)
        self.blocks = 0

    def write(self, ids: list[np.ndarray], labels: list[np.ndarray], positions: list[np.ndarray] | None,
              drop_unlearned: bool) -> None:
        if drop_unlearned:
            keep = [i for i, block in enumerate(labels) if (block[1:] != IGNORE_INDEX).any()]
            ids, labels = [ids[i] for i in keep], [labels[i] for i in keep]
            positions = [positions[i] for i in keep] if positions is not None else None
        for start in range(0, len(ids), BLOCKS_PER_BATCH):
            rows = slice(start, start + BLOCKS_PER_BATCH)
            columns = [ids[rows]] + ([labels[rows]] if self.labels else []) + \
                ([positions[rows]] if self.positions else [])
            lengths = np.fromiter(map(len, ids[rows]), dtype=np.int64)
            offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
            arrays = [pa.ListArray.from_arrays(offsets, pa.array(np.concatenate(c).astype(np.int32), type=pa.int32()))
                      for c in columns]
            self._writer.write_batch(pa.record_batch(arrays, schema=self.schema))
            self.blocks += len(lengths)

    def close(self) -> None:
        self._writer.close()
        self._sink.close()


def digest(paths: dict[str, Path]) -> str:
    """sha256 over the tokenized blocks of each split (names, lengths, ids, and the labels and position ids when there
    are any): equal digests mean equal training data, loss mask and document boundaries included. Read back from the
    written files a record batch at a time."""
    h = hashlib.sha256()
    for name in sorted(paths):
        h.update(name.encode() + b"\0")
        with pa.memory_map(str(paths[name])) as source:
            reader = pa.ipc.open_stream(source)
            columns = reader.schema.names
            table = reader.read_all()
        for column, marker, with_length in (("input_ids", b"", True), ("labels", b"labels\0", False),
                                            ("position_ids", b"positions\0", False)):
            if column not in columns:
                continue
            h.update(marker)
            for chunk in table.column(column).chunks:
                offsets = chunk.offsets.to_numpy()
                values = np.ascontiguousarray(chunk.values.to_numpy(), dtype="<i4")
                for a, b in itertools.pairwise(offsets):
                    if with_length:
                        h.update(np.int64(b - a).tobytes())
                    h.update(values[a:b].tobytes())
        del table
    return "sha256:" + h.hexdigest()


def check_blocks(outputs: dict[str, SplitOutput], origin: str, block_size: int, masked: bool) -> None:
    """A training split of at least one block and a validation split with tokens, or a clear error."""
    if outputs["train"].blocks == 0:
        what = " with a completion token" if masked else ""
        raise PipelineError(
            f"{origin}: the training split has {outputs['train'].tokens} tokens, fewer than one block{what} of "
            f"{block_size} (dataset.preprocessing.blockSize); expected more data or a smaller blockSize"
        )
    if outputs["validation"].blocks == 0:
        raise PipelineError(f"{origin}: the validation split has no tokens; expected a larger dataset.validationSplit")
