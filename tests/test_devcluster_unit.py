"""Fast tests of the dev cluster's pure parts: certificates, kwok stages, kubeconfig, process plumbing."""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import sys
import threading

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from gptops.devcluster import cluster, processes
from gptops.devcluster.pki import issue_client_cert, write_pki
from gptops.devcluster.stages import (
    EXIT_CODE_ANNOTATION,
    MISSING_IMAGE,
    REASON_ANNOTATION,
    RESULT_ANNOTATION,
    build_stages,
)


def load(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_pki_serving_cert_names_the_api_server_and_is_signed_by_the_ca(tmp_path):
    pki = write_pki(tmp_path)
    serving, ca = load(pki.serving_cert), load(pki.ca_cert)

    serving.verify_directly_issued_by(ca)
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.0.0.1"}
    assert {"localhost", "kubernetes.default.svc"} <= set(sans.get_values_for_type(x509.DNSName))
    assert (pki.ca_key.stat().st_mode & 0o777) == 0o600


def test_pki_admin_is_in_system_masters_and_other_users_in_no_group(tmp_path):
    pki = write_pki(tmp_path)
    admin = load(pki.admin_cert)
    alice_cert, _ = issue_client_cert(pki, "alice")
    alice = load(alice_cert)

    assert admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    assert alice.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert alice.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME) == []
    usage = alice.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    alice.verify_directly_issued_by(load(pki.ca_cert))


def test_pki_certs_complete_a_mutual_tls_handshake_on_127_0_0_1(tmp_path):
    pki = write_pki(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_cert))
    server_ctx.load_cert_chain(str(pki.serving_cert), str(pki.serving_key))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    client_ctx.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    peers = []

    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                peers.append(tls.getpeercert()["subject"])

        thread = threading.Thread(target=serve)
        thread.start()
        with socket.create_connection(listener.getsockname()) as raw:
            with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
                pass
        thread.join(timeout=5)

    assert (("commonName", "admin"),) in peers[0]


def test_stages_cover_node_and_pod_life_and_use_the_documented_annotations():
    stages = build_stages()
    text = yaml.safe_dump_all(stages)

    assert [(s["metadata"]["name"], s["spec"]["resourceRef"]["kind"]) for s in yaml.safe_load_all(text)] == [
        ("node-initialize", "Node"),
        ("node-heartbeat", "Node"),
        ("pod-ready", "Pod"),
        ("pod-complete", "Pod"),
        ("pod-kill", "Pod"),
        ("pod-delete", "Pod"),
        ("pod-image-pull-failed", "Pod"),
    ]
    complete = stages[3]["spec"]
    keys = [e["key"] for e in complete["selector"]["matchExpressions"]]
    assert f'.metadata.annotations["{RESULT_ANNOTATION}"]' in keys
    template = complete["next"]["statusTemplate"]
    assert f'"{RESULT_ANNOTATION}"' in template and f'"{EXIT_CODE_ANNOTATION}"' in template
    assert "{{ $ok := false }}" in stages[4]["spec"]["next"]["statusTemplate"]  # a deleted Pod is killed first (Failed)
    assert stages[5]["spec"]["next"] == {"delete": True}
    # A Pod of the missing image is not made Ready: it waits in ErrImagePull.
    assert {"key": ".spec.containers.[].image", "operator": "NotIn", "values": [MISSING_IMAGE]} in \
        stages[2]["spec"]["selector"]["matchExpressions"]
    assert "ErrImagePull" in stages[6]["spec"]["next"]["statusTemplate"]
    assert f'"{REASON_ANNOTATION}"' in template


def test_kubeconfig_embeds_the_credentials(tmp_path):
    pki = write_pki(tmp_path)
    path = cluster.write_kubeconfig(
        tmp_path / "kubeconfig", "https://127.0.0.1:6443", pki.ca_cert, pki.admin_cert, pki.admin_key, "admin"
    )
    config = yaml.safe_load(path.read_text())

    assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    user = config["users"][0]["user"]
    assert base64.b64decode(user["client-key-data"]) == pki.admin_key.read_bytes()
    assert (path.stat().st_mode & 0o777) == 0o600


