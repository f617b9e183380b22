"""`gptops status`: printer-column rows from FineTuneJob and GPTModel objects, and a clear error without a cluster."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

from gptops.status import age, finetunejob_rows, finetunejob_summary, gptmodel_rows, gptmodel_summary

NOW = dt.datetime(2026, 1, 2, 12, 0, tzinfo=dt.timezone.utc)


def test_age_like_kubectl():
    assert age("2026-01-02T11:59:15Z", NOW) == "45s"
    assert age("2026-01-02T11:00:00Z", NOW) == "1h"
    assert age("2025-12-30T12:00:00Z", NOW) == "3d"
    assert age(None, NOW) == "-"


def test_finetunejob_row_from_status():
    ftj = {"metadata": {"name": "qa", "namespace": "ml", "creationTimestamp": "2026-01-02T11:58:00Z"},
           "spec": {"model": {"name": "gm"}},
           "status": {"phase": "Promoted", "metrics": {"perplexity": 12.345, "baselinePerplexity": 40.0},
                      "conditions": [{"type": "Passed", "status": "True"}, {"type": "Promoted", "status": "True"}]}}
    (row,) = finetunejob_rows([ftj], NOW)
    assert row == {"NAMESPACE": "ml", "NAME": "qa", "MODEL": "gm", "PHASE": "Promoted", "PERPLEXITY": "12.35",
                   "BASELINE": "40.00", "PASSED": "True", "PROMOTED": "True", "AGE": "2m"}


def test_new_finetunejob_has_no_status_yet():
    (row,) = finetunejob_rows([{"metadata": {"name": "x"}, "spec": {"model": {"name": "gm"}}}], NOW)
    assert (row["PHASE"], row["PERPLEXITY"], row["PASSED"]) == ("Pending", "-", "-")


def test_gptmodel_row_from_status():
    gm = {"metadata": {"name": "gm", "namespace": "ml"}, "spec": {"serving": {"replicas": 2}},
          "status": {"servingRevision": "qa", "previousRevision": "pre", "readyReplicas": 1,
                     "endpoint": "http://gm.ml.svc:8000/v1"}}
    (row,) = gptmodel_rows([gm], NOW)
    assert row["SERVING"] == "qa" and row["PREVIOUS"] == "pre" and row["READY"] == "1/2"
    assert row["ENDPOINT"] == "http://gm.ml.svc:8000/v1"


def test_json_has_the_objects_own_field_names_and_types():
    ftj = {"metadata": {"name": "qa", "namespace": "ml", "creationTimestamp": "2026-01-02T11:58:00Z"},
           "spec": {"model": {"name": "gm"}},
           "status": {"phase": "Promoted", "metrics": {"perplexity": 12.345}, "artifacts": {"revision": "0123456789"},
                      "conditions": [{"type": "Passed", "status": "True"}]}}
    assert finetunejob_summary(ftj) == {
        "namespace": "ml", "name": "qa", "model": "gm", "phase": "Promoted", "metrics": {"perplexity": 12.345},
        "revision": "0123456789", "conditions": {"Passed": "True"}, "creationTimestamp": "2026-01-02T11:58:00Z"}
    gm = {"metadata": {"name": "gm", "namespace": "ml"}, "spec": {"serving": {"replicas": 2}},
          "status": {"servingRevision": "qa", "readyReplicas": 1}}
    summary = gptmodel_summary(gm)
    assert (summary["servingRevision"], summary["readyReplicas"], summary["replicas"]) == ("qa", 1, 2)
    assert summary["endpoint"] is None  # null, not "-"


def test_without_a_cluster_the_cli_says_so_in_one_line(tmp_path):
    env = {"KUBECONFIG": str(tmp_path / "missing"), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    gptops = Path(sys.executable).parent / "gptops"
    done = subprocess.run([str(gptops), "status", "-o", "json"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot list gptops resources:")
    assert "Traceback" not in done.stderr
    assert not done.stdout or json.loads(done.stdout) is None
