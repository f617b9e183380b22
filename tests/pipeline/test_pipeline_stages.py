"""The three stages end to end on a tiny scratch GPT: it learns, the files are where vLLM and evaluate look,
and the stage results say so."""

from __future__ import annotations

import json

from gptops.pipeline.result import render


def test_prepare_writes_packed_blocks_manifest_and_tokenizer(trained_run):
    root, report = trained_run["root"], trained_run["prepare"]
    from datasets import load_from_disk

    ds = load_from_disk(str(root / "dataset"))
    assert set(ds) == {"train", "validation"}
    assert all(len(ids) == 64 for ids in ds["train"]["input_ids"])  # packed: full blocks, no padding
    manifest = json.loads((root / "dataset" / "manifest.json").read_text())
    assert manifest["documents"] == {"read": 400, "kept": 400, "train": 360, "validation": 40}
    assert manifest["tokens"]["train"] >= 64 * manifest["blocks"]["train"]
    assert manifest["digest"].startswith("sha256:") and manifest["digest"] == report.digest
    assert (root / "tokenizer" / "tokenizer.json").exists()
    assert (root / "dataset" / "eval_pairs.jsonl").read_text().count("\n") == 40


def test_training_lowers_the_loss_and_saves_a_vllm_layout(trained_run):
    root, report = trained_run["root"], trained_run["train"]
    assert report.steps == 60
    assert report.final_loss < report.first_loss * 0.5
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (root / "model" / name).exists(), name
    assert (root / "checkpoints" / "checkpoint-60" / "trainer_state.json").exists()
    assert report.tokens_per_second > 0


def test_validation_perplexity_ends_far_below_the_starting_model(trained_run):
    report = trained_run["evaluate"]
    m = report.metrics
    assert m["perplexity"] < 0.2 * m["baselinePerplexity"]
    assert m["perplexityImprovement"] > 0.8
    assert m["bleu"] is not None and m["baselineBleu"] is not None and m["bleuSamples"] == 16
    saved = json.loads((trained_run["root"] / "eval" / "report.json").read_text())
    assert saved["metrics"] == m and saved["model"]["samples"]
    # For a person: each held-out prompt with its reference, the trained and the starting model's output side by side.
    samples = saved["samples"]
    assert 1 <= len(samples) <= 5
    assert all(set(s) == {"prompt", "reference", "output", "baseOutput"} for s in samples)
    assert [s["output"] for s in samples] == [s["output"] for s in saved["model"]["samples"]]
    assert samples != [dict(s, output=s["baseOutput"]) for s in samples]  # the two models wrote different things


def test_stage_results_fit_the_termination_message(trained_run):
    for stage in ("prepare", "train", "evaluate"):
        doc = json.loads(render(trained_run[stage].result()))
        assert doc["apiVersion"] == "gptops.io/stage-result/v1" and doc["stage"] == stage and doc["ok"] is True
    assert json.loads(render(trained_run["prepare"].result()))["digest"] == trained_run["prepare"].digest
    evaluated = json.loads(render(trained_run["evaluate"].result()))
    assert 1 <= len(evaluated["samples"]) <= 3 and all(len(s["output"]) <= 160 for s in evaluated["samples"])
