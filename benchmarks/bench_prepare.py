"""Preprocessing throughput: the pipeline's tokenize-and-pack (the Rust tokenizer in large batches on all cores, ids
only, numpy packing) against a per-example Python loop (one tokenizer call per document, packing with list slices),
same tokenizer, same documents, same blocks out.

    python benchmarks/bench_prepare.py [--docs 20000] [--num-proc 1] [--block 256] [--repeats 3]

Also the per-example Dataset.map (batched=False) that tutorials use, and the tokenizer floor: one bare
`encode_batch_fast` over all documents, which no path that uses this tokenizer can beat, so loop / floor is the best
speedup this machine allows. The variants run interleaved, in a rotating order, `--repeats` times; speedups use the
medians (and, as `speedupBest`, the fastest runs: the least disturbed by other jobs on a shared machine).
`speedupPerCore` compares CPU seconds instead: the work each path does, whatever share of the cores it got. Prints one JSON object; also the end-to-end prepare stage (load, clean, dedupe, split, tokenize, pack, save).

    python benchmarks/bench_prepare.py --memory [--size-mb 2048] [--block 256] [--vocab 8000]

Memory: writes a JSONL of about `--size-mb` of unique documents into a temporary directory, and runs the whole prepare
stage on it (a scratch model: the tokenizer is trained on the training split) in a child process, sampling the child's
resident memory from /proc; reports peak RSS (`getrusage(RUSAGE_CHILDREN)`, file-backed pages of memory-mapped Arrow
files included) and the sampled peak of anonymous memory (what the process itself holds; the page cache behind a
memory-mapped file is the kernel's to drop), and wall time. Baselines in the same run: reading the file once with plain
Python line iteration (the I/O floor, holding one line), and the same prepare on a file of `--small-mb` (the fixed
footprint: imports, tokenizer, batches). A stage that held the file in memory would need several times its size.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
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
    from gptops.pipeline.data import packing

    flat, lengths = packing.token_ids(packing.ids_encoder(tokenizer), docs, tokenizer.eos_token_id, num_proc)
    return packing.pack(flat, lengths, block, packing=True, keep_remainder=False)


def tokenizer_floor(tokenizer, docs: list[str]) -> list:
    """The Rust tokenizer alone, one call over every document: a lower bound on any path's time."""
    return tokenizer.backend_tokenizer.encode_batch_fast(docs, add_special_tokens=False)


