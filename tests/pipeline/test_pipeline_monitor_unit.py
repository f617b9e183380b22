"""The monitor stage's pure parts: the prompt-length histogram read from a real Prometheus exposition (the shape vLLM
serves), live requests since the last run (a restarted Pod counts from zero), the PSI, and perplexity from echoed
prompt log-probabilities."""

import json
import math

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from gptops.pipeline.monitor import (
    bin_counts,
    histogram_buckets,
    live_counts,
    population_stability_index,
    prompt_nll,
)

BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def exposition(lengths, model="support-bot"):
    """vLLM's histogram as prometheus_client writes it: name vllm:request_prompt_tokens, labels model_name."""
    registry = CollectorRegistry()
    h = Histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", ["model_name"],
                  buckets=BUCKETS, registry=registry)
    for n in lengths:
        h.labels(model_name=model).observe(n)
    return generate_latest(registry).decode()


def test_the_histogram_is_read_cumulative_by_bucket():
    buckets = histogram_buckets(exposition([3, 3, 15, 700]) + "# other metrics are ignored\nfoo_total 1\n")
    assert buckets[repr(5.0)] == 2 and buckets[repr(20.0)] == 3 and buckets["+Inf"] == 4
    assert histogram_buckets("foo_total 1\n") == {}


def test_live_requests_since_the_last_run_and_a_restarted_pod():
    url_a, url_b = "http://10.0.0.1:8000/metrics", "http://10.0.0.2:8000/metrics"
    earlier = {url_a: histogram_buckets(exposition([3] * 5)), url_b: histogram_buckets(exposition([3] * 9))}
    now = {url_a: histogram_buckets(exposition([3] * 5 + [15] * 4)),  # 4 new requests of 11-20 tokens
           url_b: histogram_buckets(exposition([700] * 2))}  # restarted: counts fell, both requests are new
    counts, bounds = live_counts(now, earlier)
    assert sum(counts) == 6
    assert counts[bounds.index(20.0)] == 4 and counts[bounds.index(1000.0)] == 2
    assert sum(live_counts(now, None)[0]) == 11  # no earlier run: everything since the Pods started


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift():
    bounds = [float(b) for b in BUCKETS] + [math.inf]
    reference = bin_counts([4, 8, 15, 15, 30, 40] * 10, bounds)
    assert population_stability_index(reference, reference) == pytest.approx(0.0)
    same_shape = bin_counts([4, 8, 15, 15, 30, 40] * 3, bounds)
    assert population_stability_index(same_shape, reference) == pytest.approx(0.0)
    longer = bin_counts([150, 300, 400] * 10, bounds)
    assert population_stability_index(longer, reference) > 5
    with pytest.raises(ValueError, match="need counts"):
        population_stability_index([0.0] * len(bounds), reference)


def test_perplexity_counts_only_the_completion_tokens_of_the_echo():
    # "Q: hi A: yes" echoed as 4 tokens; the first has no log-probability; the completion starts at character 6.
    logprobs = {"tokens": ["Q:", " hi", " A:", " yes"], "token_logprobs": [None, -2.0, -1.0, -0.5],
                "text_offset": [0, 2, 5, 8]}
    assert prompt_nll(logprobs, 0, 12) == (3.5, 3)
    assert prompt_nll(logprobs, 6, 12) == (0.5, 1)
    assert prompt_nll(None, 0, 12) == (0.0, 0)  # a server that returns no log-probabilities


def _gptmodel(**monitoring):
    return json.dumps({"kind": "GPTModel", "metadata": {"name": "tiny", "namespace": "ml"},
                       "spec": {"source": {"huggingface": {"repo": "sshleifer/tiny-gpt2"}}, **monitoring}})


def test_the_monitor_stage_reports_bad_input_as_a_result_naming_the_field(tmp_path, capsys, monkeypatch):
    from gptops.api.stageresult import parse_stage_result
    from gptops.pipeline.__main__ import main

    monkeypatch.setenv("GPTOPS_TERMINATION_LOG", str(tmp_path / "termination-log"))
    assert main(["monitor", "--endpoint", "http://127.0.0.1:9/v1", "--model-spec-json", _gptmodel()]) == 1
    result = parse_stage_result((tmp_path / "termination-log").read_text(), stage="monitor")
    assert result is not None and not result.ok and result.message.startswith("spec.monitoring: not set")

    data = tmp_path / "held-out.jsonl"
    data.write_text(json.dumps({"prompt": "2 + 2 =", "completion": "4"}) + "\n")
    monitoring = {"monitoring": {"dataset": {"source": {"local": {"path": str(data)}}}, "metrics": ["bleu"]}}
    # Nothing listens on port 9 of 127.0.0.1: the result names the endpoint.
    assert main(["monitor", "--endpoint", "http://127.0.0.1:9/v1", "--model-spec-json", _gptmodel(**monitoring)]) == 1
    result = parse_stage_result((tmp_path / "termination-log").read_text(), stage="monitor")
    assert not result.ok and "http://127.0.0.1:9/v1/completions: ConnectError" in result.message
