"""The chart's alerts (charts/gptops/files/prometheus-rules.yaml) pass `promtool check rules` and their unit tests
(rules_test.yaml: each alert fires when it should, with its labels and text, and stays quiet otherwise), and the
PrometheusRule the chart renders carries exactly that file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE.parents[1] / "charts" / "gptops" / "files" / "prometheus-rules.yaml"


def promtool(bin_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(bin_dir / "promtool"), *args], capture_output=True, text=True, timeout=300, cwd=HERE)


def test_the_rules_are_valid(prometheus_bin: Path) -> None:
    done = promtool(prometheus_bin, "check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 7 rules found" in done.stdout + done.stderr


def test_every_alert_fires_when_it_should_and_only_then(prometheus_bin: Path) -> None:
    done = promtool(prometheus_bin, "test", "rules", "rules_test.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_unit_test() -> None:
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    tested = {t["alertname"] for case in yaml.safe_load((HERE / "rules_test.yaml").read_text())["tests"]
              for t in case.get("alert_rule_test", [])}
    assert alerts == tested
