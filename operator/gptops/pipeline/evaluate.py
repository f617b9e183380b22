"""The evaluate stage: token-weighted perplexity on the validation blocks and BLEU on held-out prompt/reference pairs,
for the trained model and (compare_with_base) the model it started from. Writes `report.json` into the evaluation directory.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import load_from_disk

from gptops.pipeline import models
from gptops.pipeline.config import EvalConfig
from gptops.pipeline.errors import PipelineError
from gptops.api.stageresult import StageResult
from gptops.pipeline.train import PackedCollator

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, dict[str, Any]], None]
SAMPLES_IN_REPORT = 5
SAMPLE_CHARS = 500


@dataclass
class EvalReport:
    """Every number of the evaluation; `metrics` are the headline ones, `report` the whole of report.json."""

    metrics: dict[str, Any]
    report: dict[str, Any]
    report_path: Path
    seconds: float
    digest: str | None = None
    """sha256 of the weights evaluated (verified against the train stage's seal)."""

    def result(self) -> StageResult:
        m = self.metrics
        parts = [f"{k} {m[k]}" for k in ("perplexity", "baselinePerplexity", "bleu", "baselineBleu") if m.get(k) is not None]
        return StageResult(stage="evaluate", ok=True, message="evaluated: " + ", ".join(parts),
                           metrics=m, artifacts={"evaluation": str(self.report_path)}, digest=self.digest,
                           samples=self.report.get("samples") or [])


def run(config: EvalConfig, progress: ProgressFn | None = None) -> EvalReport:
    """Evaluate the trained model (and the starting one) and write report.json into the evaluation directory."""
    started = time.monotonic()
    say = progress or (lambda event, fields: None)
    root = config.artifact_root
    dataset_dir = root / "dataset"
    if not (dataset_dir / "dataset_dict.json").exists():
        raise PipelineError(f"{dataset_dir}: no prepared dataset; expected the output of the prepare stage")
    validation = load_from_disk(str(dataset_dir))["validation"]
    blocks = validation["input_ids"][:]
    # Completion-only loss: perplexity on the tokens training learned (the completions), not the prompts.
    labels = validation["labels"][:] if "labels" in validation.column_names else None
    positions = validation["position_ids"][:] if "position_ids" in validation.column_names else None
    # BLEU scores every pair up to maxSamples; otherwise a few are still generated, for a person to read.
    pairs = _read_pairs(dataset_dir / "eval_pairs.jsonl",
                        config.max_samples if "bleu" in config.metrics else SAMPLES_IN_REPORT)
    tokenizer = models.load_tokenizer(root / "tokenizer")
    device, dtype = models.device(), models.pick_dtype(config.precision)

    # The trained model; for LoRA the base with the adapter on top (the base is then the adapter switched off).
    model = _load_trained(config, tokenizer, dtype).to(device).eval()
    results = {"model": _score(model, "model", blocks, labels, positions, pairs, tokenizer, config, device, say)}
    if config.compare_with_base:
        if config.method == "lora":
            with model.disable_adapter():
                results["base"] = _score(model, "base", blocks, labels, positions, pairs, tokenizer, config, device, say)
        else:
            del model
            base = _load_base(config, tokenizer, dtype).to(device).eval()
            results["base"] = _score(base, "base", blocks, labels, positions, pairs, tokenizer, config, device, say)

    metrics = _headline(results)
    report = {
        "metrics": metrics,
        "model": results["model"],
        "base": results.get("base"),
        "baseModel": config.model.describe(),
        "method": config.method,
        "validationBlocks": len(blocks),
        "perplexityTokens": "completion" if labels is not None else "all",
        "bleuPairs": len(pairs) if "bleu" in config.metrics else 0,
        "samples": _samples(results),
        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    report_path = config.evaluation_dir / "report.json"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    say("saved", {"report": str(report_path), **metrics})
    log.info("Evaluated metrics=%s", metrics)
    return EvalReport(metrics, report, report_path, time.monotonic() - started)


def _score(model, name: str, blocks, labels, positions, pairs, tokenizer, config: EvalConfig, device,
           say: ProgressFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "perplexity" in config.metrics:
        ppl, nll, tokens = perplexity(model, blocks, config.batch_size, device, labels, positions)
        out.update(perplexity=ppl, loss=nll, tokens=tokens)
        say("perplexity", {"model": name, "perplexity": ppl})
    hyps = generate(model, tokenizer, [p for p, _ in pairs], config.max_new_tokens, config.batch_size, device) \
        if pairs else []
    out["samples"] = [{"prompt": p, "reference": r, "output": h}
                      for (p, r), h in list(zip(pairs, hyps, strict=True))[:SAMPLES_IN_REPORT]]
    if "bleu" in config.metrics:
        if pairs:
            import sacrebleu

            bleu = sacrebleu.corpus_bleu(hyps, [[r for _, r in pairs]])
            out.update(bleu=bleu.score, bleuSignature=str(bleu.format(signature=True)), bleuSamples=len(pairs))
            say("bleu", {"model": name, "bleu": bleu.score})
        else:
            out.update(bleu=None, bleuNote="no prompt/reference pairs in the validation split")
    return out


def _samples(results: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """Side by side for a person: each held-out prompt, its reference, the new model's and the base model's output
    (SAMPLES_IN_REPORT of them, each text cut to SAMPLE_CHARS characters)."""
    base = {s["prompt"]: s["output"] for s in (results.get("base") or {}).get("samples") or ()}
    out = []
    for s in results["model"].get("samples") or ():
        row = {"prompt": s["prompt"], "reference": s["reference"], "output": s["output"]}
        if s["prompt"] in base:
            row["baseOutput"] = base[s["prompt"]]
        out.append({k: v if len(v) <= SAMPLE_CHARS else v[: SAMPLE_CHARS - 1] + "\u2026" for k, v in row.items()})
    return out


@torch.no_grad()
def perplexity(model, blocks: list[list[int]], batch_size: int, device, labels: list[list[int]] | None = None,
               positions: list[list[int]] | None = None) -> tuple[float, float, int]:
    """exp(mean NLL) over every predicted token of every block (token-weighted, not a mean of block means); with
    `labels` (prepare's completion mask) only over the tokens whose label is not -100; with `positions` (packed
    documents) each document on its own, batched the way training batches them.
    Returns (perplexity, mean NLL, number of predicted tokens)."""
    collate = PackedCollator(pad_token_id=0)
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        rows = [{"input_ids": blocks[i],
                 **({"labels": labels[i]} if labels is not None else {}),
                 **({"position_ids": positions[i]} if positions is not None else {})}
                for i in range(start, min(start + batch_size, len(blocks))) if len(blocks[i]) >= 2]
        if not rows:
            continue
        batch = {k: v.to(device) for k, v in collate(rows).items()}
        ids, learned = batch["input_ids"], batch.pop("labels") != -100
        # No KV cache: with one, transformers ignores position ids as document boundaries (and perplexity needs none).
        logits = model(**batch, use_cache=False).logits  # [b, t, vocab]
        # Position t predicts token t+1: drop the last logit and the first target.
        logits, targets, weights = logits[:, :-1].float(), ids[:, 1:], learned[:, 1:].float()
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
        total_nll += float((nll * weights.reshape(-1)).sum())
        total_tokens += int(weights.sum())
    if total_tokens == 0:
        what = "completion tokens" if labels is not None else "blocks of at least 2 tokens"
        raise PipelineError(f"dataset/validation: no {what}; expected a non-empty validation split")
    mean = total_nll / total_tokens
    return math.exp(min(mean, 700.0)), mean, total_tokens


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, device) -> list[str]:
    """Greedy continuations of `prompts` (left-padded batches; prompts cut from the left to fit the context)."""
    context = _context_length(model)
    max_new_tokens = min(max_new_tokens, context // 2)
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[start: start + batch_size], return_tensors="pt", padding=True, truncation=True,
                        max_length=context - max_new_tokens, add_special_tokens=False).to(device)
        new = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new = new[:, enc["input_ids"].shape[1]:]  # [b, new tokens]: only what the model wrote
        outputs += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return outputs


def _context_length(model) -> int:
    config = model.config
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1024


def _load_trained(config: EvalConfig, tokenizer, dtype: torch.dtype):
    root = config.artifact_root
    if config.method == "full":
        if not (root / "model" / "config.json").exists():
            raise PipelineError(f"{root / 'model'}: no trained model; expected the output of the train stage")
        return models.load_pretrained_model(str(root / "model"), dtype)
    if not (root / "adapter" / "adapter_config.json").exists():
        raise PipelineError(f"{root / 'adapter'}: no adapter_config.json; expected the LoRA output of the train stage")
    from peft import PeftModel

    return PeftModel.from_pretrained(_load_base(config, tokenizer, dtype), str(root / "adapter"))


def _load_base(config: EvalConfig, tokenizer, dtype: torch.dtype):
    """The starting model: pretrained weights, or for scratch the same seeded initialisation training began from."""
    if config.model.is_scratch:
        return models.build_scratch_model(config.model, tokenizer, config.seed, dtype)
    path = models.resolve_model_dir(config.model, config.artifact_root / "cache")
    model = models.load_pretrained_model(path, dtype, **models.hub_kwargs(config.model))
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return model


def _read_pairs(path: Path, limit: int) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if len(pairs) >= limit:
                break
            row = json.loads(line)
            pairs.append((row["prompt"], row["reference"]))
    return pairs


def _headline(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The numbers a gate looks at, rounded for the termination message."""
    new, base = results["model"], results.get("base") or {}
    m: dict[str, Any] = {}
    if "perplexity" in new:
        m["perplexity"] = round(new["perplexity"], 4)
        m["validationTokens"] = new["tokens"]
        if "perplexity" in base:
            m["baselinePerplexity"] = round(base["perplexity"], 4)
            m["perplexityImprovement"] = round((base["perplexity"] - new["perplexity"]) / base["perplexity"], 4)
    if new.get("bleu") is not None:
        m["bleu"] = round(new["bleu"], 3)
        m["bleuSamples"] = new["bleuSamples"]
        if base.get("bleu") is not None:
            m["baselineBleu"] = round(base["bleu"], 3)
            m["bleuImprovement"] = round(new["bleu"] - base["bleu"], 3)
    return m
