"""A real node beside the kwok ones: Debian's containerd (CRI) with our own config, state, root and socket, Debian's
CNI plugins (bridge + host-local, loopback), a pause image built from Kubernetes' own pause.c, and a kubelet built
from the same Kubernetes module as the control plane. Needs root. Never pulls: images are imported locally.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

K8S_VERSION = "v1.36.3"
PAUSE_VERSION = "3.10.2"  # build/pause/Makefile's TAG in that module
NODE_NAME = "real-node-0"
NODE_LABEL = "gptops.io/real-node"
# Pods reach the real node only when they tolerate this (and say so with a node selector), so a cluster with a real
# node still runs every other Pod on the kwok nodes.
NODE_TAINT = {"key": NODE_LABEL, "value": "true", "effect": "NoSchedule"}
TOLERATION = {"key": NODE_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
PAUSE_IMAGE = f"gptops.local/pause:{PAUSE_VERSION}"
DOCKER_ID_LABEL = "gptops.io/docker-id"  # on an image loaded from docker: the id it had there
BUSYBOX_IMAGE = "gptops.local/busybox:1.35"
POD_SUBNET = "10.245.0.0/24"  # the kwok nodes hand out 10.244.0.0/16
BRIDGE = "gptops0"
NAT_CHAIN = "GPTOPS-APISERVER"
CONTAINERD_ROOT = Path("/var/lib/gptops-containerd")
RUN_DIR = Path("/run/gptops")
SOCKET = RUN_DIR / "containerd" / "containerd.sock"
KUBELET_ROOT = Path("/var/lib/gptops-kubelet")
CNI_BIN_DIR = Path("/usr/lib/cni")
BUSYBOX = Path("/bin/busybox")
# Host programs, and the Debian package (tools/install-real-node.sh) that brings each.
HOST_PROGRAMS = {
    "containerd": "containerd", "containerd-shim-runc-v2": "containerd", "ctr": "containerd", "runc": "runc",
    "gcc": "gcc", "iptables": "iptables", "ip": "iproute2",
}
HOST_FILES = {CNI_BIN_DIR / "bridge": "containernetworking-plugins", CNI_BIN_DIR / "host-local":
              "containernetworking-plugins", CNI_BIN_DIR / "loopback": "containernetworking-plugins",
              BUSYBOX: "busybox-static", Path("/usr/lib/x86_64-linux-gnu/libc.a"): "libc6-dev"}


class RealNodeUnavailable(RuntimeError):
    """This host cannot run the real node (not root, a program missing, ...); the message says what is missing."""


@dataclass(frozen=True)
class RealNode:
    """A started real node: its name, the containerd socket and where its configs and logs are."""

    dir: Path
    name: str = NODE_NAME
    socket: Path = SOCKET

    def ctr(self, *args: str, input: bytes | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run `ctr` against our containerd in the Kubernetes namespace; raises CalledProcessError with stderr."""
        return subprocess.run(["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args], input=input,
                              capture_output=True, check=True, timeout=timeout)

    def import_image(self, archive: Path) -> None:
        """Import a docker/OCI image archive into containerd (where the kubelet finds it)."""
        self.ctr("images", "import", str(archive))

    def load_from_docker(self, *images: str) -> None:
        """`docker save IMAGE... | ctr images import -`: images built by docker become runnable on the node."""
        if shutil.which("docker") is None:
            raise RealNodeUnavailable("docker is not installed, so no image can be loaded from it")
        save = subprocess.Popen(["docker", "save", *images], stdout=subprocess.PIPE)
        try:
            subprocess.run(["ctr", "--address", str(self.socket), "--namespace", "k8s.io", "images", "import", "-"],
                           stdin=save.stdout, capture_output=True, check=True, timeout=3600)
        finally:
            save.stdout.close()
            if save.wait(timeout=60) != 0:
                raise RealNodeUnavailable(f"docker save {' '.join(images)} exited {save.returncode}")

    def ensure_images(self, *images: str) -> list[str]:
        """Load from docker each image that containerd lacks or holds in another build (docker's image id, kept as
        a label on containerd's image, tells); returns the ones loaded."""
        if shutil.which("docker") is None:
            raise RealNodeUnavailable("docker is not installed, so no image can be loaded from it")
        stale = []
        for image in images:
            inspect = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", image],
                                     capture_output=True, text=True, check=False, timeout=60)
            if inspect.returncode != 0:
                raise RealNodeUnavailable(f"docker has no image {image} (build it with `make images`)")
            docker_id = inspect.stdout.strip()
            listed = self.ctr("images", "list", f"name=={image}").stdout.decode()
            if f"{DOCKER_ID_LABEL}={docker_id}" not in listed:
                stale.append((image, docker_id))
                self.remove_older_build(image)
        if stale:
            check_room_for(docker_image_bytes(*(image for image, _ in stale)), CONTAINERD_ROOT)
            self.load_from_docker(*(image for image, _ in stale))
            for image, docker_id in stale:
                self.ctr("images", "label", image, f"{DOCKER_ID_LABEL}={docker_id}")
        return [image for image, _ in stale]

    def remove_older_build(self, image: str) -> None:
        """Remove another build of `image` (a rebuilt trainer would otherwise need room for both): its name, and the
        references by image id that the kubelet's CRI adds beside every name (or its layers stay); references by id
        that no name shares any more (left by a build removed earlier) go too."""
        targets: dict[str, str] = {}
        for line in self.ctr("images", "list").stdout.decode().splitlines()[1:]:
            ref, _, digest, *_ = line.split()
            targets[ref] = digest
        named = {digest for ref, digest in targets.items() if not ref.startswith("sha256:") and ref != image}
        old = targets.get(image)
        refs = [ref for ref, digest in targets.items()
                if ref == image or (ref.startswith("sha256:") and (digest == old or digest not in named))]
        if refs:
            self.ctr("images", "rm", "--sync", *refs)

    def images(self) -> list[str]:
        """The image references containerd holds for Kubernetes."""
        return self.ctr("images", "list", "--quiet").stdout.decode().split()


