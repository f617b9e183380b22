"""The dev cluster's real node: a Job's Pod really runs there (containerd, runc, CNI, the locally built pause image)
from a locally imported image, under the operator's restricted security context, and the kubelet reports its
termination message."""

from __future__ import annotations

import ipaddress
import json
import time

import pytest
from gptops.builders.common import (
    RUN_AS_USER,
    container_security_context,
    pod_security_context,
)
from gptops.devcluster import realnode
from waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.realnode]

# What the stage-like container finds out and reports as its result: who it runs as, whether the root file system
# is writable, whether the mounted volume is, and whether the API server answers at the `kubernetes` Service (where
# in-cluster clients such as the operator look for it).
SCRIPT = """
bb=/bin/busybox
echo "started on $($bb hostname)"
root=false; $bb touch /written 2>/dev/null && root=true
vol=false; $bb touch /work/written && vol=true
api=false; echo | $bb nc -w 5 "$KUBERNETES_SERVICE_HOST" "$KUBERNETES_SERVICE_PORT" && api=true
printf '{"uid": %s, "gid": %s, "rootWritable": %s, "volumeWritable": %s, "apiServer": %s}' \
  "$($bb id -u)" "$($bb id -g)" "$root" "$vol" "$api" > /dev/termination-log
"""


def stage_like_job(name: str) -> dict:
    """A Job shaped like the operator's stage Jobs: restricted security context, read-only root, a scratch volume,
    the result in the termination message; placed on the real node."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {realnode.NODE_LABEL: "true"},
                    "tolerations": [realnode.TOLERATION],
                    "securityContext": pod_security_context(),
                    "volumes": [{"name": "work", "emptyDir": {}}],
                    "containers": [{
                        "name": "stage",
                        "image": realnode.BUSYBOX_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["/bin/sh", "-c", SCRIPT],
                        "securityContext": {**container_security_context(), "readOnlyRootFilesystem": True},
                        "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                    }],
                },
            },
        },
    }


def test_a_job_runs_as_a_real_pod_on_the_real_node(control_plane, real_node, namespace):
    # Pod Security "restricted" admits the Pod only with the operator's security context.
    control_plane.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(stage_like_job("stage")))

    deadline = time.monotonic() + 120
    while True:
        job = json.loads(control_plane.kubectl("get", "job", "stage", "-n", namespace, "-o", "json").stdout)
        done = {c["type"] for c in job["status"].get("conditions", []) if c["status"] == "True"}
        if done & {"Complete", "Failed"}:
            break
        assert time.monotonic() < deadline, f"the Job did not finish within 120s: {job['status']}"
        time.sleep(0.5)
    pods = json.loads(control_plane.kubectl("get", "pods", "-n", namespace, "-l", "job-name=stage", "-o",
                                            "json").stdout)["items"]
    assert len(pods) == 1
    pod = pods[0]
    assert done == {"Complete", "SuccessCriteriaMet"}, pod["status"]
    assert pod["spec"]["nodeName"] == realnode.NODE_NAME
    # The Pod had a network namespace from the CNI bridge, not a kwok-made address.
    assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(realnode.POD_SUBNET)
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0 and terminated["reason"] == "Completed"
    assert json.loads(terminated["message"]) == {
        "uid": RUN_AS_USER, "gid": RUN_AS_USER, "rootWritable": False, "volumeWritable": True, "apiServer": True,
    }
    # The API server reaches the kubelet: its container log comes back through it.
    log = control_plane.kubectl("logs", "-n", namespace, pod["metadata"]["name"]).stdout
    assert log.strip() == f"started on {pod['metadata']['name']}"


def test_the_real_node_is_tainted_and_holds_the_locally_built_images(control_plane, real_node):
    node = json.loads(control_plane.kubectl("get", "node", realnode.NODE_NAME, "-o", "json").stdout)
    assert node["spec"]["taints"] == [realnode.NODE_TAINT]
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")

    def held() -> set[str]:
        # The kubelet reports the images on its node status cycle: not yet (no field, or null) right after an image
        # came or went.
        status = json.loads(control_plane.kubectl("get", "node", realnode.NODE_NAME, "-o", "json").stdout)["status"]
        return {name for image in status.get("images") or [] for name in image["names"]}

    wait_for(lambda: {realnode.PAUSE_IMAGE, realnode.BUSYBOX_IMAGE} <= held(), "the real node to report the pause and "
             "busybox images in its status", timeout=120, interval=2)
