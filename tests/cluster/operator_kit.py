"""Helpers of the operator's cluster tests: kubectl in a namespace with parsed JSON (polling: tests/waiting.py), the
examples and their artifacts volume."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gptops.devcluster.stages import EXIT_CODE_ANNOTATION, RESULT_ANNOTATION
from waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
MODEL = "tiny-gpt2"
RUN = "tiny-gpt2-wiki"
GPTOPS = str(Path(sys.executable).parent / "gptops")
GOOD = {"perplexity": 42.0, "baselinePerplexity": 120.0, "bleu": 3.5, "baselineBleu": 1.0}


class Cluster:
    """kubectl in one namespace, with the JSON already parsed."""

    def __init__(self, control_plane: Any, namespace: str) -> None:
        self.cp, self.ns = control_plane, namespace

    def kubectl(self, *args: str, check: bool = True, input: str | None = None):
        return self.cp.kubectl("-n", self.ns, *args, check=check, input=input)

    def apply(self, *docs: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        result = self.kubectl("get", kind, name, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def items(self, kind: str, selector: str) -> list[dict[str, Any]]:
        return json.loads(self.kubectl("get", kind, "-l", selector, "-o", "json").stdout)["items"]

    def condition(self, kind: str, name: str, type_: str) -> dict[str, Any]:
        obj = self.get(kind, name) or {}
        return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_), {})

    def wait_condition(self, kind: str, name: str, type_: str, status: str, timeout: float = 60) -> dict[str, Any]:
        return wait_for(lambda: (c := self.condition(kind, name, type_)).get("status") == status and c,
                        f"{kind}/{name} {type_}={status}", timeout)

    def stage_job(self, run: str, stage: str) -> dict[str, Any] | None:
        """The newest Job of `stage` of FineTuneJob `run` (its name ends in the revision key), or None."""
        jobs = self.items("jobs", f"gptops.io/finetunejob={run},gptops.io/stage={stage}")
        return max(jobs, key=lambda j: (j["metadata"]["creationTimestamp"], j["metadata"]["name"]), default=None)

    def stage_job_name(self, run: str, stage: str, timeout: float = 60) -> str:
        """Wait for the stage's Job and return its name."""
        return wait_for(lambda: self.stage_job(run, stage), f"the {stage} Job of {run}", timeout)["metadata"]["name"]

    def complete_stage(self, run: str, stage: str, *, ok: bool = True, message: str = "",
                       metrics: dict[str, float] | None = None, digest: str = "sha256:0123") -> str:
        """Let kwok finish the stage's Pod with a StageResult as its termination message; returns the message."""
        job = self.stage_job_name(run, stage)
        pod = wait_for(lambda: next(iter(self.items("pods", f"job-name={job}")), None), f"a Pod of Job {job}")
        result = json.dumps({"apiVersion": "gptops.io/stage-result/v1", "stage": stage, "ok": ok,
                             "message": message or f"{stage} done", "metrics": metrics or {},
                             "artifacts": {}, "digest": digest})
        annotations = [f"{RESULT_ANNOTATION}={result}"] + ([] if ok else [f"{EXIT_CODE_ANNOTATION}=1"])
        self.kubectl("annotate", "pod", pod["metadata"]["name"], *annotations)
        return result

    def events(self, name: str) -> list[dict[str, Any]]:
        """The Events about the object called `name`."""
        items = json.loads(self.kubectl("get", "events", "-o", "json").stdout)["items"]
        return [e for e in items if e["involvedObject"]["name"] == name]

    def deployment_args(self, name: str) -> list[str]:
        dep = self.get("deployment", name) or {}
        return dep["spec"]["template"]["spec"]["containers"][0]["args"]


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())


def artifacts_volume(namespace: str) -> list[dict[str, Any]]:
    """The examples' artifacts claim, bound to a hostPath volume (there is no provisioner here)."""
    pv = f"{namespace}-artifacts"
    return [
        {"apiVersion": "v1", "kind": "PersistentVolume",
         "metadata": {"name": pv},
         "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany"],
                  "persistentVolumeReclaimPolicy": "Delete", "hostPath": {"path": f"/tmp/{pv}"},
                  "claimRef": {"namespace": namespace, "name": "gptops-artifacts"}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
         "metadata": {"name": "gptops-artifacts", "namespace": namespace},
         "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "10Gi"}},
                  "volumeName": pv, "storageClassName": ""}},
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_operator(k: Cluster, kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The operator as `kubeconfig`'s user, watching only this test's namespace, in a thread of this process."""
    from kopf.testing import KopfRunner

    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("GPTOPS_RESYNC_SECONDS", "2")
    monkeypatch.setenv("GPTOPS_WATCH_SERVER_TIMEOUT", "10")
    with KopfRunner(["run", "--standalone", "-n", k.ns, "-m", "gptops.handlers"], timeout=60) as runner:
        yield runner
        # Delete before the runner exits, and wait: nothing of ours may hang on a finalizer.
        k.kubectl("delete", "finetunejobs,gptmodels", "--all", "--timeout=30s")
    assert runner.exception is None, runner.output[-4000:]
    k.cp.kubectl("delete", "pv", f"{k.ns}-artifacts", "--wait=false", check=False)


class Operator:
    """One `gptops operator` process watching the test's namespace; its output goes to a file (a pipe nobody
    reads would block it)."""

    def __init__(self, control_plane: Any, namespace: str, log: Path) -> None:
        self.metrics_port, self.health_port = free_port(), free_port()
        self.log = log
        env = {**control_plane.env, "GPTOPS_RESYNC_SECONDS": "2", "GPTOPS_WATCH_SERVER_TIMEOUT": "10"}
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [GPTOPS, "operator", "--namespace", namespace, "--metrics-port", str(self.metrics_port),
                 "--health-port", str(self.health_port)], env=env, stdout=out, stderr=subprocess.STDOUT)

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no cleanup handler, no last status write."""
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=90)  # on a loaded machine a graceful stop has taken over 30 s
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        return self.proc.returncode

    def reconciles(self, kind: str) -> float:
        """gptops_reconcile_total{kind, result="ok"} as this process counts it (0 before it answers)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return 0.0
        found = re.search(rf'^gptops_reconcile_total\{{kind="{kind}",result="ok"\}} (\S+)$', text, re.M)
        return float(found.group(1)) if found else 0.0

    def wait_passes(self, kind: str, count: int, timeout: float = 60) -> None:
        """Wait until this operator has finished `count` more passes over objects of `kind` than now."""
        start = self.reconciles(kind)
        wait_for(lambda: self.reconciles(kind) >= start + count, f"{count} more {kind} passes", timeout)