# Loading holds an image three times at its peak: `docker save`'s temporary copy under /var/lib/docker, containerd's
# content store and its unpacked snapshots (measured: 6.8 GB of images took about 20 GB); and room besides.
LOAD_FACTOR = 3
LOAD_MARGIN_BYTES = 1 << 30


def docker_image_bytes(*images: str) -> int:
    """What docker reports as the images' sizes, together."""
    sizes = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", *images], capture_output=True,
                           text=True, check=True, timeout=60).stdout.split()
    return sum(int(size) for size in sizes)


def check_room_for(image_bytes: int, root: Path) -> None:
    """Raise RealNodeUnavailable when the filesystem of containerd's root cannot take images of `image_bytes` (a
    full disk would fail the load half-way, and every other test on the machine with it). docker's data root is on
    the same filesystem on the machines we run this on."""
    needed = image_bytes * LOAD_FACTOR + LOAD_MARGIN_BYTES
    existing = root
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise RealNodeUnavailable(f"loading {image_bytes / 2**30:.1f} GiB of images into containerd needs about "
                                  f"{needed / 2**30:.1f} GiB free under {existing}, and {free / 2**30:.1f} GiB is free")


def check_host() -> None:
    """Raise RealNodeUnavailable naming what this host lacks for a real node, or that another cluster has it."""
    if os.geteuid() != 0:
        raise RealNodeUnavailable("the real node needs root (the kubelet and containerd mount, make cgroups and "
                                  "network namespaces)")
    missing = sorted({pkg for prog, pkg in HOST_PROGRAMS.items() if shutil.which(prog) is None}
                     | {pkg for path, pkg in HOST_FILES.items() if not path.exists()})
    if missing:
        raise RealNodeUnavailable(f"missing Debian packages {', '.join(missing)}: run tools/install-real-node.sh")
    if not Path("/sys/fs/cgroup/memory").is_dir() and not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        raise RealNodeUnavailable("no cgroup hierarchy with a memory controller under /sys/fs/cgroup")
    if containerd_ready()():
        raise RealNodeUnavailable(f"the real node is in use: its containerd already answers on {SOCKET} (another "
                                  "dev cluster has it; `gptops dev-cluster down` stops that one)")


def cache_dir() -> Path:
    """~/.cache/gptops/realnode/<versions>: the pause and busybox image archives, built once."""
    xdg_cache = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    base = Path(os.environ.get("GPTOPS_CACHE") or xdg_cache / "gptops")
    return base / "realnode" / f"{K8S_VERSION}-pause{PAUSE_VERSION}"


