"""`gptops run` with evaluation.approval: manual, through the real command line: without a terminal a passed run
waits (exit 4) and shows its sample generations; --reject keeps it unserved; --approve serves it and the decision stays
with its revision; on a terminal the person is asked, with the samples on screen."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time

import pytest
import yaml
from test_local_run import ENV, GPTOPS, QUICKSTART, gptops_run, jobs, shrink, write_spec

pytestmark = pytest.mark.slow


@pytest.fixture
def manual_spec(tmp_path):
    docs = shrink(list(yaml.safe_load_all(QUICKSTART.read_text())))[:2]
    docs[1]["spec"]["evaluation"]["approval"] = "manual"
    return write_spec(tmp_path / "spec" / "manual.yaml", docs)


def test_a_manual_run_waits_is_rejected_or_approved_and_the_decision_stays_with_its_revision(manual_spec, tmp_path):
    runs = tmp_path / "runs"
    code, doc, _ = gptops_run(manual_spec, runs, "--no-serve")
    job = jobs(doc)["pydoc-pretrain"]
    assert code == 4, doc
    assert job["decision"] == "AwaitingApproval" and job["approval"] == "Pending" and not job["promoted"]
    assert "awaits approval" in job["notPromoted"] and "--approve" in job["notPromoted"]
    samples = job["samples"]
    assert 1 <= len(samples) <= 5
    assert all(s["prompt"] and s["reference"] and "output" in s and "baseOutput" in s for s in samples)
    assert not (runs / "_models" / "pydoc-gpt.json").exists()

    code, doc, _ = gptops_run(manual_spec, runs, "--no-serve", "--reject")
    assert code == 3 and jobs(doc)["pydoc-pretrain"]["decision"] == "Rejected"
    assert not (runs / "_models" / "pydoc-gpt.json").exists()

    code, doc, _ = gptops_run(manual_spec, runs, "--no-serve", "--approve")
    job = jobs(doc)["pydoc-pretrain"]
    assert code == 0 and job["decision"] == "Promoted" and job["approval"] == "Approved"
    assert (runs / "_models" / "pydoc-gpt.json").exists()

    # Without a flag the recorded decision of this revision holds; a new revision (another spec) is asked again.
    code, doc, _ = gptops_run(manual_spec, runs, "--no-serve")
    assert code == 0 and jobs(doc)["pydoc-pretrain"]["approval"] == "Approved"
    docs = list(yaml.safe_load_all(manual_spec.read_text()))
    docs[1]["spec"]["training"]["maxSteps"] = 20
    changed = write_spec(tmp_path / "spec" / "changed.yaml", docs)
    code, doc, _ = gptops_run(changed, runs, "--no-serve")
    assert code == 4 and jobs(doc)["pydoc-pretrain"]["approval"] == "Pending"


def test_on_a_terminal_the_person_is_asked_with_the_samples_on_screen(manual_spec, tmp_path):
    leader, follower = pty.openpty()
    proc = subprocess.Popen([GPTOPS, "run", str(manual_spec), "--runs-dir", str(tmp_path / "runs"), "--no-serve"],
                            stdin=follower, stdout=follower, stderr=follower, env={**ENV, "TERM": "xterm"},
                            close_fds=True)
    os.close(follower)
    screen, answered = "", False
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(leader, 65536).decode(errors="replace")
                except OSError:  # the process closed the terminal
                    break
                if not chunk:
                    break
                screen += chunk
            if not answered and "Serve it?" in screen:
                os.write(leader, b"y\r")
                answered = True
            if proc.poll() is not None and not ready:
                break
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    assert answered, screen[-3000:]
    assert "sample generations" in screen and "base model" in screen
    assert code == 0, screen[-3000:]
    assert "Promoted" in screen
    assert (tmp_path / "runs" / "_models" / "pydoc-gpt.json").exists()
