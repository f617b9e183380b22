"""The real node's files, without starting anything: the hand-made image archives, containerd's and the kubelet's
configs agreeing with each other, and the host check naming what is missing."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import stat
import tarfile
import tomllib

import pytest
import yaml
from gptops.devcluster import cluster, realnode


def test_an_image_archive_is_what_docker_save_writes(tmp_path):
    tool = b"#!/bin/sh\necho hi\n"
    archive = realnode.image_archive(tmp_path / "img.tar", "gptops.local/tool:1", {
        "bin/tool": (tool, 0o755), "bin/sh": "tool",
    }, {"Entrypoint": ["/bin/tool"], "User": "65535:65535"})

    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        assert manifest[0]["RepoTags"] == ["gptops.local/tool:1"]
        config = json.load(tar.extractfile(manifest[0]["Config"]))
        layer_bytes = tar.extractfile(manifest[0]["Layers"][0]).read()
    assert config["os"] == "linux" and config["architecture"] == "amd64"
    assert config["config"] == {"Entrypoint": ["/bin/tool"], "User": "65535:65535"}
    # containerd checks the layer against the config's diff_id on import.
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer_bytes).hexdigest()]

    (tmp_path / "layer.tar").write_bytes(layer_bytes)
    with tarfile.open(tmp_path / "layer.tar") as layer:
        members = {m.name: m for m in layer.getmembers()}
        assert layer.extractfile("bin/tool").read() == tool
    assert members["bin"].isdir()
    assert stat.S_IMODE(members["bin/tool"].mode) == 0o755
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "tool"


def test_containerd_and_the_kubelet_agree(tmp_path):
    containerd = tomllib.loads(realnode.write_containerd_config(tmp_path).read_text())
    kubelet = yaml.safe_load(realnode.write_kubelet_config(tmp_path, tmp_path / "ca.crt", 10250, 10248).read_text())
    cri = containerd["plugins"]["io.containerd.grpc.v1.cri"]

    # One cgroup driver on both sides, else the kubelet's Pods fail to start.
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    assert kubelet["cgroupDriver"] == "cgroupfs"
    assert kubelet["containerRuntimeEndpoint"] == f"unix://{containerd['grpc']['address']}"
    assert containerd["grpc"]["address"] == str(realnode.SOCKET)
    # Its own root and state, apart from any other containerd on the machine.
    assert containerd["root"] == "/var/lib/gptops-containerd"
    assert containerd["state"].startswith(str(realnode.RUN_DIR))
    assert cri["sandbox_image"] == realnode.PAUSE_IMAGE
    assert kubelet["address"] == kubelet["healthzBindAddress"] == "127.0.0.1"
    assert kubelet["readOnlyPort"] == 0 and kubelet["authentication"]["anonymous"]["enabled"] is False
    assert kubelet["registerWithTaints"] == [realnode.NODE_TAINT]

    conflist = json.loads((tmp_path / "cni" / "net.d" / "10-gptops.conflist").read_text())
    assert cri["cni"]["conf_dir"] == str(tmp_path / "cni" / "net.d")
    assert [p["type"] for p in conflist["plugins"]] == ["bridge"]
    subnet = ipaddress.ip_network(conflist["plugins"][0]["ipam"]["ranges"][0][0]["subnet"])
    # Real Pod IPs never collide with the ones kwok hands out.
    assert not subnet.overlaps(ipaddress.ip_network(cluster.POD_CIDR))


def test_a_real_node_toleration_matches_its_taint():
    taint, toleration = realnode.NODE_TAINT, realnode.TOLERATION
    assert (toleration["key"], toleration["value"], toleration["effect"]) == (taint["key"], taint["value"],
                                                                              taint["effect"])


def test_the_host_check_names_what_is_missing(monkeypatch):
    monkeypatch.setattr(realnode.os, "geteuid", lambda: 1000)
    with pytest.raises(realnode.RealNodeUnavailable, match="needs root"):
        realnode.check_host()

    monkeypatch.setattr(realnode.os, "geteuid", lambda: 0)
    monkeypatch.setattr(realnode.shutil, "which", lambda program: None if program == "containerd" else "/usr/bin/x")
    with pytest.raises(realnode.RealNodeUnavailable, match="containerd: run tools/install-real-node.sh"):
        realnode.check_host()


def test_a_real_node_in_use_by_another_cluster_is_refused(monkeypatch):
    monkeypatch.setattr(realnode.os, "geteuid", lambda: 0)
    monkeypatch.setattr(realnode.shutil, "which", lambda program: f"/usr/bin/{program}")
    monkeypatch.setattr(realnode, "HOST_FILES", {})
    monkeypatch.setattr(realnode, "containerd_ready", lambda: lambda: True)
    with pytest.raises(realnode.RealNodeUnavailable, match="in use: its containerd already answers"):
        realnode.check_host()


def test_loading_images_is_refused_with_the_sizes_when_the_disk_cannot_take_them(tmp_path):
    free = realnode.shutil.disk_usage(tmp_path).free
    # Three times the images (docker save's copy, content store, snapshots) and a margin must fit; a root not made
    # yet is measured where it would be made.
    with pytest.raises(realnode.RealNodeUnavailable, match=r"needs about [\d.]+ GiB free under .*GiB is free"):
        realnode.check_room_for(free, tmp_path / "containerd" / "root")
    realnode.check_room_for(min(free // 6, 1 << 30), tmp_path / "containerd" / "root")


def test_an_older_build_goes_with_the_references_by_id_that_hold_its_layers(monkeypatch, tmp_path):
    # What `ctr images list` shows on a node with an operator and a trainer loaded, and a trainer reference by id
    # left by a build removed earlier: the kubelet's CRI names each image by its id beside its name.
    listing = """REF TYPE DIGEST SIZE PLATFORMS LABELS
gptops.local/pause:3.10.2 application/vnd.oci.image.manifest.v1+json sha256:aa 760.7KiB linux/amd64 x
ghcr.io/gptops/operator:0.1.0 application/vnd.oci.image.manifest.v1+json sha256:bb 388.7MiB linux/amd64 x
ghcr.io/gptops/trainer:0.1.0 application/vnd.oci.image.manifest.v1+json sha256:cc 6.0GiB linux/amd64 x
sha256:1111 application/vnd.oci.image.manifest.v1+json sha256:aa 760.7KiB linux/amd64 x
sha256:2222 application/vnd.oci.image.manifest.v1+json sha256:bb 388.7MiB linux/amd64 x
sha256:3333 application/vnd.oci.image.manifest.v1+json sha256:cc 6.0GiB linux/amd64 x
sha256:4444 application/vnd.oci.image.manifest.v1+json sha256:dd 6.0GiB linux/amd64 x
"""
    calls = []

    def ctr(self, *args, **kwargs):
        calls.append(args)
        return realnode.subprocess.CompletedProcess(args, 0, listing.encode(), b"")

    monkeypatch.setattr(realnode.RealNode, "ctr", ctr)
    realnode.RealNode(dir=tmp_path).remove_older_build("ghcr.io/gptops/trainer:0.1.0")
    assert calls[-1] == ("images", "rm", "--sync", "ghcr.io/gptops/trainer:0.1.0", "sha256:3333", "sha256:4444")
