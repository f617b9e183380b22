"""Training throughput of the pipeline (packed, padding-free blocks) against plain HF Trainer defaults (one document
per row, padded to the longest in each batch), on the same model, data, batch size and step count.

    python benchmarks/bench_train.py [--steps 30] [--docs 3000] [--layers 2] [--hidden 128] [--context 256]

Prints one JSON object. Each variant runs in its own process so that peak memory is its own: on CUDA
torch.cuda.max_memory_allocated, on CPU the peak RSS (ru_maxrss) of that process. Throughput counts only
non-padding tokens, over the steps after a short warm-up. On CUDA it also gives MFU against 989 TFLOP/s (H100
dense bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

H100_BF16_PEAK = 989e12
WARMUP_STEPS = 3


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


def make_timer():
    """A TrainerCallback recording the wall time at the end of every step (after a CUDA sync)."""
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())

    return StepTimer()


def peak_memory_mb() -> tuple[float, str]:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20, "cuda.max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "ru_maxrss"


def model_flops_per_token(config) -> float:
    """6N for the weights (forward + backward) plus attention's 12 * layers * hidden * context."""
    n_params = 12 * config.n_layer * config.n_embd**2 + config.vocab_size * config.n_embd
    return 6 * n_params + 12 * config.n_layer * config.n_embd * config.n_positions


def run_variant(variant: str, work: Path, args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, GPT2Config,
                              Trainer, TrainingArguments)

    from gptops.pipeline import train
    from gptops.pipeline.config import ModelSource, TrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    timer = make_timer()
    scratch = ModelSource(kind="scratch", layers=args.layers, heads=args.heads, hidden=args.hidden,
                          context_length=args.context, vocab_size=args.vocab)
    tokenizer = AutoTokenizer.from_pretrained(str(work / "run" / "tokenizer"))
    if variant == "pipeline":
        config = TrainConfig(model=scratch, artifact_root=work / "run", max_steps=args.steps, batch_size=args.batch,
                             learning_rate=1e-3, checkpoint_every_steps=10**6, resume="never", logging_steps=10**6)
        train.run(config, callbacks=[timer])
        tokens_per_step = [args.batch * args.context] * args.steps  # packed: every position is a real token
        positions_per_step = tokens_per_step
        model_config = GPT2Config.from_pretrained(str(work / "run" / "model"))
    else:
        # Plain HF: tokenize each document (truncated to the context), pad to the longest in the batch.
        docs = json.loads((work / "docs.json").read_text())
        tokenizer.pad_token = tokenizer.eos_token
        ids = tokenizer(docs, truncation=True, max_length=args.context)["input_ids"]
        dataset = Dataset.from_dict({"input_ids": ids})
        collate = DataCollatorForLanguageModeling(tokenizer, mlm=False)
        tokens_per_step: list[int] = []
        positions_per_step: list[int] = []

        def counting_collator(rows):
            batch = collate(rows)
            tokens_per_step.append(int(batch["attention_mask"].sum()))
            positions_per_step.append(batch["input_ids"].numel())
            return batch

        model_config = GPT2Config(n_layer=args.layers, n_head=args.heads, n_embd=args.hidden,
                                  n_positions=args.context, vocab_size=len(tokenizer))
        torch.manual_seed(42)
        model = AutoModelForCausalLM.from_config(model_config)
        targs = TrainingArguments(output_dir=str(work / "plain"), max_steps=args.steps,
                                  per_device_train_batch_size=args.batch, learning_rate=1e-3, report_to="none",
                                  save_strategy="no", logging_strategy="no", disable_tqdm=True)
        Trainer(model=model, args=targs, train_dataset=dataset, data_collator=counting_collator,
                callbacks=[timer]).train()
    times = timer.times
    measured = tokens_per_step[WARMUP_STEPS: args.steps]
    seconds = times[-1] - times[WARMUP_STEPS - 1]
    tps = sum(measured) / seconds
    memory, memory_kind = peak_memory_mb()
    out = {"variant": variant, "tokensPerSecond": round(tps, 1), "nonPaddingTokens": sum(measured),
           "paddingFraction": round(1 - sum(measured) / sum(positions_per_step[WARMUP_STEPS: args.steps]), 3),
           "measuredSteps": len(measured), "seconds": round(seconds, 3), "peakMemoryMiB": round(memory, 1),
           "memoryMeasure": memory_kind}
    if torch.cuda.is_available():
        out["mfu"] = round(tps * model_flops_per_token(model_config) / H100_BF16_PEAK, 5)
        out["device"] = torch.cuda.get_device_name()
    return out


def prepare_data(work: Path, args) -> dict:
    from gptops.pipeline import data
    from gptops.pipeline.config import DataSource, ModelSource, PrepareConfig

    docs = make_documents(args.docs)
    (work / "docs.json").write_text(json.dumps(docs))
    (work / "docs.txt").write_text("\n".join(docs) + "\n")
    scratch = ModelSource(kind="scratch", layers=args.layers, heads=args.heads, hidden=args.hidden,
                          context_length=args.context, vocab_size=args.vocab)
    report = data.run(PrepareConfig(source=DataSource(kind="path", location=str(work / "docs.txt")), model=scratch,
                                    artifact_root=work / "run", block_size=args.context, dedupe="none",
                                    validation_split=0.01))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(work / "run" / "tokenizer"))
    lengths = sorted(min(len(x) + 1, args.context) for x in tokenizer(docs, verbose=False)["input_ids"])
    return {"documents": len(docs), "tokens": report.manifest["tokens"]["train"],
            "docTokens": {"min": lengths[0], "median": lengths[len(lengths) // 2], "mean": round(sum(lengths) / len(lengths), 1),
                          "p90": lengths[int(len(lengths) * 0.9)], "max": lengths[-1]}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--docs", type=int, default=3000)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--vocab", type=int, default=2000)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--variant", choices=["pipeline", "plain"], help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args.variant:  # a child: one variant, one JSON line
        print(json.dumps(run_variant(args.variant, args.work, args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dataset = prepare_data(work, args)
        results = {}
        for variant in ("plain", "pipeline"):
            cmd = [sys.executable, __file__, "--variant", variant, "--work", str(work)] + [
                f"--{k}={getattr(args, k)}" for k in ("steps", "batch", "layers", "heads", "hidden", "context", "vocab", "threads")]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode:
                sys.exit(f"{variant} failed:\n{proc.stderr[-4000:]}")
            results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    plain, packed = results["plain"], results["pipeline"]
    print(json.dumps({
        "benchmark": "train",
        "model": {"architecture": "gpt2", "layers": args.layers, "hidden": args.hidden, "context": args.context,
                  "vocab": args.vocab},
        "batch": args.batch, "steps": args.steps, "warmupSteps": WARMUP_STEPS, "dataset": dataset,
        "plain": plain, "pipeline": packed,
        "speedup": round(packed["tokensPerSecond"] / plain["tokensPerSecond"], 2),
        "peakMemoryRatio": round(packed["peakMemoryMiB"] / plain["peakMemoryMiB"], 3),
    }, indent=2))


if __name__ == "__main__":
    main()