def timed(fn) -> tuple[float, float]:
    """Wall and process CPU seconds of fn() (CPU above wall means the work ran on several cores)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def write_jsonl(path: Path, size_mb: float, seed: int = 0) -> int:
    """About `size_mb` of documents (the recipe of bench_train's documents, without its unique number: a vocabulary
    that does not grow with the file, as in natural text; dedupe drops the rare repeats), one JSON object a line,
    written as they are made; returns how many."""
    rng = random.Random(seed)
    names, things = ["alice", "bob", "carol", "dave", "erin"], ["cats", "dogs", "birds", "boats", "books", "lamps"]
    limit, written, n = int(size_mb * 2**20), 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < limit:  # bounded: every line adds at least one sentence
            lines = []
            for _ in range(10_000):
                sentences = max(1, min(40, int(rng.lognormvariate(1.3, 1.0))))
                lines.append(json.dumps({"text": " ".join(
                    f"{rng.choice(names)} has {rng.randint(1, 99)} {rng.choice(things)} in room {rng.randint(1, 9)}."
                    for _ in range(sentences))}) + "\n")
                n += 1
            chunk = "".join(lines)
            f.write(chunk)
            written += len(chunk)
    return n


def child_prepare(data: str, root: str, block: int, vocab: int) -> None:
    """In the measured child: the prepare stage on `data`, as the trainer image runs it; prints its manifest."""
    from gptops.pipeline import configs_from_spec, run_prepare

    spec = {"model": {"name": "bench"}, "dataset": {"source": {"local": {"path": data}},
                                                    "preprocessing": {"blockSize": block}}}
    model = {"source": {"scratch": {"architecture": "gpt2", "layers": 2, "heads": 2, "hidden": 64,
                                    "contextLength": block, "tokenizer": {"vocabSize": vocab}}}}
    report = run_prepare(configs_from_spec(spec, model, Path(root)).prepare)
    print(json.dumps({k: report.manifest[k] for k in ("documents", "tokens", "blocks", "digest")}))


def child_read(data: str) -> None:
    """In the measured child: the baseline, every line of the file read once with plain Python iteration."""
    n = size = 0
    with open(data, encoding="utf-8") as f:
        for line in f:
            n, size = n + 1, size + len(line)
    print(json.dumps({"lines": n, "chars": size}))


def measured(args: list[str]) -> dict:
    """Run this script with `args` in a child process; its wall time, peak RSS and sampled peak anonymous memory."""
    import resource
    import subprocess
    import threading

    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    peak_anon = 0

    def sample() -> None:
        nonlocal peak_anon
        status = Path(f"/proc/{child.pid}/status")
        while child.poll() is None:
            try:
                fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
                peak_anon = max(peak_anon, int(fields["RssAnon"].split()[0]))
            except (OSError, KeyError, ValueError):
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = child.communicate()
    sampler.join(timeout=5)
    wall = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"child {args} exited with {child.returncode}")
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB; the largest child so far
    return {"seconds": round(wall, 1), "peakRssMiB": round(maxrss / 1024) if maxrss > before else None,
            "peakAnonMiB": round(peak_anon / 1024), "result": json.loads(out.strip().splitlines()[-1])}


def memory(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        n_small = write_jsonl(work / "small.jsonl", args.small_mb, seed=1)
        n_docs = write_jsonl(work / "data.jsonl", args.size_mb, seed=2)
        generate_s = time.perf_counter() - t
        size = (work / "data.jsonl").stat().st_size
        # Smallest first: RUSAGE_CHILDREN's ru_maxrss is the largest child's, so each later figure is its own only
        # when it is larger; peakAnonMiB is sampled per child.
        read = measured(["--child-read", str(work / "data.jsonl")])
        small = measured(["--child-prepare", str(work / "small.jsonl"), str(work / "run-small"), str(args.block),
                          str(args.vocab)])
        shutil.rmtree(work / "run-small", ignore_errors=True)
        large = measured(["--child-prepare", str(work / "data.jsonl"), str(work / "run"), str(args.block),
                          str(args.vocab)])
    print(json.dumps({
        "benchmark": "prepare-memory",
        "fileMiB": round(size / 2**20, 1), "documents": n_docs, "smallFileMiB": args.small_mb, "smallDocuments": n_small,
        "blockSize": args.block, "vocabSize": args.vocab, "generateSeconds": round(generate_s, 1),
        "prepare": large,
        "baselineLineIteration": read,
        "baselineSmallFile": small,
        "anonGrowthMiB": large["peakAnonMiB"] - small["peakAnonMiB"],
        "peakRssUnder1GiB": large["peakRssMiB"] is not None and large["peakRssMiB"] < 1024,
        "cpuCount": os.cpu_count(), "loadAverage": round(os.getloadavg()[0], 2),
    }, indent=2))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child-prepare":
        return child_prepare(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    if len(sys.argv) > 1 and sys.argv[1] == "--child-read":
        return child_read(sys.argv[2])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=20000)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--num-proc", type=int, default=1, help="numProc: tokenizer calls at a time; processes for cleaning")
    p.add_argument("--vocab", type=int, default=4000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--memory", action="store_true", help="peak memory of the prepare stage on a large JSONL")
    p.add_argument("--size-mb", type=float, default=2048, help="--memory: the JSONL's size")
    p.add_argument("--small-mb", type=float, default=8, help="--memory: the baseline's small JSONL")
    args = p.parse_args()
    if args.memory:
        if "--vocab" not in sys.argv:
            args.vocab = 8000
        return memory(args)
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
