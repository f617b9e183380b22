"""What the builders make, created on a real control plane: the API server accepts every child, the "restricted"
Pod Security Standard admits their Pods, an Indexed training Job gets its Pods and rendezvous names, the vLLM
Deployment becomes Available on fake GPU nodes, and owner references let the garbage collector clean up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gptops.api import FineTuneJob, GPTModel
from gptops.builders import build_deployment, build_service, build_stage_children
from gptops.render import served_for_render
from waiting import wait_for

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]


def get(plane, namespace, *args):
    result = plane.kubectl("get", "-n", namespace, *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


@pytest.fixture
def restricted(control_plane, namespace):
    """The test namespace, enforcing the "restricted" Pod Security Standard, with a bound artifacts claim."""
    control_plane.install_crds()
    control_plane.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
                          "pod-security.kubernetes.io/warn=restricted")
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{namespace}-artifacts"},
          "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                   "hostPath": {"path": "/tmp/artifacts"},
                   "claimRef": {"namespace": namespace, "name": "gptops-artifacts"}}}
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "gptops-artifacts"},
           "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv["metadata"]["name"],
                    "resources": {"requests": {"storage": "1Gi"}}}}
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(pv))
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(pvc))
    yield namespace
    control_plane.kubectl("delete", "pv", pv["metadata"]["name"], "--wait=false", check=False)


def create(plane, namespace, obj):
    result = plane.kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj), check=False)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr  # e.g. "would violate PodSecurity restricted"


def test_children_are_accepted_run_and_are_garbage_collected(control_plane, restricted):
    ns = restricted
    gm_doc = yaml.safe_load((ROOT / "examples" / "gptmodel.yaml").read_text())
    ftj_doc = yaml.safe_load((ROOT / "examples" / "finetunejob.yaml").read_text())
    ftj_doc["spec"]["training"]["resources"] = {"gpus": 2, "nodes": 2}
    for doc in (gm_doc, ftj_doc):
        control_plane.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(doc))
    model = GPTModel.from_dict(get(control_plane, ns, "gm", "tiny-gpt2"))
    ftj = FineTuneJob.from_dict(get(control_plane, ns, "ftj", "tiny-gpt2-wiki"))
    assert model.metadata.uid and ftj.metadata.uid

    children = [c for stage in ("prepare", "train", "evaluate") for c in build_stage_children(ftj, model, stage)]
    children += [build_deployment(model, served_for_render(model, [ftj])), build_service(model)]
    for child in children:
        create(control_plane, ns, child)

    train = next(c["metadata"]["name"] for c in children if c["kind"] == "Job" and "-train-" in c["metadata"]["name"])
    pods = wait_for(lambda: (lambda items: items if len(items) == 2 else None)(
        get(control_plane, ns, "pods", "-l", f"job-name={train}")["items"]), "two training Pods", 90)
    assert sorted(p["spec"]["hostname"] for p in pods) == [f"{train}-0", f"{train}-1"]
    assert {p["spec"]["subdomain"] for p in pods} == {train}
    wait_for(lambda: all(p["spec"].get("nodeName")
                         for p in get(control_plane, ns, "pods", "-l", f"job-name={train}")["items"]),
             "training Pods scheduled on GPU nodes", 90)
    svc = get(control_plane, ns, "service", train)
    assert svc["spec"]["clusterIP"] == "None"
    # The node rank each Pod's torchrun gets: its completion index, through the downward API.
    for pod in pods:
        index = pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
        assert pod["spec"]["hostname"] == f"{train}-{index}"
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == \
            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    # A lost node: its Pod is replaced, counted against that index alone, and the Job runs on.
    lost = next(p for p in pods if p["spec"]["hostname"].endswith("-1"))
    control_plane.kubectl("delete", "pod", "-n", ns, lost["metadata"]["name"], "--wait=false")

    def replaced():
        items = get(control_plane, ns, "pods", "-l", f"job-name={train}")["items"]
        return next((p for p in items if p["spec"]["hostname"].endswith("-1")
                     and p["metadata"]["uid"] != lost["metadata"]["uid"]), None)
    again = wait_for(replaced, "a new Pod for index 1", 90)
    assert again["metadata"]["annotations"].get("batch.kubernetes.io/job-index-failure-count") == "1"
    job = get(control_plane, ns, "job", train)
    assert job["spec"]["backoffLimitPerIndex"] == 2 and job["spec"]["maxFailedIndexes"] == 0
    assert not any(c["type"] == "Failed" and c["status"] == "True" for c in job["status"].get("conditions", []))

    def available():
        dep = get(control_plane, ns, "deployment", "tiny-gpt2")
        conds = {c["type"]: c["status"] for c in dep.get("status", {}).get("conditions", [])}
        return conds.get("Available") == "True" and dep["status"].get("readyReplicas") == 1
    wait_for(available, "the vLLM Deployment to become Available", 90)

    control_plane.kubectl("delete", "ftj", "tiny-gpt2-wiki", "-n", ns)
    wait_for(lambda: get(control_plane, ns, "jobs")["items"] == [], "the stage Jobs to be garbage collected", 90)
    control_plane.kubectl("delete", "gm", "tiny-gpt2", "-n", ns)
    wait_for(lambda: get(control_plane, ns, "deployment", "tiny-gpt2") is None,
             "the Deployment to be garbage collected", 90)
