"""Training throughput of the pipeline's train stage against a plain Hugging Face Trainer, measured fairly: same model
and initial weights, same data, same precision (bf16 where the device has it) and optimizer (fused AdamW on CUDA).

    python benchmarks/bench_train.py --shape tiny|124m|355m [--batch 16] [--steps 30] [--docs 20000] [--no-compile]

The pipeline trains on packed 1024-token (tiny: 256) blocks of `format: text`; the baseline takes one document per row,
padded to the longest in the batch by DataCollatorForLanguageModeling, its defaults otherwise. The baseline runs twice:
  - equal memory: its batch is searched (doubling, then bisection) for the largest whose peak memory is at most the
    pipeline's; each trial starts from the saved weights (CUDA: all baseline runs in one process, the peak counter
    reset before each; CPU: a process per run, as peak RSS cannot be reset);
  - equal tokens: as many rows per optimizer step as hold the pipeline's tokens per step on average, with gradient
    accumulation over micro-batches of the equal-memory size.
Throughput counts non-padding tokens only, over the steps after the warm-up (which includes compiling). MFU is model
FLOPs (6N + 12 * layers * hidden * attended length per token, as nanoGPT and PaLM count them) against the device's dense
bf16 peak (PEAK_BF16_FLOPS; null on CPU and unknown devices). Prints one JSON object with the configuration.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
"""Dense bf16 tensor-core peak by device name (vendor data sheets, without sparsity)."""

# GPT-2 shapes: layers, heads, hidden, context; the model's vocabulary is GPT-2's, the tokenizer (trained on the
# synthetic corpus) uses fewer ids, which changes no FLOP count.
SHAPES = {
    "tiny": {"layers": 2, "heads": 4, "hidden": 128, "context": 256, "vocab": 2000, "tokenizer_vocab": 2000,
             "batch": 8, "docs": 3000, "steps": 20, "warmup": 3},
    "124m": {"layers": 12, "heads": 12, "hidden": 768, "context": 1024, "vocab": 50257, "tokenizer_vocab": 8000,
             "batch": 16, "docs": 20000, "steps": 30, "warmup": 5},
    "355m": {"layers": 24, "heads": 16, "hidden": 1024, "context": 1024, "vocab": 50257, "tokenizer_vocab": 8000,
             "batch": 16, "docs": 20000, "steps": 30, "warmup": 5},
}
SEARCH_STEPS = 3  # enough for the optimizer state and the largest batch to have been allocated
MAX_PLAIN_BATCH = 4096
CPU_SEARCH_LIMIT = 4
"""On CPU peak RSS is mostly the process's fixed footprint, so the search stops at this many times the pipeline batch."""


def make_documents(n: int, seed: int = 0) -> list[str]:
    """Documents of widely varied length (log-normal sentence counts, like real instruction/chat data)."""
    rng = random.Random(seed)
    names, things = ["alice", "bob", "carol", "dave", "erin"], ["cats", "dogs", "birds", "boats", "books", "lamps"]
    docs = []
    for i in range(n):
        sentences = max(1, min(40, int(rng.lognormvariate(1.3, 1.0))))
        docs.append(f"doc {i}: " + " ".join(
            f"{rng.choice(names)} has {rng.randint(1, 99)} {rng.choice(things)} in room {rng.randint(1, 9)}."
            for _ in range(sentences)))
    return docs


# ---------------------------------------------------------------------------------------------------------------
# One measured run (in a child process, or in-process trials on CUDA)


