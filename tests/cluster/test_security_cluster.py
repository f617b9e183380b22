"""Security on the real control plane, through one whole lifecycle with the operator running as the chart's
ServiceAccount (a token for it, bound by the Role and ClusterRole that `helm template` renders), in a namespace that
enforces the "restricted" Pod Security Standard:

- every Pod the operator's children make is admitted: stage Jobs, a multi-node training Job, the vLLM Deployment,
  the monitor Job (a refused Pod shows as a FailedCreate event and no Pod);
- canary Secret values (S3 credentials, a Hugging Face token, the vLLM API key) appear in no log line, Event, status
  or child of the operator's;
- the chart grants nothing the operator did not use (from the API server's audit log), and it never reads Secrets.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gptops.devcluster.cluster import audit_log
from gptops.devcluster.stages import RESULT_ANNOTATION
from operator_kit import (
    GOOD,
    MODEL,
    RUN,
    Cluster,
    artifacts_volume,
    example,
    running_operator,
)
from waiting import wait_for

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "gptops"
CANARIES = {"s3-credentials": {"AWS_ACCESS_KEY_ID": "CANARYKEYID7Q2X", "AWS_SECRET_ACCESS_KEY": "canary-s3-secret-9f3k"},
            "hf-token": {"token": "hf_canaryTokenZ8w1"},
            "vllm-api-key": {"api-key": "sk-canary-api-key-44m"}}
WIDE = "wide-run"  # a second FineTuneJob: training on two nodes
MONITORING = {"dataset": {"source": {"configMap": {"name": "held-out", "key": "data.jsonl"}}},
              "intervalSeconds": 600, "metrics": ["perplexity"], "tolerance": 0.5, "action": "alert"}


@pytest.fixture
def chart_identity(control_plane, crds, namespace) -> Iterator[tuple[Cluster, Path, str, list[dict[str, Any]]]]:
    """The restricted namespace with the examples' volume and the canary Secrets; the chart's ServiceAccount and RBAC
    for it (rendered by helm); a kubeconfig with a token of that ServiceAccount. Yields (cluster, kubeconfig, user,
    rendered RBAC objects)."""
    k = Cluster(control_plane, namespace)
    control_plane.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
                          "pod-security.kubernetes.io/warn=restricted")
    for doc in artifacts_volume(namespace):
        control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    for name, data in CANARIES.items():
        k.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
                 "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}})
    release = f"s{namespace[-5:]}"
    rendered = subprocess.run([str(control_plane.bin_dir / "helm"), "template", release, str(CHART), "--namespace",
                               namespace, "--set", f"watchNamespaces={{{namespace}}}"],
                              capture_output=True, text=True, timeout=60, check=True).stdout
    rbac = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in
            ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")]
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(rbac))
    [account] = [d["metadata"]["name"] for d in rbac if d["kind"] == "ServiceAccount"]
    token = control_plane.kubectl("create", "token", account, "-n", namespace, "--duration=2h").stdout.strip()
    admin = yaml.safe_load(control_plane.kubeconfig.read_text())
    kubeconfig = control_plane.dir / f"{namespace}-operator.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "clusters": admin["clusters"],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": admin["clusters"][0]["name"], "user": account,
                                                    "namespace": namespace}}],
        "current-context": account}))
    yield k, kubeconfig, f"system:serviceaccount:{namespace}:{account}", rbac
    for doc in rbac:
        if doc["kind"].startswith("Cluster"):
            control_plane.kubectl("delete", doc["kind"], doc["metadata"]["name"], "--wait=false", check=False)


def _lifecycle(k: Cluster) -> None:
    """Two runs to promotion and rollout, an autoscaler added and removed, a monitor Job run and then stopped."""
    model = example("gptmodel.yaml")
    model["spec"]["source"]["huggingface"]["tokenSecretRef"] = {"name": "hf-token", "key": "token"}
    model["spec"]["serving"]["apiKeySecretRef"] = {"name": "vllm-api-key", "key": "api-key"}
    run = example("finetunejob.yaml")
    run["spec"]["dataset"]["source"] = {"s3": {"uri": "s3://corpora/wiki.jsonl",
                                               "credentialsSecretRef": {"name": "s3-credentials"}}}
    wide = json.loads(json.dumps(run))
    wide["metadata"]["name"] = WIDE
    wide["spec"]["training"]["resources"] = {"gpus": 1, "nodes": 2}
    wide["spec"]["evaluation"]["promote"] = False
    k.kubectl("create", "configmap", "held-out", "--from-literal=data.jsonl={\"text\": \"held out\"}")
    k.apply(model, run, wide)
    k.wait_condition("gptmodel", MODEL, "Ready", "True", timeout=180)
    for stage in ("prepare", "train"):
        k.complete_stage(RUN, stage)
    k.complete_stage(RUN, "evaluate", metrics=GOOD)
    k.wait_condition("ftj", RUN, "Promoted", "True", timeout=180)
    wait_for(lambda: "--enable-lora" in k.deployment_args(MODEL), "the promoted revision in the Deployment", 180)
    wait_for(lambda: k.condition("gptmodel", MODEL, "Progressing").get("reason") == "RolloutComplete",
             "the rollout of the promoted revision", 180)

    k.complete_stage(WIDE, "prepare")
    train = k.stage_job_name(WIDE, "train", timeout=180)
    wait_for(lambda: len(k.items("pods", f"job-name={train}")) == 2, "two Pods of the multi-node training Job", 180)

    k.kubectl("patch", "gptmodel", MODEL, "--type", "merge", "-p", json.dumps(
        {"spec": {"serving": {"autoscaling": {"minReplicas": 1, "maxReplicas": 2}}, "monitoring": MONITORING}}))
    wait_for(lambda: k.get("hpa", MODEL), "the autoscaler", 180)
    job = wait_for(lambda: next(iter(k.items("jobs", f"gptops.io/stage=monitor,gptops.io/model={MODEL}")), None),
                   "the monitor Job", 180)["metadata"]["name"]
    pod = wait_for(lambda: next(iter(k.items("pods", f"job-name={job}")), None), f"a Pod of Job {job}", 180)
    result = {"apiVersion": "gptops.io/stage-result/v1", "stage": "monitor", "ok": True, "message": "live: fine",
              "metrics": {"perplexity": 42.0, "liveRequests": 10}}
    k.kubectl("annotate", "pod", pod["metadata"]["name"], f"{RESULT_ANNOTATION}={json.dumps(result)}")
    wait_for(lambda: ((k.get("gptmodel", MODEL) or {}).get("status") or {}).get("monitoring", {}).get("lastRun"),
             "the monitor run in the GPTModel's status", 180)
    k.kubectl("patch", "gptmodel", MODEL, "--type", "json", "-p", json.dumps(
        [{"op": "remove", "path": "/spec/serving/autoscaling"}, {"op": "remove", "path": "/spec/monitoring"}]))
    wait_for(lambda: k.get("hpa", MODEL) is None, "the autoscaler to be deleted", 180)
    wait_for(lambda: not k.items("jobs", f"gptops.io/stage=monitor,gptops.io/model={MODEL}"),
             "the monitor Job to be deleted", 180)


def _used(user: str, plane: Any) -> set[tuple[str, str, str]]:
    """(apiGroup, resource[/subresource], verb) of every request `user` made, from the API server's audit log."""
    used = set()
    for line in audit_log(plane.dir).read_text().splitlines():
        event = json.loads(line)
        if event.get("user", {}).get("username") != user or "objectRef" not in event:
            continue
        ref = event["objectRef"]
        resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        used.add((ref.get("apiGroup", ""), resource, event["verb"]))
        if event["verb"] == "patch" and event.get("responseStatus", {}).get("code") == 201:
            used.add((ref.get("apiGroup", ""), resource, "create"))  # server-side apply created it: needs create
    return used


