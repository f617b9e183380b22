"""Starting from a served LoRA revision (startFrom: serving): the run starts from base + adapter merged, not from the
bare base the adapter was trained on."""

from __future__ import annotations

import json
import random

import pytest
from conftest import ftj_spec
from pipeline_corpus import ANIMALS, COLOURS, NAMES, PLACES

from gptops.pipeline import configs_from_spec, run_evaluate, run_prepare, run_train


def _new_sentences(path):
    """Sentences of a template the base never saw, in words its tokenizer knows: something for an adapter to learn."""
    rng = random.Random(3)
    docs = {f"the {rng.choice(COLOURS)} {rng.choice(ANIMALS)} of {rng.choice(NAMES)} sleeps in {rng.choice(PLACES)} "
            f"and the {rng.choice(COLOURS)} one too." for _ in range(600)}
    path.write_text("\n".join(sorted(docs)) + "\n")
    return path


def test_a_run_started_from_a_lora_adapter_starts_from_the_merged_model(tmp_path, trained_run):
    base_dir = trained_run["root"] / "model"  # the tiny trained GPT plays the pretrained model
    model_spec = {"source": {"local": {"path": str(base_dir)}}}
    data = _new_sentences(tmp_path / "new.txt")
    lora_spec = ftj_spec(data, training={"method": "lora", "maxSteps": 20, "learningRate": 1e-2,
                                         "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
                         evaluation={"metrics": ["perplexity"]})
    lora = configs_from_spec(lora_spec, model_spec, tmp_path / "lora")
    run_prepare(lora.prepare)
    run_train(lora.train)
    served = run_evaluate(lora.evaluate).metrics
    assert served["perplexity"] < 0.9 * served["baselinePerplexity"]  # the adapter is worth starting from
    adapter = tmp_path / "lora" / "adapter"

    # What the operator does for startFrom: serving: the adapter directory as --start-model.
    spec = ftj_spec(data, training={"maxSteps": 5, "learningRate": 1e-3}, evaluation={"metrics": ["perplexity"]})
    configs = configs_from_spec(spec, model_spec, tmp_path / "next", start_model=str(adapter))
    run_prepare(configs.prepare)
    report = run_train(configs.train)
    metrics = run_evaluate(configs.evaluate).metrics

    merged = tmp_path / "next" / "cache" / "merged-start-model"
    assert (merged / "config.json").exists() and (merged / "model.safetensors").exists()
    assert json.loads((merged / "gptops-merged.json").read_text())["adapter"] == str(adapter)
    assert report.base_model == str(merged)
    # The starting point evaluates as the served revision did (same data), not as the base under it.
    assert metrics["baselinePerplexity"] == pytest.approx(served["perplexity"], rel=1e-3)
    assert metrics["baselinePerplexity"] != pytest.approx(served["baselinePerplexity"], rel=1e-3)


def test_a_served_lora_revision_in_the_gptmodel_status_starts_from_its_adapter(tmp_path, corpus_file):
    model = {"spec": {"source": {"local": {"path": "/models/base"}}},
             "status": {"servingRevision": "ft1", "servingArtifact": "/models/base", "servingAdapter": "/runs/ft1/adapter"}}
    configs = configs_from_spec(ftj_spec(corpus_file), model, tmp_path / "run")
    assert configs.train.model.location == "/runs/ft1/adapter"
    model["status"].pop("servingAdapter")
    assert configs_from_spec(ftj_spec(corpus_file), model, tmp_path / "run").train.model.location == "/models/base"