def image_archive(path: Path, ref: str, files: dict[str, tuple[bytes, int] | str], config: dict) -> Path:
    """Write a one-layer image in `docker save` form (what `ctr images import` reads), tagged `ref`.

    `files` maps a path in the image to (content, mode), or to a string: the target of a symlink.
    """
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(Path(p).parent) for p in files} - {"."})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, content, 0o777
                tar.addfile(info)
            else:
                info.size, info.mode = len(content[0]), content[1]
                tar.addfile(info, io.BytesIO(content[0]))
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    image_config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "gptops.devcluster.realnode"}],
    }).encode()
    config_name = hashlib.sha256(image_config).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [ref], "Layers": [f"{diff_id[7:]}/layer.tar"]}]
    tmp = path.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as out:
        for name, data in ((config_name, image_config), (f"{diff_id[7:]}/layer.tar", layer_bytes),
                           ("manifest.json", json.dumps(manifest).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    tmp.replace(path)
    return path


def build_pause_image(cache: Path) -> Path:
    """The pause image: Kubernetes' build/pause/linux/pause.c compiled statically as its Makefile does."""
    archive = cache / "pause.tar"
    if archive.exists():
        return archive
    cache.mkdir(parents=True, exist_ok=True)
    source = _kubernetes_source() / "build" / "pause" / "linux" / "pause.c"
    binary = cache / "pause"
    subprocess.run(["gcc", "-Os", "-Wall", "-Werror", "-static", f"-DVERSION=v{PAUSE_VERSION}-gptops", "-o",
                    str(binary), str(source)], check=True, capture_output=True, timeout=300)
    # The upstream image runs as 65535 and its entrypoint is /pause.
    image_archive(archive, PAUSE_IMAGE, {"pause": (binary.read_bytes(), 0o755)},
                  {"Entrypoint": ["/pause"], "User": "65535:65535"})
    binary.unlink()
    return archive


def build_busybox_image(cache: Path) -> Path:
    """A small image from Debian's static busybox: /bin/busybox and /bin/sh, nothing else."""
    archive = cache / "busybox.tar"
    if not archive.exists():
        cache.mkdir(parents=True, exist_ok=True)
        image_archive(archive, BUSYBOX_IMAGE, {"bin/busybox": (BUSYBOX.read_bytes(), 0o755), "bin/sh": "busybox"},
                      {"Entrypoint": ["/bin/sh"], "Env": ["PATH=/bin"]})
    return archive


def _kubernetes_source() -> Path:
    """The k8s.io/kubernetes module source the control plane is built from, from the Go module cache."""
    wrapper = Path(__file__).resolve().parents[3] / "tools" / "controlplane"
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    try:
        out = subprocess.run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{K8S_VERSION}"], cwd=wrapper,
                             env=env, capture_output=True, check=True, text=True, timeout=600).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise RealNodeUnavailable(f"could not get the k8s.io/kubernetes {K8S_VERSION} source for pause.c: {err}") \
            from err
    return Path(json.loads(out)["Dir"])


def write_containerd_config(directory: Path) -> Path:
    """containerd's config: our root, state and socket, CRI with the cgroupfs driver, the local pause image, our CNI."""
    cni_conf = directory / "cni" / "net.d"
    cni_conf.mkdir(parents=True, exist_ok=True)
    # containerd itself brings up `lo` with the loopback plugin from bin_dir; the conflist gives eth0 on a bridge.
    (cni_conf / "10-gptops.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0",
        "name": "gptops",
        "plugins": [{
            "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET}]], "routes": [{"dst": "0.0.0.0/0"}],
                     "dataDir": str(RUN_DIR / "cni-ipam")},
        }],
    }, indent=2))
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    config = f"""version = 2
root = "{CONTAINERD_ROOT}"
state = "{RUN_DIR / 'containerd' / 'state'}"

[grpc]
  address = "{SOCKET}"

[ttrpc]
  address = "{SOCKET}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{CONTAINERD_ROOT / 'opt'}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  enable_selinux = false
  restrict_oom_score_adj = true
  # Pod network namespaces under our state dir, not /run/netns, so a stop can unmount all of ours.
  netns_mounts_under_state_dir = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{cni_conf}"
"""
    path = directory / "containerd.toml"
    path.write_text(config)
    return path