#: Grants of a feature this lifecycle leaves off, exercised by its own cluster test (as the admin): KEDA's
#: ScaledObjects, made where KEDA's CRD is installed (tests/cluster/test_fleet_cluster.py).
OFF_IN_THIS_LIFECYCLE = {("keda.sh", "scaledobjects", verb) for verb in ("get", "create", "patch", "delete")}


def _granted(rbac: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb)
            for doc in rbac if doc["kind"] in ("Role", "ClusterRole")
            for rule in doc["rules"] for group in rule["apiGroups"] for resource in rule["resources"]
            for verb in rule["verbs"]}


def test_a_lifecycle_as_the_charts_identity_is_restricted_leaks_no_secret_and_uses_every_grant(
        chart_identity, monkeypatch, control_plane) -> None:
    k, kubeconfig, user, rbac = chart_identity
    with running_operator(k, kubeconfig, monkeypatch) as runner:
        _lifecycle(k)

        # Pod Security "restricted": every Pod of every child was admitted.
        refused = [e["message"] for e in json.loads(k.kubectl("get", "events", "-o", "json").stdout)["items"]
                   if e["reason"] == "FailedCreate"]
        assert refused == []
        pods = json.loads(k.kubectl("get", "pods", "-o", "json").stdout)["items"]
        stages = {p["metadata"]["labels"].get("gptops.io/stage") for p in pods}
        assert {"prepare", "train", "evaluate"} <= stages  # the monitor Pod was seen before its Job went
        assert any(p["metadata"]["labels"].get("app.kubernetes.io/component") == "server" or
                   p["metadata"].get("ownerReferences", [{}])[0].get("kind") == "ReplicaSet" for p in pods)

        # No canary anywhere the operator writes or says something.
        seen = {"events": k.kubectl("get", "events", "-o", "json").stdout,
                "objects": k.kubectl("get", "gptmodels,finetunejobs,jobs,deployments,services,pods,replicasets,"
                                     "configmaps", "-o", "json").stdout}
    seen["operator log"] = runner.output  # complete once the operator has stopped
    for where, text in seen.items():
        for secret in CANARIES.values():
            for value in secret.values():
                assert value not in text and base64.b64encode(value.encode()).decode() not in text, where

    # Least privilege: every granted (group, resource, verb) was used; Secrets were never read.
    used = _used(user, control_plane)
    assert used, "no request of the operator's identity in the audit log"
    assert not {u for u in used if u[1] == "secrets"}
    denied = [line for line in runner.output.splitlines() if "forbidden" in line.lower()]
    assert denied == []
    assert OFF_IN_THIS_LIFECYCLE <= _granted(rbac)
    unused = sorted(_granted(rbac) - used - OFF_IN_THIS_LIFECYCLE)
    assert unused == [], f"the chart grants what a whole lifecycle never used: {unused}; used: {sorted(used)}"
