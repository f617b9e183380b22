"""The local control plane is real: the scheduler, Job, Deployment and garbage-collector controllers, RBAC and
kwok's fake GPU nodes act on what kubectl creates.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from gptops.devcluster.cluster import GPU_LABEL, write_kubeconfig
from gptops.devcluster.pki import Pki, issue_client_cert
from gptops.devcluster.stages import EXIT_CODE_ANNOTATION, RESULT_ANNOTATION
from waiting import wait_for

pytestmark = pytest.mark.cluster


def gpu_job(name: str, annotations: dict[str, str], gpus: int = 1) -> str:
    return yaml.safe_dump({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": annotations},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "train",
                        "image": "registry.example/trainer:1",
                        "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                    }],
                },
            },
        },
    })


def job_pod(control_plane, namespace: str, job: str) -> dict:
    pods = control_plane.kubectl("get", "pods", "-n", namespace, "-l", f"job-name={job}", "-o", "json").stdout
    items = json.loads(pods)["items"]
    return items[0] if items else {}


def terminated(pod: dict) -> dict:
    return pod["status"]["containerStatuses"][0]["state"]["terminated"]


def condition(pod: dict, kind: str) -> dict:
    return next(c for c in pod["status"]["conditions"] if c["type"] == kind)


def test_gpu_job_runs_to_completion_with_its_result_as_termination_message(control_plane, namespace):
    result = json.dumps({"stage": "train", "loss": 1.25})
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=gpu_job("train", {RESULT_ANNOTATION: result}))

    control_plane.kubectl("wait", "-n", namespace, "job/train", "--for=condition=Complete", "--timeout=60s")

    pod = job_pod(control_plane, namespace, "train")
    assert pod["status"]["phase"] == "Succeeded"
    state = terminated(pod)
    assert (state["exitCode"], state["reason"], state["message"]) == (0, "Completed", result)
    node = json.loads(control_plane.kubectl("get", "node", pod["spec"]["nodeName"], "-o", "json").stdout)
    assert node["metadata"]["labels"][GPU_LABEL] == "true"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"


def test_job_whose_pod_exits_non_zero_fails(control_plane, namespace):
    annotations = {RESULT_ANNOTATION: "out of memory", EXIT_CODE_ANNOTATION: "1"}
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=gpu_job("oom", annotations))

    control_plane.kubectl("wait", "-n", namespace, "job/oom", "--for=condition=Failed", "--timeout=60s")

    pod = job_pod(control_plane, namespace, "oom")
    assert pod["status"]["phase"] == "Failed"
    state = terminated(pod)
    assert (state["exitCode"], state["reason"], state["message"]) == (1, "Error", "out of memory")


def test_pod_keeps_running_until_a_result_is_annotated(control_plane, namespace):
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=gpu_job("serve", {}))
    pod = wait_for(
        lambda: (p := job_pod(control_plane, namespace, "serve")) and p["status"].get("phase") == "Running" and p,
        "the Job's pod to run",
    )
    assert "running" in pod["status"]["containerStatuses"][0]["state"]
    assert condition(pod, "Ready")["status"] == "True"

    name = pod["metadata"]["name"]
    control_plane.kubectl("annotate", "pod", name, "-n", namespace, f"{RESULT_ANNOTATION}=done")
    control_plane.kubectl("wait", "-n", namespace, "job/serve", "--for=condition=Complete", "--timeout=60s")
    assert terminated(job_pod(control_plane, namespace, "serve"))["message"] == "done"


def test_pod_asking_for_more_gpus_than_a_node_has_stays_unscheduled(control_plane, namespace):
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=gpu_job("greedy", {}, gpus=9))
    pod = wait_for(lambda: job_pod(control_plane, namespace, "greedy"), "the Job's pod")

    control_plane.kubectl(
        "wait", "-n", namespace, f"pod/{pod['metadata']['name']}", "--for=condition=PodScheduled=False", "--timeout=30s"
    )
    pod = job_pod(control_plane, namespace, "greedy")
    scheduled = condition(pod, "PodScheduled")
    assert scheduled["reason"] == "Unschedulable" and "nvidia.com/gpu" in scheduled["message"]


def test_deployment_becomes_available_and_its_deletion_removes_its_pods(control_plane, namespace):
    control_plane.kubectl("create", "deployment", "web", "-n", namespace, "--image=nginx:1.27", "--replicas=2")

    control_plane.kubectl("wait", "-n", namespace, "deployment/web", "--for=condition=Available", "--timeout=60s")
    deployment = json.loads(control_plane.kubectl("get", "deployment/web", "-n", namespace, "-o", "json").stdout)
    assert deployment["status"]["availableReplicas"] == 2

    control_plane.kubectl("delete", "deployment/web", "-n", namespace)
    wait_for(
        lambda: control_plane.kubectl("get", "pods", "-n", namespace, "-l", "app=web", "-o", "name").stdout == "",
        "the garbage collector and kwok to remove the Deployment's pods",
        timeout=60,
    )


def test_deleting_an_owner_removes_its_dependents(control_plane, namespace):
    control_plane.kubectl("create", "configmap", "owner", "-n", namespace)
    uid = control_plane.kubectl("get", "configmap/owner", "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}],
        },
    }
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(dependent))

    control_plane.kubectl("delete", "configmap/owner", "-n", namespace)
    control_plane.kubectl("wait", "-n", namespace, "configmap/dependent", "--for=delete", "--timeout=60s")


SETTINGS_MANIFEST = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  labels:
    app.kubernetes.io/managed-by: gptops
data:
  learningRate: "3e-4"
  prompt: |
    Hello,
    world
"""