def make_meter():
    """A TrainerCallback that records, at the end of every optimizer step (after a CUDA sync), the time and the
    non-padding tokens the collator has handed out so far, and counts the model's parameters at the start."""
    import torch
    from transformers import TrainerCallback

    class Meter(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.tokens: list[int] = []
            self.parameters = 0

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            # Position embeddings are a lookup, not a matmul: nanoGPT leaves them out of N.
            wpe = getattr(getattr(model, "transformer", None), "wpe", None)
            self.parameters = sum(p.numel() for p in model.parameters()) - (wpe.weight.numel() if wpe else 0)

        def on_step_end(self, args, state, control, train_dataloader=None, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())
            # The collator runs when the data loader fetches a batch, one batch ahead of the step (accelerate looks
            # ahead for the end): every snapshot is one batch early, so differences over the window are right.
            collate = train_dataloader.collate_fn
            self.tokens.append(getattr(collate, "data_collator", collate).tokens)  # under RemoveColumnsCollator

    return Meter()


class CountingCollator:
    """The baseline's DataCollatorForLanguageModeling, counting real tokens and padded positions."""

    def __init__(self, tokenizer):
        from transformers import DataCollatorForLanguageModeling

        self.collate = DataCollatorForLanguageModeling(tokenizer, mlm=False)
        self.tokens = self.positions = self.rows = 0

    def __call__(self, rows):
        batch = self.collate(rows)
        self.tokens += int(batch["attention_mask"].sum())
        self.positions += batch["input_ids"].numel()
        self.rows += batch["input_ids"].shape[0]
        return batch


def reset_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mib() -> tuple[float, str]:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20, "cuda.max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "ru_maxrss"


def run_pipeline(work: Path, shape: dict, batch: int, steps: int, compile_model: bool) -> dict:
    """The train stage as a FineTuneJob runs it (full fine-tune of the base model), at `batch` blocks per step."""
    import torch

    from gptops.pipeline import train
    from gptops.pipeline.config import ModelSource, TrainConfig

    reset_memory()
    meter = make_meter()
    config = TrainConfig(model=ModelSource(kind="path", location=str(work / "base")), artifact_root=work / "run",
                         max_steps=steps, batch_size=batch, learning_rate=3e-4, compile=compile_model,
                         checkpoint_every_steps=10**6, resume="never", logging_steps=10**6)
    train.run(config, callbacks=[meter])
    compiled = compile_model and torch.cuda.is_available()  # the train stage compiles on CUDA only
    return summarize(meter, shape, {"batch": batch, "gradientAccumulation": 1, "compile": compiled,
                                    "attendedLength": shape["context"]})


def run_plain(work: Path, shape: dict, batch: int, accumulation: int, steps: int) -> dict:
    """A plain HF Trainer, one document per row padded per batch; bf16 and fused AdamW as the pipeline gets them."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from gptops.pipeline.models import pick_dtype

    reset_memory()
    cuda = torch.cuda.is_available()
    meter = make_meter()
    tokenizer = AutoTokenizer.from_pretrained(str(work / "base"))
    tokenizer.pad_token = tokenizer.eos_token
    docs = json.loads((work / "docs.json").read_text())
    ids = tokenizer(docs, truncation=True, max_length=shape["context"], verbose=False)["input_ids"]
    collator = CountingCollator(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(str(work / "base"))
    args = TrainingArguments(output_dir=str(work / "plain"), max_steps=steps, per_device_train_batch_size=batch,
                             gradient_accumulation_steps=accumulation, learning_rate=3e-4,
                             bf16=pick_dtype("auto") == torch.bfloat16,
                             optim="adamw_torch_fused" if cuda else "adamw_torch", report_to="none",
                             save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=42)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": ids}),
                      data_collator=collator, callbacks=[meter])
    trainer.train()
    del trainer, model
    attended = collator.positions / max(collator.rows, 1)  # padded rows: attention runs over the padding too
    return summarize(meter, shape, {"batch": batch, "gradientAccumulation": accumulation,
                                    "attendedLength": round(attended, 1),
                                    "paddingFraction": round(1 - collator.tokens / max(collator.positions, 1), 3)})


def summarize(meter, shape: dict, extra: dict) -> dict:
    import torch

    warmup = min(shape["warmup"], len(meter.times) - 2)
    seconds = meter.times[-1] - meter.times[warmup - 1] if warmup else meter.times[-1] - meter.times[0]
    tokens = meter.tokens[-1] - meter.tokens[max(warmup - 1, 0)]
    steps = len(meter.times) - max(warmup, 1)
    tps = tokens / seconds
    memory, measure = peak_memory_mib()
    flops_per_token = 6 * meter.parameters + 12 * shape["layers"] * shape["hidden"] * extra["attendedLength"]
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else "cpu"
    peak = next((flops for name, flops in PEAK_BF16_FLOPS.items() if name in device), None)
    return {**extra, "tokensPerSecond": round(tps, 1), "tokensPerStep": round(tokens / steps, 1),
            "measuredSteps": steps, "seconds": round(seconds, 3), "peakMemoryMiB": round(memory, 1),
            "memoryMeasure": measure, "parameters": meter.parameters, "device": device,
            "precision": "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32",
            "mfu": round(tps * flops_per_token / peak, 4) if peak else None}


# ---------------------------------------------------------------------------------------------------------------
# The equal-memory search


def search_batch(measure, target_mib: float, start: int, limit: int = MAX_PLAIN_BATCH) -> tuple[int, list[dict]]:
    """The largest batch (to within 1/8) whose peak memory is at most `target_mib`: double from `start` while it fits,
    then bisect. `measure(batch)` returns the peak in MiB, or None when the batch ran out of memory."""
    trials: list[dict] = []

    def fits(batch: int) -> bool:
        peak = measure(batch)
        trials.append({"batch": batch, "peakMemoryMiB": peak})
        return peak is not None and peak <= target_mib

    good, bad = 0, None
    batch = start
    while batch <= limit:
        if not fits(batch):
            bad = batch
            break
        good, batch = batch, batch * 2
    if good == 0:  # even the first batch did not fit: halve down to 1
        bad, batch = start, start // 2
        while batch >= 1 and not fits(batch):
            bad, batch = batch, batch // 2
        good = max(batch, 1)
    while bad is not None and bad - good > max(1, good // 8):  # to within 1/8: fewer trials, still under
        middle = (good + bad) // 2
        if fits(middle):
            good = middle
        else:
            bad = middle
    return good, trials


def plain_baselines(run, target_mib: float, start: int, limit: int, rows: int, steps: int) -> dict:
    """Both baseline runs. `run(batch, accumulation, steps)` measures one ({"outOfMemory": True} when it did not fit).
    Same memory: the searched batch. Same tokens: `rows` rows per optimizer step, in micro-batches that fit."""
    best, trials = search_batch(lambda b: run(b, 1, SEARCH_STEPS).get("peakMemoryMiB"), target_mib, start, limit)
    same_memory = run(best, 1, steps)
    accumulation = math.ceil(rows / best)
    same_tokens = run(math.ceil(rows / accumulation), accumulation, steps)
    return {"sameMemory": {**same_memory, "searchTrials": trials}, "sameTokens": same_tokens}


def cuda_plain_baselines(work: Path, shape: dict, target_mib: float, start: int, rows: int, steps: int) -> dict:
    """The baselines in this one process (no process start per trial): each run's peak is its own after
    reset_peak_memory_stats, and each starts from the saved weights."""
    import torch

    def run(batch: int, accumulation: int, run_steps: int) -> dict:
        try:
            return run_plain(work, shape, batch, accumulation, run_steps)
        except torch.OutOfMemoryError:
            return {"outOfMemory": True}

    return plain_baselines(run, target_mib, start, MAX_PLAIN_BATCH, rows, steps)


# ---------------------------------------------------------------------------------------------------------------
# The parent: data, the runs in child processes, the report


def prepare_data(work: Path, shape: dict, docs_n: int) -> dict:
    """The documents, the base model (random GPT-2 weights of the shape, with a tokenizer trained on the documents)
    and the pipeline's prepared dataset of it."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    from gptops.pipeline import data, models
    from gptops.pipeline.config import DataSource, ModelSource, PrepareConfig

    docs = make_documents(docs_n)
    (work / "docs.json").write_text(json.dumps(docs))
    (work / "docs.txt").write_text("\n".join(docs) + "\n")
    tokenizer = models.train_tokenizer(docs, shape["tokenizer_vocab"], shape["context"])
    config = GPT2Config(n_layer=shape["layers"], n_head=shape["heads"], n_embd=shape["hidden"],
                        n_positions=shape["context"], vocab_size=max(shape["vocab"], len(tokenizer)),
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(42)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(work / "base"))
    tokenizer.save_pretrained(str(work / "base"))
    report = data.run(PrepareConfig(source=DataSource(kind="path", location=str(work / "docs.txt")),
                                    model=ModelSource(kind="path", location=str(work / "base")),
                                    artifact_root=work / "run", block_size=shape["context"], dedupe="none",
                                    validation_split=0.01))
    lengths = sorted(min(len(x) + 1, shape["context"]) for x in tokenizer(docs, verbose=False)["input_ids"])
    return {"documents": len(docs), "tokens": report.manifest["tokens"]["train"],
            "docTokens": {"min": lengths[0], "median": lengths[len(lengths) // 2],
                          "mean": round(sum(lengths) / len(lengths), 1), "p90": lengths[int(len(lengths) * 0.9)],
                          "max": lengths[-1]}}


def child(args, mode: str, **params) -> dict:
    """Run one mode in a fresh process; its last stdout line is the JSON result (None: it ran out of memory)."""
    cmd = [sys.executable, __file__, "--shape", args.shape, "--child", json.dumps({"mode": mode, **params}),
           "--work", str(args.work)]
    if args.threads:
        cmd.append(f"--threads={args.threads}")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        if "OutOfMemoryError" in proc.stderr or "CUDA out of memory" in proc.stderr:
            return {"outOfMemory": True}
        sys.exit(f"{mode} {params} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_child(args, shape: dict) -> dict:
    spec = json.loads(args.child)
    mode = spec.pop("mode")
    if mode == "pipeline":
        return run_pipeline(args.work, shape, spec["batch"], spec["steps"], spec["compile"])
    if mode == "plain":
        return run_plain(args.work, shape, spec["batch"], spec["accumulation"], spec["steps"])
    return cuda_plain_baselines(args.work, shape, **spec)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--batch", type=int, help="pipeline blocks per step (default: by shape)")
    p.add_argument("--steps", type=int, help="optimizer steps per measured run (default: by shape)")
    p.add_argument("--docs", type=int, help="documents in the corpus (default: by shape)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="the pipeline without torch.compile")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    shape = SHAPES[args.shape]
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(run_child(args, shape)))
        return

    import torch

    batch, steps = args.batch or shape["batch"], args.steps or shape["steps"]
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        args.work = Path(tmp)
        dataset = prepare_data(args.work, shape, args.docs or shape["docs"])
        pipeline = child(args, "pipeline", batch=batch, steps=steps, compile=args.compile)
        # Equal tokens per optimizer step: as many rows as hold the pipeline's tokens per step on average.
        rows = math.ceil(pipeline["tokensPerStep"] / dataset["docTokens"]["mean"])
        if torch.cuda.is_available():
            plain = child(args, "baselines", target_mib=pipeline["peakMemoryMiB"], start=batch, rows=rows, steps=steps)
        else:
            def run(b: int, accumulation: int, run_steps: int) -> dict:
                return child(args, "plain", batch=b, accumulation=accumulation, steps=run_steps)

            plain = plain_baselines(run, pipeline["peakMemoryMiB"], batch, CPU_SEARCH_LIMIT * batch, rows, steps)

    def versus(plain: dict) -> dict:
        return {"speedup": round(pipeline["tokensPerSecond"] / plain["tokensPerSecond"], 2),
                "peakMemoryRatio": round(pipeline["peakMemoryMiB"] / plain["peakMemoryMiB"], 3)}

    print(json.dumps({
        "benchmark": "train",
        "shape": args.shape,
        "config": {"model": {"architecture": "gpt2", **{k: shape[k] for k in ("layers", "heads", "hidden", "context",
                                                                              "vocab")}},
                   "tokenizerVocab": shape["tokenizer_vocab"], "pipelineBatch": batch, "steps": steps,
                   "warmupSteps": shape["warmup"], "searchSteps": SEARCH_STEPS, "compile": pipeline["compile"],
                   "precision": pipeline["precision"],
                   "optimizer": "adamw_torch_fused" if torch.cuda.is_available() else "adamw_torch",
                   "torch": torch.__version__, "threads": args.threads or torch.get_num_threads()},
        "dataset": dataset,
        "pipeline": pipeline,
        "plainSameMemory": {**plain["sameMemory"], **versus(plain["sameMemory"])},
        "plainSameTokensPerStep": {**plain["sameTokens"], **versus(plain["sameTokens"])},
        "seconds": round(time.monotonic() - started, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
