"""Preprocessing throughput: the pipeline's tokenize-and-pack (batched fast tokenizer over Arrow, numpy packing)
against a per-example Python loop (one tokenizer call per document, packing with list slices), same tokenizer,
same documents, same blocks out.

    python benchmarks/bench_prepare.py [--docs 20000] [--num-proc 1] [--block 256]

Also the per-example Dataset.map (batched=False) that tutorials use. Prints one JSON object; also the end-to-end prepare stage (load, clean, dedupe, split, tokenize, pack, save).
"""

from __future__ import annotations

import argparse
import json
import os
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
    """The prepare stage's own path: Dataset.map(batched) with the fast tokenizer, then Arrow -> numpy packing."""
    from datasets import Dataset

    from gptops.pipeline import data

    ds = Dataset.from_dict({"text": docs})
    ids = ds.map(data._Tokenize(tokenizer), batched=True, batch_size=1000, num_proc=num_proc if num_proc > 1 else None,
                 remove_columns=["text"])
    flat, lengths = data._flat_ids(ids)
    return data._pack(flat, lengths, block, packing=True, keep_remainder=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=20000)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--num-proc", type=int, default=1)
    p.add_argument("--vocab", type=int, default=4000)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    datasets.disable_progress_bars()
    from gptops.pipeline import data, models
    from gptops.pipeline.config import DataSource, ModelSource, PrepareConfig

    docs = make_documents(args.docs, seed=1)
    tokenizer = models.train_tokenizer(docs[:2000], args.vocab, args.block)

    # Warm both paths once on a small slice (tokenizer caches, imports), then time the whole set.
    per_example_loop(tokenizer, docs[:200], args.block)
    pipeline_batched(tokenizer, docs[:200], args.block, 1)

    t = time.perf_counter()
    loop_blocks = per_example_loop(tokenizer, docs, args.block)
    loop_s = time.perf_counter() - t
    t = time.perf_counter()
    map_blocks = per_example_map(tokenizer, docs, args.block)
    map_s = time.perf_counter() - t
    t = time.perf_counter()
    batched_blocks = pipeline_batched(tokenizer, docs, args.block, args.num_proc)
    batched_s = time.perf_counter() - t
    assert len(loop_blocks) == len(batched_blocks) == len(map_blocks) and list(batched_blocks[-1]) == loop_blocks[-1], "different blocks"
    tokens = len(loop_blocks) * args.block

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
        "perExampleLoop": {"seconds": round(loop_s, 3), "tokensPerSecond": round(tokens / loop_s)},
        "perExampleMap": {"seconds": round(map_s, 3), "tokensPerSecond": round(tokens / map_s)},
        "pipelineBatched": {"seconds": round(batched_s, 3), "tokensPerSecond": round(tokens / batched_s)},
        "speedup": round(loop_s / batched_s, 2),
        "speedupVsPerExampleMap": round(map_s / batched_s, 2),
        "cpuCount": os.cpu_count(),
        "loadAverage": round(os.getloadavg()[0], 2),
        "prepareStageEndToEnd": {"seconds": round(stage_s, 3),
                                 "tokensPerSecond": round(sum(report.manifest["tokens"].values()) / stage_s)},
    }, indent=2))


if __name__ == "__main__":
    main()
