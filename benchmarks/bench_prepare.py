"""Preprocessing throughput: the pipeline's tokenize-and-pack (the Rust tokenizer in large batches on all cores, ids
only, numpy packing) against a per-example Python loop (one tokenizer call per document, packing with list slices),
same tokenizer, same documents, same blocks out.

    python benchmarks/bench_prepare.py [--docs 20000] [--num-proc 1] [--block 256] [--repeats 3]

Also the per-example Dataset.map (batched=False) that tutorials use, and the tokenizer floor: one bare
`encode_batch_fast` over all documents, which no path that uses this tokenizer can beat, so loop / floor is the best
speedup this machine allows. The variants run interleaved, in a rotating order, `--repeats` times; speedups use the
medians (and, as `speedupBest`, the fastest runs: the least disturbed by other jobs on a shared machine).
`speedupPerCore` compares CPU seconds instead: the work each path does, whatever share of the cores it got. Prints one JSON object; also the end-to-end prepare stage (load, clean, dedupe, split, tokenize, pack, save).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import make_documents  # noqa: E402


def per_example_loop(tokenizer, docs: list[str], block: int) -> list[list[int]]:
    """The obvious way: tokenize one document at a time, append EOS, cut blocks off a growing buffer."""
    blocks, buffer = [], []
    for doc in docs:
        buffer.extend(tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
        while len(buffer) >= block:
            blocks.append(buffer[:block])
            buffer = buffer[block:]
    return blocks


def per_example_map(tokenizer, docs: list[str], block: int) -> list[list[int]]:
    """The tutorial way: Dataset.map one example at a time, then the same list-slicing packing."""
    from datasets import Dataset

    ds = Dataset.from_dict({"text": docs}).map(
        lambda row: {"input_ids": tokenizer(row["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]},
        remove_columns=["text"])
    blocks, buffer = [], []
    for ids in ds["input_ids"]:
        buffer.extend(ids)
        while len(buffer) >= block:
            blocks.append(buffer[:block])
            buffer = buffer[block:]
    return blocks


def pipeline_batched(tokenizer, docs: list[str], block: int, num_proc: int) -> list:
    """The prepare stage's own path: ids from the Rust tokenizer in large batches, EOS and packing in numpy."""
    from gptops.pipeline import data

    flat, lengths = data._token_ids(data._ids_encoder(tokenizer), docs, tokenizer.eos_token_id, num_proc)
    return data._pack(flat, lengths, block, packing=True, keep_remainder=False)


def tokenizer_floor(tokenizer, docs: list[str]) -> list:
    """The Rust tokenizer alone, one call over every document: a lower bound on any path's time."""
    return tokenizer.backend_tokenizer.encode_batch_fast(docs, add_special_tokens=False)


def timed(fn) -> tuple[float, float]:
    """Wall and process CPU seconds of fn() (CPU above wall means the work ran on several cores)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=20000)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--num-proc", type=int, default=1, help="numProc: tokenizer calls at a time; processes for cleaning")
    p.add_argument("--vocab", type=int, default=4000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    datasets.disable_progress_bars()
    from gptops.pipeline import data, models
    from gptops.pipeline.config import DataSource, ModelSource, PrepareConfig

    docs = make_documents(args.docs, seed=1)
    tokenizer = models.train_tokenizer(docs[:2000], args.vocab, args.block)

    # Same blocks out of every path, which also warms the tokenizer's cache for all of them alike.
    loop_blocks = per_example_loop(tokenizer, docs, args.block)
    assert [list(b) for b in pipeline_batched(tokenizer, docs, args.block, args.num_proc)] == loop_blocks, "different blocks"
    assert per_example_map(tokenizer, docs, args.block) == loop_blocks, "different blocks"
    tokens = len(loop_blocks) * args.block

    variants = {
        "perExampleLoop": lambda: per_example_loop(tokenizer, docs, args.block),
        "perExampleMap": lambda: per_example_map(tokenizer, docs, args.block),
        "pipelineBatched": lambda: pipeline_batched(tokenizer, docs, args.block, args.num_proc),
        "tokenizerFloor": lambda: tokenizer_floor(tokenizer, docs),
    }
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.repeats):  # interleaved, rotating order: load from other jobs hits every variant alike
        for name in names[r % len(names):] + names[: r % len(names)]:
            runs[name].append(timed(variants[name]))
    seconds = {name: statistics.median(w for w, _ in times) for name, times in runs.items()}
    best = {name: min(w for w, _ in times) for name, times in runs.items()}
    cpu = {name: statistics.median(c for _, c in times) for name, times in runs.items()}

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "docs.txt").write_text("\n".join(docs) + "\n")
        model_dir = work / "model"
        tokenizer.save_pretrained(str(model_dir))
        from transformers import GPT2Config

        GPT2Config(n_positions=args.block, vocab_size=len(tokenizer)).save_pretrained(str(model_dir))
        t = time.perf_counter()
        report = data.run(PrepareConfig(source=DataSource(kind="path", location=str(work / "docs.txt")),
                                        model=ModelSource(kind="path", location=str(model_dir)),
                                        artifact_root=work / "run", block_size=args.block, num_proc=args.num_proc))
        stage_s = time.perf_counter() - t

    print(json.dumps({
        "benchmark": "prepare",
        "documents": len(docs), "blockSize": args.block, "numProc": args.num_proc, "packedTokens": tokens,
        "repeats": args.repeats,
        **{name: {"seconds": round(seconds[name], 3), "tokensPerSecond": round(tokens / seconds[name]),
                  "allSeconds": [round(w, 3) for w, _ in runs[name]],
                  "cpuSeconds": [round(c, 3) for _, c in runs[name]]} for name in variants},
        "speedup": round(seconds["perExampleLoop"] / seconds["pipelineBatched"], 2),
        "speedupVsPerExampleMap": round(seconds["perExampleMap"] / seconds["pipelineBatched"], 2),
        "speedupCeiling": round(seconds["perExampleLoop"] / seconds["tokenizerFloor"], 2),
        "speedupBest": round(best["perExampleLoop"] / best["pipelineBatched"], 2),
        "speedupPerCore": round(cpu["perExampleLoop"] / cpu["pipelineBatched"], 2),
        "speedupPerCoreCeiling": round(cpu["perExampleLoop"] / cpu["tokenizerFloor"], 2),
        "speedupCeilingBest": round(best["perExampleLoop"] / best["tokenizerFloor"], 2),
        "tokenizersParallelism": os.environ.get("TOKENIZERS_PARALLELISM", "unset (on)"),
        "cpuCount": os.cpu_count(),
        "loadAverage": round(os.getloadavg()[0], 2),
        "prepareStageEndToEnd": {"seconds": round(stage_s, 3),
                                 "tokensPerSecond": round(sum(report.manifest["tokens"].values()) / stage_s)},
    }, indent=2))


if __name__ == "__main__":
    main()
