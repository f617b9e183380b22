"""Starts and stops the local control plane: etcd, kube-apiserver, controller-manager, scheduler and kwok with
fake GPU nodes, as plain processes on 127.0.0.1, and on request a real node (containerd and a kubelet, realnode.py);
PKI, logs, pids and the kubeconfig live in one state directory.
"""

from __future__ import annotations

import base64
import collections
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from gptops.devcluster import processes, realnode
from gptops.devcluster.pki import Pki, issue_client_cert, write_pki
from gptops.devcluster.stages import NODE_LEASE_SECONDS, build_stages

BIN_ENV = "GPTOPS_CONTROLPLANE_BIN"
BUILD_SCRIPT = Path(__file__).resolve().parents[3] / "tools" / "build-controlplane.sh"
PROGRAMS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
SERVICE_CIDR = "10.0.0.0/24"
POD_CIDR = "10.244.0.0/16"
GPU_LABEL = "nvidia.com/gpu.present"
NODE_CAPACITY = {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "8"}
# What start() removes from a state directory before a fresh start; nothing else there is touched.
_STATE_ENTRIES = ("etcd", "pki", "logs", "state.json", "kubeconfig", "kwok.yaml", "realnode")
# kwok's annotation on the fake nodes; with a real node kwok manages only these, and leaves the real one to its kubelet.
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")


#: What the API server's audit log records: the requests of ServiceAccounts (an operator running as the chart's, for
#: one), verb and resource only; nothing of the control plane's own components or the admin user.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata", "userGroups": ["system:serviceaccounts"]}, {"level": "None"}],
}


def audit_log(directory: Path) -> Path:
    """The API server's audit log (JSON lines) in a dev cluster's state directory."""
    return Path(directory) / "logs" / "audit.log"


def audit_flags(directory: Path) -> list[str]:
    """kube-apiserver flags for the audit log, writing its policy into the state directory."""
    policy = Path(directory) / "logs" / "audit-policy.yaml"
    policy.parent.mkdir(parents=True, exist_ok=True)
    policy.write_text(yaml.safe_dump(AUDIT_POLICY))
    return [f"--audit-policy-file={policy}", f"--audit-log-path={audit_log(directory)}", "--audit-log-maxsize=100",
            "--audit-log-maxbackup=1"]


class DevClusterError(RuntimeError):
    """The dev cluster could not be built, started or stopped; the message says why."""


@dataclass(frozen=True)
class DevCluster:
    """A started dev cluster: its state directory, API server URL, programs and admin kubeconfig."""

    dir: Path
    server: str
    bin_dir: Path

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def pki(self) -> Pki:
        return Pki(self.dir / "pki")

    @property
    def logs(self) -> Path:
        return self.dir / "logs"


@dataclass(frozen=True)
class Component:
    """One recorded process of a dev cluster, as `status` reports it."""

    name: str
    pid: int
    program: str
    log: Path
    alive: bool


def default_dir() -> Path:
    """~/.cache/gptops/dev-cluster, following GPTOPS_CACHE and XDG_CACHE_HOME like tools/build-controlplane.sh."""
    xdg_cache = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    return Path(os.environ.get("GPTOPS_CACHE") or xdg_cache / "gptops") / "dev-cluster"


def find_binaries(kubelet: bool = False) -> Path:
    """The directory holding the control-plane programs (and the kubelet): $GPTOPS_CONTROLPLANE_BIN, else built by
    tools/."""
    programs = (*PROGRAMS, "kubelet") if kubelet else PROGRAMS
    if os.environ.get(BIN_ENV):
        bin_dir = Path(os.environ[BIN_ENV])
    elif BUILD_SCRIPT.exists():
        bin_dir = _build(kubelet)
    else:
        raise DevClusterError(f"set {BIN_ENV} to a directory with {', '.join(programs)}; there is no {BUILD_SCRIPT}")
    missing = [p for p in programs if not os.access(bin_dir / p, os.X_OK)]
    if missing:
        raise DevClusterError(f"{bin_dir} lacks {', '.join(missing)}")
    return bin_dir


