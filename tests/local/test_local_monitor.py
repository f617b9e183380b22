"""Live evaluation against a real local endpoint: `gptops run` trains a tiny GPT (tokenizer trained on the spot) and
promotes it, `transformers serve` serves it on 127.0.0.1, and `gptops monitor` evaluates it through the OpenAI API
against the numbers it was promoted with, reading a real Prometheus exposition of vLLM's prompt-length histogram.
The good model is not flagged; a deliberately worse model behind the same endpoint, with live prompts far longer than
the dataset's, is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gptops import serve

pytestmark = pytest.mark.slow

GPTOPS = str(Path(sys.executable).parent / "gptops")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
FILLERS = ["please", "tell me", "quick question", "hello", "hi there", "say", "now", "ok", "friend", "so", "well",
           "hey", "one more", "again", "kindly", "yo", "listen", "tell us", "dear model", "right"]


def rows(fillers):
    return [{"prompt": f"{f}, what color is the sky? answer:", "completion": "the sky is blue."} for f in fillers]


def write_jsonl(path: Path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module")
def promoted(tmp_path_factory) -> tuple[Path, Path]:
    """(spec, runs dir) after `gptops run` promoted a tiny GPT that answers every question with the same sentence."""
    work = tmp_path_factory.mktemp("monitor")
    write_jsonl(work / "train.jsonl", rows(FILLERS[:14]))
    write_jsonl(work / "held-out.jsonl", rows(FILLERS[14:]))  # prompts the model never saw
    docs = [
        {"apiVersion": "gptops.io/v1alpha1", "kind": "GPTModel", "metadata": {"name": "colors"},
         "spec": {"source": {"scratch": {"layers": 2, "heads": 2, "hidden": 64, "contextLength": 64,
                                         "tokenizer": {"vocabSize": 400}}},
                  "monitoring": {"dataset": {"source": {"local": {"path": "held-out.jsonl"}}},
                                 "metrics": ["perplexity", "bleu"], "tolerance": 0.3, "maxNewTokens": 8,
                                 "inputDrift": {"psiThreshold": 0.2, "minRequests": 10}}}},
        {"apiVersion": "gptops.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "colors-qa"},
         "spec": {"model": {"name": "colors"},
                  "dataset": {"source": {"local": {"path": "train.jsonl"}}, "format": "prompt-completion",
                              "validationSplit": 0.2},
                  "training": {"maxSteps": 150, "learningRate": 0.01, "batchSize": 8},
                  "evaluation": {"metrics": ["perplexity", "bleu"], "bleu": {"maxNewTokens": 8}, "promote": True}}},
    ]
    spec = work / "colors.yaml"
    spec.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    runs = work / "runs"
    done = subprocess.run([GPTOPS, "run", str(spec), "--runs-dir", str(runs), "--no-serve", "-o", "json"], env=ENV,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    [job] = json.loads(done.stdout)["finetunejobs"]
    assert job["metrics"]["bleu"] >= 90, job["metrics"]  # it learned its one answer
    return spec, runs


def served_dir(runs: Path) -> Path:
    from gptops.local.state import ModelState

    return Path(ModelState.load(runs, "colors").serving_artifact)


def worse_model(good: Path, out: Path) -> Path:
    """The same architecture and tokenizer with untrained (seeded random) weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(good)).save_pretrained(out)
    AutoTokenizer.from_pretrained(good).save_pretrained(out)
    return out


def monitor(spec: Path, runs: Path, endpoint: str, metrics_url: str) -> tuple[int, dict]:
    done = subprocess.run([GPTOPS, "monitor", str(spec), "--runs-dir", str(runs), "--endpoint", endpoint,
                           "--metrics-url", metrics_url, "-o", "json"], env=ENV, capture_output=True, text=True,
                          timeout=600)
    try:
        return done.returncode, json.loads(done.stdout)
    except ValueError:
        pytest.fail(f"no JSON (exit {done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")


def test_a_worse_model_behind_the_same_endpoint_is_flagged_and_the_good_one_is_not(promoted, tmp_path) -> None:
    if not serve.transformers_serve_available():
        pytest.skip("transformers serve is not installed")
    from prometheus_client import CollectorRegistry, Histogram, start_http_server
    from transformers import AutoTokenizer

    spec, runs = promoted
    good = served_dir(runs)
    # vLLM's prompt-length histogram, served over HTTP on 127.0.0.1 as a vLLM Pod serves it.
    registry = CollectorRegistry()
    prompt_tokens = Histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", ["model_name"],
                              buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000), registry=registry)
    metrics_port = serve.free_port()
    metrics_server, _ = start_http_server(metrics_port, addr="127.0.0.1", registry=registry)
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    port = serve.free_port()
    tokenizer = AutoTokenizer.from_pretrained(good)
    try:
        # Live traffic like the dataset: its prompts, five times each.
        for r in rows(FILLERS[14:]) * 5:
            prompt_tokens.labels(model_name="colors").observe(len(tokenizer(r["prompt"])["input_ids"]))
        server = serve.start(serve.ServeSpec(model_dir=good, served_name="colors", port=port),
                             engine="transformers", log=tmp_path / "good.log", workdir=tmp_path / "good",
                             ready_timeout=300, threads=1)
        try:
            code, report = monitor(spec, runs, server.base_url, metrics_url)
        finally:
            server.stop()
        assert code == 0 and report["drifted"] is False, report
        assert report["atPromotion"]["bleu"] >= 90 and report["live"]["bleu"] >= 0.7 * report["atPromotion"]["bleu"]
        assert report["liveRequests"] == 30 and report["inputPsi"] < 0.05
        assert "perplexity" not in report["live"]  # transformers serve returns no prompt log-probabilities
        assert any("perplexity not measured" in n for n in report["notes"])

        # The same endpoint now serves untrained weights, and live prompts got much longer.
        for _ in range(30):
            prompt_tokens.labels(model_name="colors").observe(400)
        worse = worse_model(good, tmp_path / "worse")
        server = serve.start(serve.ServeSpec(model_dir=worse, served_name="colors", port=port),
                             engine="transformers", log=tmp_path / "worse.log", workdir=tmp_path / "worse-serve",
                             ready_timeout=300, threads=1)
        try:
            assert server.base_url == f"http://127.0.0.1:{port}/v1"
            code, report = monitor(spec, runs, server.base_url, metrics_url)
        finally:
            server.stop()
    finally:
        metrics_server.shutdown()
    assert code == 3 and report["drifted"] is True, report
    assert report["live"]["bleu"] < 0.7 * report["atPromotion"]["bleu"]
    assert any(r.startswith("bleu ") and "worse than" in r for r in report["reasons"]), report["reasons"]
    assert report["liveRequests"] == 30  # only the requests since the previous run
    assert report["inputPsi"] > 0.2 and any(r.startswith("input PSI") for r in report["reasons"])
