"""The chart's Grafana dashboard (charts/gptops/files/grafana-dashboard.json): every panel queries real series, ours
as the operator's prometheus_client registry defines them, vLLM's from its documented list; every query parses
(promtool, on the dashboard's queries as recording rules); the sections docs/monitoring.md describes are there."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from gptops import metrics

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "charts" / "gptops" / "files" / "grafana-dashboard.json"

#: vLLM's serving metrics (V1 engine, which the default image vllm/vllm-openai:v0.11.0 runs), as exposed on /metrics.
#: Source: vLLM's docs/design/metrics.md, "v1 Metrics" and the Grafana dashboard subset (docs.vllm.ai, Metrics design).
#: Counters are named as exposed (prometheus_client adds `_total`), histograms by their `_bucket` series.
VLLM_DOCUMENTED = {
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
    "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total",
    "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
    "vllm:e2e_request_latency_seconds_bucket", "vllm:request_queue_time_seconds_bucket",
    "vllm:request_prefill_time_seconds_bucket", "vllm:request_decode_time_seconds_bucket",
    "vllm:request_prompt_tokens_bucket", "vllm:request_generation_tokens_bucket",
}
#: Grafana's variables, as a query reaches Prometheus (the test's stand-ins).
VARIABLES = {"$__rate_interval": "1m", "$namespace": ".*", "$model": ".*", "${datasource}": ""}
SERIES = re.compile(r"\b((?:gptops_|vllm:)[a-zA-Z0-9_:]+)")


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def queries() -> list[str]:
    """Every query of every panel, with Grafana's variables replaced the way Grafana would."""
    out = []
    for panel in panels():
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            out.append(expr)
    return out


def registry_series() -> set[str]:
    """The sample names of every metric gptops.metrics defines (histograms by _bucket/_sum/_count, counters by
    _total), whether or not a series has been recorded yet."""
    names = set()
    for metric in vars(metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        base = metric._name
        names |= {"counter": {f"{base}_total"}, "histogram": {f"{base}_bucket", f"{base}_sum", f"{base}_count"},
                  "gauge": {base}}[metric._type]
    return names


def test_every_panel_queries_series_that_exist() -> None:
    ours, documented = registry_series(), VLLM_DOCUMENTED
    assert panels() and all(p["targets"] for p in panels())
    unknown = {name for q in queries() for name in SERIES.findall(q) if name not in ours | documented}
    assert not unknown, f"series neither in the operator's registry nor in vLLM's documented list: {unknown}"


def test_the_dashboard_has_every_section_and_metric_family() -> None:
    rows = [p["title"] for p in dashboard()["panels"] if p["type"] == "row"]
    assert rows == ["Runs", "Evaluation and promotion", "Live evaluation and drift", "Operator health", "vLLM serving"]
    used = {name for q in queries() for name in SERIES.findall(q)}
    for wanted in ("gptops_finetunejobs", "gptops_stage_duration_seconds_bucket", "gptops_evaluation_metric",
                   "gptops_promotions_total", "gptops_rollbacks_total", "gptops_live_metric",
                   "gptops_live_baseline_metric", "gptops_live_input_psi", "gptops_reconcile_errors_total",
                   "gptops_resync_timestamp_seconds", "vllm:e2e_request_latency_seconds_bucket",
                   "vllm:generation_tokens_total", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert wanted in used, wanted
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))


def test_every_query_parses(prometheus_bin: Path, tmp_path: Path) -> None:
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query_{i}", "expr": q}
                                                        for i, q in enumerate(queries())]}]}
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run([str(prometheus_bin / "promtool"), "check", "rules", "--lint=none", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("template", ["grafana-dashboard.yaml", "prometheusrule.yaml"])
def test_the_chart_templates_embed_the_files(template: str) -> None:
    text = (ROOT / "charts" / "gptops" / "templates" / template).read_text()
    assert ".Files.Get" in text and ("files/grafana-dashboard.json" in text or "files/prometheus-rules.yaml" in text)
