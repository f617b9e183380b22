"""`gptops status` against the local control plane: the quickstart applied as it is, a status as the operator
would write it, and the tables and JSON a person or a script reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
GPTOPS = str(Path(sys.executable).parent / "gptops")


def test_status_lists_the_quickstart_resources(control_plane, namespace):
    control_plane.install_crds()
    control_plane.kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples" / "quickstart" / "quickstart.yaml"))
    control_plane.kubectl("patch", "finetunejob", "pydoc-qa", "-n", namespace, "--subresource=status",
                          "--type=merge", "-p", json.dumps({"status": {
                              "phase": "Promoted", "metrics": {"perplexity": 75.15, "baselinePerplexity": 527.56}}}))

    def status(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([GPTOPS, "status", *args], env=control_plane.env,
                              capture_output=True, text=True, timeout=120)

    done = status("-n", namespace, "-o", "json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    ftjs = {r["name"]: r for r in doc["finetunejobs"]}
    assert set(ftjs) == {"pydoc-pretrain", "pydoc-qa"}
    assert (ftjs["pydoc-qa"]["phase"], ftjs["pydoc-qa"]["metrics"]) == \
        ("Promoted", {"perplexity": 75.15, "baselinePerplexity": 527.56})  # numbers, not strings
    assert ftjs["pydoc-pretrain"]["model"] == "pydoc-gpt"
    assert [r["name"] for r in doc["gptmodels"]] == ["pydoc-gpt"]

    table = status("-A")  # to a pipe, no COLUMNS: whole names all the same
    assert table.returncode == 0, table.stderr
    assert "…" not in table.stdout
    assert "FineTuneJobs" in table.stdout and "GPTModels" in table.stdout
    assert namespace in table.stdout and "pydoc-qa" in table.stdout and "75.15" in table.stdout
