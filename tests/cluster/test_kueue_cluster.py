"""Kueue decides when stage Jobs start: Kueue's own controller manager (built from Go modules by tools/build-kueue.sh,
webhooks on) runs against the local control plane beside the real Job controller and kwok; a ClusterQueue of 8 GPUs
holds FineTuneJobs that want more, and they start in order as earlier ones finish."""

from __future__ import annotations

import copy
import datetime
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from argocd_health import health
from operator_kit import GOOD, Cluster, example
from waiting import wait_for

pytestmark = pytest.mark.cluster

SKIP_ENV = "GPTOPS_SKIP_KUEUE"
QUEUE = "gpus"
TRAIN_GPUS = 6  # two runs training at once would need 12 of the queue's 8
RUNS = ("run-a", "run-b", "run-c")
FLAVOR_LABEL = "nvidia.com/gpu.present"  # on the dev cluster's GPU nodes: the flavor's node label


@pytest.fixture(scope="module")
def kueue(control_plane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Kueue running for this module's tests; its webhook configurations are removed before it stops, so the tests
    after this module meet an API server without them."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: the Kueue tests are skipped")
    from gptops.devcluster import kueue as kueue_mod

    try:
        kueue_dir = kueue_mod.find_kueue()
    except kueue_mod.KueueError as err:
        pytest.skip(f"Kueue could not be built, so its tests do not run: {err}")
    try:
        running = kueue_mod.start(kueue_dir, tmp_path_factory.mktemp("kueue"), control_plane.kubeconfig,
                                  control_plane.kubectl_path, die_with_parent=True)
    except kueue_mod.KueueError as err:
        pytest.fail(f"Kueue did not start: {err}", pytrace=False)
    try:
        yield running
    finally:
        kueue_mod.stop(running, control_plane.kubeconfig, control_plane.kubectl_path)


@pytest.fixture
def quota(kueue, k: Cluster) -> Iterator[str]:
    """A ResourceFlavor, a ClusterQueue of 8 GPUs and the LocalQueue `gpus` in the test's namespace, as a user
    writes them (docs/fleet.md); removed after the test while Kueue still runs (they carry its finalizers)."""
    flavor, cluster_queue = f"{k.ns}-gpu", f"{k.ns}-cq"
    k.apply(
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": flavor},
         "spec": {"nodeLabels": {FLAVOR_LABEL: "true"}}},
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": cluster_queue},
         "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": k.ns}},
                  "queueingStrategy": "BestEffortFIFO",
                  "resourceGroups": [{"coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                                      "flavors": [{"name": flavor, "resources": [
                                          {"name": "cpu", "nominalQuota": "64"},
                                          {"name": "memory", "nominalQuota": "1Ti"},
                                          {"name": "nvidia.com/gpu", "nominalQuota": "8"}]}]}]}},
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue", "metadata": {"name": QUEUE},
         "spec": {"clusterQueue": cluster_queue}},
    )
    k.wait_condition("localqueue", QUEUE, "Active", "True")
    yield cluster_queue
    k.kubectl("delete", "finetunejobs,jobs", "--all", "--timeout=60s", check=False)
    wait_for(lambda: not workloads(k), "the Workloads to go with their Jobs", 60)
    k.kubectl("delete", "localqueue", QUEUE, "--timeout=30s", check=False)
    k.cp.kubectl("delete", "clusterqueue", cluster_queue, "--timeout=30s", check=False)
    k.cp.kubectl("delete", "resourceflavor", flavor, "--timeout=30s", check=False)


def run(name: str) -> dict[str, Any]:
    doc = copy.deepcopy(example("finetunejob.yaml"))
    doc["metadata"]["name"] = name
    doc["spec"]["training"]["resources"]["gpus"] = TRAIN_GPUS
    return doc


def train_job(k: Cluster, name: str) -> dict[str, Any] | None:
    return k.stage_job(name, "train")


def workloads(k: Cluster) -> list[dict[str, Any]]:
    return json.loads(k.kubectl("get", "workloads.kueue.x-k8s.io", "-o", "json").stdout)["items"]


def workload_of(k: Cluster, job: dict[str, Any]) -> dict[str, Any] | None:
    """Kueue's Workload for a Job (owned by it)."""
    uid = job["metadata"]["uid"]
    return next((w for w in workloads(k) if any(
        ref.get("uid") == uid for ref in w["metadata"].get("ownerReferences", []))), None)


def pending_in_kueue(k: Cluster, name: str) -> dict[str, Any]:
    """Wait until Kueue has looked at the run's train Job and keeps it waiting: its Workload has QuotaReserved=False
    (Kueue's message says why); returns the Workload."""
    def check():
        job = train_job(k, name)
        wl = workload_of(k, job) if job else None
        cond = next((c for c in ((wl or {}).get("status") or {}).get("conditions", [])
                     if c["type"] == "QuotaReserved"), None)
        return cond is not None and cond["status"] == "False" and wl
    return wait_for(check, f"Kueue to keep the train Job of {name} pending", 60)