def _build(kubelet: bool) -> Path:
    """Run tools/build-controlplane.sh (a no-op when built), echoing its progress, and return the bin dir it prints."""
    argv = ["bash", str(BUILD_SCRIPT), *(["--kubelet"] if kubelet else [])]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = collections.deque(maxlen=20)
    for line in proc.stderr:
        sys.stderr.write(line)
        last.append(line)
    out = proc.stdout.read().strip().splitlines()
    if proc.wait() != 0 or not out:
        raise DevClusterError(
            f"{BUILD_SCRIPT} failed (exit {proc.returncode}), so the control plane is not available:\n" + "".join(last)
        )
    return Path(out[-1])


def start(directory: Path, nodes: int = 2, die_with_parent: bool = False, real_node: bool = False) -> DevCluster:
    """Start a fresh cluster with state in `directory`; on failure stop what was started and raise DevClusterError.

    With `real_node`, also a real node (realnode.NODE_NAME); realnode.RealNodeUnavailable says why this host cannot.
    """
    directory = Path(directory).resolve()
    if any(c.alive for c in status(directory)):
        raise DevClusterError(f"a dev cluster already runs from {directory}; stop it with `gptops dev-cluster down`")
    if real_node:
        realnode.check_host()
    bin_dir = find_binaries(kubelet=real_node)
    directory.mkdir(parents=True, exist_ok=True)
    for entry in _STATE_ENTRIES:
        path = directory / entry
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    launcher = _Launcher(directory, bin_dir, die_with_parent)
    try:
        return launcher.run(nodes, real_node)
    except BaseException as err:
        stop(directory)
        if isinstance(err, (processes.StartError, OSError)):
            raise DevClusterError(str(err)) from err
        raise


def stop(directory: Path) -> list[str]:
    """Stop the recorded processes in reverse start order (SIGTERM, then SIGKILL); returns the names stopped."""
    stopped = []
    components = status(directory)
    for c in reversed(components):
        if c.alive:
            if c.name == "containerd":
                # The kubelet is gone by now; the Pods' containers would outlive containerd (their shims do).
                realnode.remove_containers()
            processes.stop(c.pid, c.program)
            stopped.append(c.name)
    if any(c.name == "kubelet" for c in components):
        realnode.unmount_under(realnode.KUBELET_ROOT, realnode.RUN_DIR)
        realnode.unroute_api_server()
    return stopped


def status(directory: Path) -> list[Component]:
    """The processes recorded in `directory`, in start order, and whether each still runs."""
    state = Path(directory) / "state.json"
    if not state.exists():
        return []
    return [
        Component(c["name"], c["pid"], c["program"], Path(c["log"]), processes.runs_program(c["pid"], c["program"]))
        for c in json.loads(state.read_text())["components"]
    ]


def stop_component(directory: Path, name: str) -> None:
    """Stop one recorded process (SIGTERM, then SIGKILL), as when it crashes or its machine restarts; its data
    directory, port and log stay for `start_component`."""
    component = _component(directory, name)
    if not component.alive:
        raise DevClusterError(f"{name} of the dev cluster in {directory} is not running")
    processes.stop(component.pid, component.program)


def start_component(directory: Path, name: str, timeout: float = 90) -> None:
    """Start a stopped process again with the arguments it was first started with (same ports, same data directory,
    its log appended to) and wait until it answers as at start-up; the new pid replaces the old in state.json."""
    directory = Path(directory).resolve()
    if _component(directory, name).alive:
        raise DevClusterError(f"{name} of the dev cluster in {directory} already runs")
    state_file = directory / "state.json"
    state = json.loads(state_file.read_text())
    record = next(c for c in state["components"] if c["name"] == name)
    if "args" not in record:
        raise DevClusterError(f"{state_file} records no arguments for {name}: a cluster started by an older "
                              "gptops; start it again with `gptops dev-cluster up`")
    log = Path(record["log"])
    pid = processes.spawn([record["program"], *record["args"]], log, record.get("dieWithParent", False))
    record["pid"] = pid
    state_file.write_text(json.dumps(state, indent=2))
    try:
        processes.wait_ready(name, pid, log, _readiness(directory, name, record["args"]), timeout)
    except processes.StartError as err:
        raise DevClusterError(str(err)) from err