def write_kubelet_config(directory: Path, ca_cert: Path, port: int, healthz_port: int) -> Path:
    """The KubeletConfiguration: on 127.0.0.1, x509 + webhook auth, cgroupfs like containerd, swap and cgroup v1
    allowed, tainted, image GC and disk eviction kept out of the way of a small disk."""
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": "127.0.0.1",
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(ca_cert)}},
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{SOCKET}",
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "failCgroupV1": False,
        "registerWithTaints": [NODE_TAINT],
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "serializeImagePulls": False,
        "resolvConf": "/etc/resolv.conf",
        "volumePluginDir": str(KUBELET_ROOT / "volume-plugins"),
        "nodeStatusUpdateFrequency": "4s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "shutdownGracePeriod": "0s",
    }
    path = directory / "kubelet.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def route_api_server(api_port: int, service_ip: str) -> None:
    """Let Pods on the real node reach the API server, which listens on 127.0.0.1 only, at the `kubernetes`
    Service's address (what in-cluster clients use): packets from the Pods' bridge to service_ip:443 are DNATed to
    127.0.0.1:api_port, which the kernel allows on that bridge with route_localnet. What kube-proxy would do, for
    that one Service."""
    if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True, check=False).returncode != 0:
        _run("ip", "link", "add", BRIDGE, "type", "bridge")  # the CNI bridge plugin adopts it
    _run("ip", "link", "set", BRIDGE, "up")
    Path(f"/proc/sys/net/ipv4/conf/{BRIDGE}/route_localnet").write_text("1")
    unroute_api_server()
    _run("iptables", "-t", "nat", "-N", NAT_CHAIN)
    _run("iptables", "-t", "nat", "-A", NAT_CHAIN, "-i", BRIDGE, "-d", service_ip, "-p", "tcp", "--dport", "443",
         "-j", "DNAT", "--to-destination", f"127.0.0.1:{api_port}")
    _run("iptables", "-t", "nat", "-I", "PREROUTING", "-j", NAT_CHAIN)


def unroute_api_server() -> None:
    """Remove route_api_server's NAT rules (none left is fine)."""
    for args in (["-D", "PREROUTING", "-j", NAT_CHAIN], ["-F", NAT_CHAIN], ["-X", NAT_CHAIN]):
        subprocess.run(["iptables", "-t", "nat", *args], capture_output=True, check=False, timeout=30)


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    if done.returncode != 0:
        raise RealNodeUnavailable(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")


def remove_containers(socket: Path = SOCKET) -> None:
    """Kill and remove every container our containerd runs for Kubernetes (left by a stopped kubelet)."""
    def ctr(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ctr", "--address", str(socket), "--namespace", "k8s.io", *args],
                              check=False, capture_output=True, text=True, timeout=60)

    tasks = ctr("tasks", "list", "--quiet")
    for task in tasks.stdout.split() if tasks.returncode == 0 else []:
        ctr("tasks", "kill", "--signal", "SIGKILL", task)
    deadline = time.monotonic() + 30
    while tasks.returncode == 0 and time.monotonic() < deadline:
        running = [line.split()[0] for line in ctr("tasks", "list").stdout.splitlines()[1:]
                   if line.split() and line.split()[-1] != "STOPPED"]
        if not running:
            break
        time.sleep(0.2)
    containers = ctr("containers", "list", "--quiet")
    for container in containers.stdout.split() if containers.returncode == 0 else []:
        ctr("tasks", "delete", "--force", container)
        ctr("containers", "delete", container)


def unmount_under(*roots: Path) -> None:
    """Unmount everything mounted at or below `roots` (the kubelet's root, which it bind-mounts onto itself, and its
    Pods' volumes; the network namespaces under containerd's state), deepest first."""
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    below = [m for m in mounts if any(m == str(root) or m.startswith(f"{root}/") for root in roots)]
    for mount in sorted(below, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mount], check=False, capture_output=True, timeout=30)


def containerd_ready(socket: Path = SOCKET) -> Callable[[], bool]:
    """A readiness check: containerd answers `ctr version` on its socket."""
    def ready() -> bool:
        if not socket.exists():
            return False
        try:
            return subprocess.run(["ctr", "--address", str(socket), "--connect-timeout", "2s", "version"],
                                  check=False, capture_output=True, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    return ready
