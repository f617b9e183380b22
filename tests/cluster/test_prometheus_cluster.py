"""A real Prometheus (built from Go modules by tools/build-prometheus.sh) scrapes the operator's /metrics during a run
on the real control plane, loads the chart's alert rules, and answers every dashboard query and every alert
expression through its HTTP API: each parses, each rule evaluates without error, each query over the operator's own
series returns data, and the FineTuneJob-failed alert fires for the run the test fails."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, start_http_server

from operator_kit import GOOD, Cluster, free_port, wait_for

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "gptops" / "files" / "prometheus-rules.yaml"
DASHBOARD = ROOT / "charts" / "gptops" / "files" / "grafana-dashboard.json"
VARIABLES = {"$__rate_interval": "1m", "$namespace": ".*", "$model": ".*"}
#: Series another part of the system feeds: vLLM's own (a vLLM server, not in this test), and the monitor Job's
#: gptops_live_* (recorded when live evaluation runs). Their queries must parse; data is not expected here.
FED_ELSEWHERE = ("vllm:", "gptops_live_")

MODEL = "scraped"
GPTMODEL = {
    "apiVersion": "gptops.io/v1alpha1", "kind": "GPTModel", "metadata": {"name": MODEL},
    "spec": {"source": {"huggingface": {"repo": "sshleifer/tiny-gpt2"}},
             "artifacts": {"pvc": {"claimName": "gptops-artifacts"}},
             "serving": {"replicas": 1, "resources": {"gpus": 1}}},
}


def finetunejob(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "gptops.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name},
        "spec": {"model": {"name": MODEL}, "startFrom": "source",
                 "dataset": {"source": {"pvc": {"claimName": "gptops-artifacts", "path": "data.jsonl"}}},
                 "training": {"method": "full", "resources": {"gpus": 0}},
                 "evaluation": {"thresholds": {"maxPerplexity": 100}, "promote": True}},
    }


class Prometheus:
    """A prometheus process on 127.0.0.1 and its HTTP API."""

    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url, self.process, self.log = url, process, log

    def get(self, path: str, **params: str) -> dict[str, Any]:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=30) as response:
                return json.load(response)
        except urllib.error.HTTPError as err:  # a bad query answers 400 with the parser's error in the body
            return json.load(err)

    def query(self, expr: str) -> dict[str, Any]:
        return self.get("/api/v1/query", query=expr)


@pytest.fixture
def prometheus(prometheus_bin: Path, tmp_path: Path):
    """Prometheus scraping this process's metrics registry (what the operator serves on /metrics) every second."""
    metrics_port, port = free_port(), free_port()
    server, thread = start_http_server(metrics_port, addr="127.0.0.1", registry=REGISTRY)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "gptops",
                            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = tmp_path / "prometheus.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(prometheus_bin / "prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT)
    prom = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_for(lambda: process.poll() is None and _ready(prom), "Prometheus to be ready", timeout=60)
        yield prom
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        server.shutdown()
        thread.join(timeout=10)


def _ready(prom: Prometheus) -> bool:
    try:
        with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, query) of every dashboard panel, with Grafana's variables as Grafana would send them."""
    out = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            out.append((panel["title"], expr))
    return out


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def finish(k: Cluster, run: str, stage: str, ok: bool = True, **result: Any) -> None:
    k.complete_stage(run, stage, ok=ok, **result)


def test_prometheus_scrapes_a_run_and_answers_every_dashboard_query_and_alert(k: Cluster, operator,
                                                                                prometheus: Prometheus) -> None:
    k.apply(GPTMODEL, finetunejob("good"), finetunejob("broken"))
    for stage in ("prepare", "train", "evaluate"):
        finish(k, "good", stage, metrics=GOOD if stage == "evaluate" else None, digest="sha256:w")
    finish(k, "broken", "prepare", ok=False, message="no column 'text' in data.jsonl")
    k.wait_condition("ftj", "broken", "Failed", "True", timeout=120)
    wait_for(lambda: ((k.get("gptmodel", MODEL) or {}).get("status") or {}).get("servingRevision") == "good",
             "the passed run to be served", timeout=120)

    # Prometheus has scraped the outcome: the failed run by phase, the promotion.
    ns = k.ns
    wait_for(lambda: prometheus.query(f'gptops_finetunejobs{{namespace="{ns}", phase="Failed"}} == 1')["data"]["result"],
             "the failed run to be scraped", timeout=60)
    wait_for(lambda: prometheus.query(f'gptops_promotions_total{{namespace="{ns}", model="{MODEL}"}} >= 1')
             ["data"]["result"], "the promotion to be scraped", timeout=60)

    def unanswered() -> tuple[list[str], list[str]]:
        empty, failed = [], []
        for title, expr in dashboard_queries():
            answer = prometheus.query(expr)
            if answer.get("status") != "success":
                failed.append(f"{title}: {expr}: {answer.get('error')}")
            elif not answer["data"]["result"] and not any(prefix in expr for prefix in FED_ELSEWHERE):
                empty.append(f"{title}: {expr}")
        return empty, failed

    # A rate needs two scrapes of a series: allow some seconds of them before the answers count.
    deadline = time.monotonic() + 30
    while (answers := unanswered()) != ([], []) and time.monotonic() < deadline:
        time.sleep(1)
    empty, failed = answers
    for rule in alert_rules():
        answer = prometheus.query(rule["expr"])
        if answer.get("status") != "success":
            failed.append(f"{rule['alert']}: {answer.get('error')}")
    assert not failed, "queries Prometheus refused:\n" + "\n".join(failed)
    assert not empty, "queries over the operator's series that returned nothing:\n" + "\n".join(empty)

    # Prometheus loaded every alert of the chart and evaluates each without error.
    def evaluated() -> list[dict[str, Any]] | None:
        groups = prometheus.get("/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules) else None

    rules = wait_for(evaluated, "every rule to be evaluated", timeout=60)
    assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}
    assert all(r["health"] == "ok" and not r.get("lastError") for r in rules), rules

    # The failed run raises its alert, end to end.
    def firing() -> list[dict[str, Any]]:
        return [a for a in prometheus.get("/api/v1/alerts")["data"]["alerts"]
                if a["labels"].get("alertname") == "GptopsFineTuneJobFailed" and a["labels"].get("namespace") == ns
                and a["state"] == "firing"]

    alert = wait_for(firing, "GptopsFineTuneJobFailed to fire", timeout=60)[0]
    assert alert["annotations"]["summary"] == f"1 FineTuneJob(s) failed in namespace {ns}"