def test_fake_node_offers_gpus():
    node = cluster.build_fake_node("gpu-node-0")
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "8"
    assert node["metadata"]["labels"][cluster.GPU_LABEL] == "true"


def test_free_port_can_be_bound():
    with socket.socket() as s:
        s.bind(("127.0.0.1", processes.free_port()))


def test_spawned_process_is_tracked_and_stopped(tmp_path):
    log = tmp_path / "sleep.log"
    pid = processes.spawn([sys.executable, "-c", "import time; time.sleep(60)"], log, die_with_parent=True)

    assert processes.runs_program(pid, sys.executable)
    assert not processes.runs_program(pid, "/bin/something-else")
    processes.stop(pid, sys.executable, grace=5)
    assert not processes.is_alive(pid)


def test_a_process_that_dies_during_start_up_reports_its_log(tmp_path):
    log = tmp_path / "crash.log"
    pid = processes.spawn([sys.executable, "-c", "print('bad flag --nope'); raise SystemExit(3)"], log)

    with pytest.raises(processes.StartError, match="bad flag --nope"):
        processes.wait_ready("crash", pid, log, lambda: False, timeout=10)


def test_status_and_stop_of_an_empty_directory_find_nothing(tmp_path):
    assert cluster.status(tmp_path) == []
    assert cluster.stop(tmp_path) == []


def test_dev_cluster_without_its_extra_says_which_extra_to_install(tmp_path):
    """`gptops dev-cluster` on an install without the devcluster extra: one line naming it, no traceback."""
    without_cryptography = ("import sys; sys.modules['cryptography'] = None; from gptops.cli import app; "
                            "app(['dev-cluster', 'status', '--dir', sys.argv[1]], prog_name='gptops')")
    done = subprocess.run([sys.executable, "-c", without_cryptography, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip() == ("error: gptops dev-cluster needs the devcluster extra (cryptography is not "
                                   "installed): pip install 'gptops[devcluster]'")


_HEALTHZ_SERVER = """
import http.server, sys
port = int(sys.argv[-1].rsplit(":", 1)[1])
class Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Healthz).serve_forever()
"""


def test_a_stopped_component_starts_again_with_its_arguments_and_port(tmp_path):
    """stop_component/start_component (the fault tests' API server and etcd restarts), on a stand-in for kwok: a
    process serving /healthz on the port its recorded arguments name."""
    import json
    import urllib.request

    port = processes.free_port()
    args = ["-c", _HEALTHZ_SERVER, f"--server-address=127.0.0.1:{port}"]
    log = tmp_path / "logs" / "kwok.log"
    pid = processes.spawn([sys.executable, *args], log, die_with_parent=True)
    (tmp_path / "state.json").write_text(json.dumps({"components": [
        {"name": "kwok", "pid": pid, "program": sys.executable, "log": str(log), "args": args,
         "dieWithParent": True}]}))
    processes.wait_ready("kwok", pid, log, lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz",
                                                                          timeout=2).read() == b"ok", 30)

    cluster.stop_component(tmp_path, "kwok")
    assert not processes.is_alive(pid)
    with pytest.raises(cluster.DevClusterError, match="kwok of the dev cluster .* is not running"):
        cluster.stop_component(tmp_path, "kwok")
    cluster.start_component(tmp_path, "kwok", timeout=30)
    (again,) = cluster.status(tmp_path)
    try:
        assert again.alive and again.pid != pid
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read() == b"ok"
        with pytest.raises(cluster.DevClusterError, match="already runs"):
            cluster.start_component(tmp_path, "kwok")
        with pytest.raises(cluster.DevClusterError, match="no etcd recorded .*; known: kwok"):
            cluster.start_component(tmp_path, "etcd")
    finally:
        cluster.stop(tmp_path)