def admitted(k: Cluster, name: str) -> bool:
    job = train_job(k, name)
    return bool(job) and job["spec"].get("suspend") is False


def next_second(after: str) -> bool:
    """True once the clock is past the second of the timestamp `after` (Kueue orders by creation time, in seconds)."""
    at = datetime.datetime.fromisoformat(after.replace("Z", "+00:00"))
    return datetime.datetime.now(datetime.timezone.utc) >= at + datetime.timedelta(seconds=1)


def test_runs_wait_in_the_queue_and_start_in_order_as_quota_frees(k: Cluster, operator, quota: str) -> None:
    model = example("gptmodel.yaml")
    model["spec"]["scheduling"] = {"queueName": QUEUE}  # the default of every run of this model
    k.apply(model, *(run(name) for name in RUNS))

    # Prepare needs no GPU: every prepare Job is queued, admitted, and runs.
    for name in RUNS:
        job = wait_for(lambda name=name: k.stage_job(name, "prepare"), f"the prepare Job of {name}")
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == QUEUE
    # The train Jobs are created one second apart, so that Kueue's order (creation time) is theirs.
    for name in RUNS:
        k.complete_stage(name, "prepare")
        created = wait_for(lambda name=name: train_job(k, name), f"the train Job of {name}")
        if name != RUNS[0]:  # created suspended; the first may already be admitted (unsuspended) when this reads it
            assert created["spec"]["suspend"] is True
        wait_for(lambda created=created: next_second(created["metadata"]["creationTimestamp"]), "the next second",
                 5, 0.05)

    # 6 of 8 GPUs go to the first; the others wait, and say so.
    wait_for(lambda: admitted(k, "run-a"), "Kueue to admit the train Job of run-a")
    for name in ("run-b", "run-c"):
        workload = pending_in_kueue(k, name)
        queued = wait_for(lambda name=name: (c := k.condition("ftj", name, "Trained")).get("reason") == "Queued" and c,
                          f"{name} Trained=False Queued")
        assert f"queued in Kueue LocalQueue {QUEUE}" in queued["message"]
        assert (k.get("ftj", name) or {})["status"]["phase"] == "Queued"
        assert not k.items("pods", f"job-name={train_job(k, name)['metadata']['name']}")  # no Pod before admission
        assert workload["spec"]["queueName"] == QUEUE
    state, message = health("finetunejob", k.get("ftj", "run-b"))
    assert state == "Progressing" and f"queued in Kueue LocalQueue {QUEUE}" in message
    printed = k.kubectl("get", "ftj", "run-b").stdout
    assert "Queued" in printed.splitlines()[1]
    assert not admitted(k, "run-b") and not admitted(k, "run-c")

    # Kueue admitted run-a onto its flavor: the node label it injected stays (the operator never updates a Job).
    first = train_job(k, "run-a")
    assert first["spec"]["template"]["spec"].get("nodeSelector", {}).get(FLAVOR_LABEL) == "true"
    k.wait_condition("ftj", "run-a", "Trained", "False")
    wait_for(lambda: k.condition("ftj", "run-a", "Trained").get("reason") == "JobRunning", "run-a training")

    # run-a finishes training: run-b gets its GPUs, run-c still waits (2 free GPUs, run-a's evaluation takes 1).
    k.complete_stage("run-a", "train")
    wait_for(lambda: admitted(k, "run-b"), "Kueue to admit the train Job of run-b after run-a trained")
    pending_in_kueue(k, "run-c")
    assert not admitted(k, "run-c")
    wait_for(lambda: (k.get("ftj", "run-b") or {}).get("status", {}).get("phase") == "Training", "run-b Training")
    assert (k.get("ftj", "run-c") or {})["status"]["phase"] == "Queued"

    k.complete_stage("run-b", "train")
    wait_for(lambda: admitted(k, "run-c"), "Kueue to admit the train Job of run-c after run-b trained")
    k.complete_stage("run-c", "train")

    # Every run completes: the evaluate Jobs go through the queue too.
    for name in RUNS:
        k.complete_stage(name, "evaluate", metrics=GOOD)
    for name in RUNS:
        k.wait_condition("ftj", name, "Passed", "True", timeout=90)
    # The same Job ran to the end with what Kueue set on it: the operator neither replaced nor reverted it.
    last = train_job(k, "run-a")
    assert last["metadata"]["uid"] == first["metadata"]["uid"]
    assert last["spec"]["template"]["spec"]["nodeSelector"][FLAVOR_LABEL] == "true"