def test_apply_then_get_round_trips_a_manifest(control_plane, namespace, tmp_path: Path):
    path = tmp_path / "settings.yaml"
    path.write_text(SETTINGS_MANIFEST)

    control_plane.kubectl("apply", "-n", namespace, "-f", str(path))
    got = json.loads(control_plane.kubectl("get", "configmap/settings", "-n", namespace, "-o", "json").stdout)

    manifest = yaml.safe_load(SETTINGS_MANIFEST)
    assert got["data"] == {"learningRate": "3e-4", "prompt": "Hello,\nworld\n"} == manifest["data"]
    assert got["metadata"]["labels"] == manifest["metadata"]["labels"]
    assert got["metadata"]["namespace"] == namespace


def test_user_without_rbac_rights_is_refused_until_bound(control_plane, namespace, tmp_path: Path):
    pki = Pki(control_plane.dir / "pki")
    cert, key = issue_client_cert(pki, "alice")
    server = yaml.safe_load(control_plane.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    alice = write_kubeconfig(tmp_path / "alice.kubeconfig", server, pki.ca_cert, cert, key, "alice")

    def alice_lists_pods():
        return control_plane.kubectl("--kubeconfig", str(alice), "get", "pods", "-n", namespace, check=False)

    refused = alice_lists_pods()
    assert refused.returncode != 0
    assert 'User "alice" cannot list resource "pods"' in refused.stderr

    control_plane.kubectl("create", "rolebinding", "alice-view", "-n", namespace, "--clusterrole=view", "--user=alice")
    wait_for(lambda: alice_lists_pods().returncode == 0, "alice's RoleBinding to take effect")


def test_api_client_and_helm_work_against_the_cluster(control_plane):
    from kubernetes import client

    with control_plane.api_client() as api:
        nodes = client.CoreV1Api(api).list_node(label_selector=f"{GPU_LABEL}=true").items
    assert len(nodes) == 2

    helm = [str(control_plane.bin_dir / "helm"), "version", "--short"]
    version = subprocess.run(helm, env=control_plane.env, capture_output=True, text=True)
    assert version.stdout.startswith("v3.22.0")
