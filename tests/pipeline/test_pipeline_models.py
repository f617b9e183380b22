"""Other starting points and data shapes: llama from scratch, full fine-tuning of a pretrained model, unpacked data."""

from __future__ import annotations

import json

from conftest import TINY_MODEL, ftj_spec
from transformers import AutoConfig

from gptops.pipeline import configs_from_spec, run_evaluate, run_prepare, run_train


def test_llama_from_scratch(tmp_path, corpus_file):
    model = {"source": {"scratch": {"architecture": "llama", "layers": 2, "heads": 2, "hidden": 64,
                                    "contextLength": 64, "tokenizer": {"vocabSize": 400}}}}
    configs = configs_from_spec(ftj_spec(corpus_file, training={"maxSteps": 15}, evaluation={"metrics": ["perplexity"]}),
                                model, tmp_path / "run")
    run_prepare(configs.prepare)
    report = run_train(configs.train)
    assert report.final_loss < report.first_loss
    assert AutoConfig.from_pretrained(str(tmp_path / "run" / "model")).model_type == "llama"
    assert run_evaluate(configs.evaluate).metrics["perplexityImprovement"] > 0


def test_full_fine_tune_of_a_pretrained_model(tmp_path, trained_run, corpus_file):
    base = trained_run["root"] / "model"
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}:", "completion": f" alice has {i % 5} cats."}) + "\n"
                            for i in range(200)))
    spec = ftj_spec(data, dataset={"format": "prompt-completion", "preprocessing": {"blockSize": 32}},
                    training={"maxSteps": 15, "learningRate": 3e-3},
                    evaluation={"metrics": ["perplexity", "bleu"], "bleu": {"maxNewTokens": 8, "maxSamples": 8}})
    configs = configs_from_spec(spec, {"source": {"local": {"path": str(base)}}}, tmp_path / "run")
    assert configs.prepare.model.location == str(base)
    run_prepare(configs.prepare)
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").read_text() == (base / "tokenizer.json").read_text()
    run_train(configs.train)
    metrics = run_evaluate(configs.evaluate).metrics
    assert metrics["perplexity"] < metrics["baselinePerplexity"]
    assert metrics["bleu"] >= metrics["baselineBleu"]


def test_training_without_packing_pads_per_batch(tmp_path, corpus_file):
    spec = ftj_spec(corpus_file, dataset={"preprocessing": {"packing": False, "blockSize": 64}},
                    training={"maxSteps": 10}, evaluation={"metrics": ["perplexity"]})
    configs = configs_from_spec(spec, TINY_MODEL, tmp_path / "run")
    run_prepare(configs.prepare)
    report = run_train(configs.train)
    assert report.steps == 10 and report.final_loss < report.first_loss
    assert report.tokens < 10 * 8 * 64  # only real tokens are counted, not padding
    assert run_evaluate(configs.evaluate).metrics["perplexity"] > 1


def test_a_model_from_s3(tmp_path, trained_run, corpus_file, s3_endpoint):
    endpoint, s3 = s3_endpoint
    s3.create_bucket(Bucket="models")
    for f in (trained_run["root"] / "model").iterdir():
        s3.upload_file(str(f), "models", f"tiny/{f.name}")
    model = {"source": {"s3": {"uri": "s3://models/tiny", "endpointUrl": endpoint}}}
    spec = ftj_spec(corpus_file, training={"maxSteps": 5}, evaluation={"metrics": ["perplexity"]})
    configs = configs_from_spec(spec, model, tmp_path / "run")
    run_prepare(configs.prepare)
    report = run_train(configs.train)
    assert report.steps == 5
    assert (tmp_path / "run" / "cache" / "base-model" / "model.safetensors").exists()
    assert report.base_model == str(tmp_path / "run" / "cache" / "base-model")