def _component(directory: Path, name: str) -> Component:
    found = next((c for c in status(directory) if c.name == name), None)
    if found is None:
        raise DevClusterError(f"no {name} recorded in {Path(directory) / 'state.json'}; known: "
                              f"{', '.join(c.name for c in status(directory)) or 'none'}")
    return found


def _readiness(directory: Path, name: str, args: list[str]) -> Callable[[], bool]:
    """The check start-up used for `name`, rebuilt from its arguments."""
    flags = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
    if name == "etcd":
        return lambda: b'"health":"true"' in _http_get(f"{flags['advertise-client-urls']}/health")
    if name == "kube-apiserver":
        api = _Api(DevCluster(directory, f"https://127.0.0.1:{flags['secure-port']}", Path()))
        return lambda: api.get("/readyz") == b"ok"
    if name in ("kube-controller-manager", "kube-scheduler"):
        return lambda: _https_healthz(int(flags["secure-port"]))
    if name == "kwok":
        return lambda: _http_get(f"http://{flags['server-address']}/healthz") == b"ok"
    raise DevClusterError(f"unknown dev cluster component {name}; known: {', '.join(PROGRAMS)}")


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, user: str) -> Path:
    """Write a kubeconfig for `user` with the CA and client cert embedded."""

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "gptops-dev", "cluster": {"server": server, "certificate-authority-data": b64(ca)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}],
        "contexts": [{"name": "gptops-dev", "context": {"cluster": "gptops-dev", "user": user}}],
        "current-context": "gptops-dev",
    }
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class _Launcher:
    """Starts the processes one by one, recording each pid in state.json as soon as it exists."""

    def __init__(self, directory: Path, bin_dir: Path, die_with_parent: bool):
        self.dir = directory
        self.bin = bin_dir
        self.die_with_parent = die_with_parent
        self.components: list[dict] = []

    def run(self, nodes: int, real_node: bool) -> DevCluster:
        pki = write_pki(self.dir / "pki")
        etcd_port, peer_port = processes.free_port(), processes.free_port()
        etcd = f"http://127.0.0.1:{etcd_port}"
        wait_etcd = self._spawn("etcd", [
            "--name=gptops", f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls={etcd}", f"--advertise-client-urls={etcd}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=gptops=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync=true", "--log-level=warn",
        ], lambda: b'"health":"true"' in _http_get(f"{etcd}/health"))
        wait_etcd(30)

        api_port = processes.free_port()
        cluster = DevCluster(self.dir, f"https://127.0.0.1:{api_port}", self.bin)
        api = _Api(cluster)
        wait_apiserver = self._spawn("kube-apiserver", [
            f"--etcd-servers={etcd}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
            f"--tls-cert-file={pki.serving_cert}", f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}", f"--service-account-signing-key-file={pki.sa_key}",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true",
            # The default reconciler would publish 127.0.0.1 as the `kubernetes` Service's endpoint, which is invalid.
            "--endpoint-reconciler-type=none",
            *audit_flags(self.dir),
            # To a real node's kubelet (logs, exec, port-forward) as the admin, at the address written on its Node.
            f"--kubelet-client-certificate={pki.admin_cert}", f"--kubelet-client-key={pki.admin_key}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
        ], lambda: api.get("/readyz") == b"ok")
        wait_apiserver(90)

        kubeconfig = write_kubeconfig(
            cluster.kubeconfig, cluster.server, pki.ca_cert, pki.admin_cert, pki.admin_key, "admin"
        )
        kube_auth = [f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
                     f"--authorization-kubeconfig={kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1"]
        kcm_port, scheduler_port, kwok_port = (processes.free_port() for _ in range(3))
        kwok_config = self.dir / "kwok.yaml"
        kwok_config.write_text(yaml.safe_dump_all(build_stages(), sort_keys=False))
        # These three only need the API server, so they start together.
        waits = [
            self._spawn("kube-controller-manager", [
                *kube_auth, f"--secure-port={kcm_port}", "--controllers=*", "--use-service-account-credentials=false",
                f"--service-account-private-key-file={pki.sa_key}", f"--root-ca-file={pki.ca_cert}",
                f"--cluster-signing-cert-file={pki.ca_cert}", f"--cluster-signing-key-file={pki.ca_key}",
            ], lambda: _https_healthz(kcm_port)),
            self._spawn("kube-scheduler", [*kube_auth, f"--secure-port={scheduler_port}"],
                        lambda: _https_healthz(scheduler_port)),
            self._spawn("kwok", [
                f"--kubeconfig={kubeconfig}", f"--config={kwok_config}",
                "--manage-nodes-with-annotation-selector={}={}".format(*FAKE_NODE_ANNOTATION) if real_node
                else "--manage-all-nodes=true",
                f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}", f"--cidr={POD_CIDR}",
                f"--server-address=127.0.0.1:{kwok_port}",
            ], lambda: _http_get(f"http://127.0.0.1:{kwok_port}/healthz") == b"ok"),
        ]
        for wait in waits:
            wait(60)

        for i in range(nodes):
            api.post("/api/v1/nodes", build_fake_node(f"gpu-node-{i}"))
        _wait(lambda: _nodes_ready(api, nodes), 60, "the fake nodes to be Ready and untainted", self.dir)
        _wait(lambda: api.exists("/api/v1/namespaces/default/serviceaccounts/default"), 60,
              "the `default` ServiceAccount (the controller-manager's serviceaccount controller)", self.dir)
        if real_node:
            self._start_real_node(cluster, api, api_port)
        return cluster

    def _start_real_node(self, cluster: DevCluster, api: _Api, api_port: int) -> None:
        """containerd with the pause and busybox images imported, then a kubelet registered as a node, and the
        `kubernetes` Service's address routed to the API server for its Pods."""
        node_dir = self.dir / "realnode"
        node_dir.mkdir()
        realnode.unmount_under(realnode.KUBELET_ROOT, realnode.RUN_DIR)
        for path in (realnode.RUN_DIR / "containerd", realnode.RUN_DIR / "cni-ipam"):
            shutil.rmtree(path, ignore_errors=True)
        images = [realnode.build_pause_image(realnode.cache_dir()), realnode.build_busybox_image(realnode.cache_dir())]
        containerd = shutil.which("containerd")
        self._spawn("containerd", ["--config", str(realnode.write_containerd_config(node_dir))],
                    realnode.containerd_ready(), program=containerd)(60)
        # Containers recorded by an earlier run that ended without `down`: the kubelet would adopt them otherwise.
        realnode.remove_containers()
        node = realnode.RealNode(node_dir)
        for archive in images:
            node.import_image(archive)

        pki = cluster.pki
        cert, key = issue_client_cert(pki, f"system:node:{realnode.NODE_NAME}", ("system:nodes",))
        kubeconfig = write_kubeconfig(node_dir / "kubelet.kubeconfig", cluster.server, pki.ca_cert, cert, key,
                                      f"system:node:{realnode.NODE_NAME}")
        port, healthz_port = processes.free_port(), processes.free_port()
        config = realnode.write_kubelet_config(node_dir, pki.ca_cert, port, healthz_port)
        self._spawn("kubelet", [
            f"--config={config}", f"--kubeconfig={kubeconfig}", f"--hostname-override={realnode.NODE_NAME}",
            "--node-ip=127.0.0.1", f"--root-dir={realnode.KUBELET_ROOT}", f"--cert-dir={node_dir / 'pki'}",
            f"--node-labels={realnode.NODE_LABEL}=true",
        ], lambda: _http_get(f"http://127.0.0.1:{healthz_port}/healthz") == b"ok")(120)
        node_path = f"/api/v1/nodes/{realnode.NODE_NAME}"
        _wait(lambda: api.exists(node_path), 120, f"the kubelet to register {realnode.NODE_NAME}", self.dir)
        # The kubelet refuses a loopback node IP and so publishes no address; the API server reaches it (logs, exec,
        # port-forward) at the address written here, which the kubelet then leaves alone.
        api.patch_status(node_path, {"status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                                                                {"type": "Hostname", "address": realnode.NODE_NAME}]}})
        _wait(lambda: _node_ready(api, realnode.NODE_NAME), 120, f"the real node {realnode.NODE_NAME} to be Ready",
              self.dir)
        realnode.route_api_server(api_port, str(ipaddress.ip_network(SERVICE_CIDR)[1]))

    def _spawn(self, name: str, args: list[str], ready: Callable[[], bool],
               program: str | None = None) -> Callable[[float], None]:
        """Start one program (from the bin dir unless given) and record it; returns `wait(timeout)`, which polls
        `ready` until it holds."""
        program = program or str(self.bin / name)
        log = self.dir / "logs" / f"{name}.log"
        pid = processes.spawn([program, *args], log, self.die_with_parent)
        self.components.append({"name": name, "pid": pid, "program": program, "log": str(log), "args": args,
                                "dieWithParent": self.die_with_parent})
        (self.dir / "state.json").write_text(json.dumps({"components": self.components}, indent=2))
        return lambda timeout: processes.wait_ready(name, pid, log, ready, timeout)


def build_fake_node(name: str) -> dict:
    """A Node with GPU capacity that kwok (managing all nodes) keeps Ready."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                GPU_LABEL: "true",
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", FAKE_NODE_ANNOTATION[0]: FAKE_NODE_ANNOTATION[1]},
        },
        "status": {"capacity": NODE_CAPACITY, "allocatable": NODE_CAPACITY},
    }


def _node_ready(api: _Api, name: str) -> bool:
    node = json.loads(api.get(f"/api/v1/nodes/{name}"))
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))


def _nodes_ready(api: _Api, count: int) -> bool:
    ready = [
        n for n in json.loads(api.get("/api/v1/nodes"))["items"]
        if not n["spec"].get("taints")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
    ]
    return len(ready) >= count


def _wait(check, timeout: float, what: str, directory: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {c.name} ---\n{processes.tail(c.log, 10)}" for c in status(directory))
            raise DevClusterError(f"timed out after {timeout:.0f}s waiting for {what}; log tails:\n{logs}")
        time.sleep(0.2)


class _Api:
    """Just enough of the Kubernetes API for start-up, over HTTPS with the admin client cert."""

    def __init__(self, cluster: DevCluster):
        self.server = cluster.server
        self.pki = cluster.pki
        self._context: ssl.SSLContext | None = None

    def _ssl(self) -> ssl.SSLContext:
        if self._context is None:
            self._context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
            self._context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return self._context

    def _request(self, method: str, path: str, body: dict | None = None,
                 content_type: str = "application/json") -> bytes:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method,
                                     headers={"Content-Type": content_type})
        with urllib.request.urlopen(req, context=self._ssl(), timeout=5) as resp:
            return resp.read()

    def get(self, path: str) -> bytes:
        return self._request("GET", path)

    def post(self, path: str, body: dict) -> bytes:
        return self._request("POST", path, body)

    def patch_status(self, path: str, patch: dict) -> bytes:
        return self._request("PATCH", f"{path}/status", patch, "application/merge-patch+json")

    def exists(self, path: str) -> bool:
        try:
            self.get(path)
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return False
            raise
        return True


def _http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.read()


def _https_healthz(port: int) -> bool:
    """The controller-manager and scheduler serve /healthz on a self-signed cert; only the answer matters here."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=context, timeout=2) as resp:
        return resp.read() == b"ok"
