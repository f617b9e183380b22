"""Kueue on the dev cluster: its controller manager (built from Go modules by tools/build-kueue.sh) as a process on
127.0.0.1, its CRDs, and its admission and conversion webhooks, called by the API server through `url` client
configs under a CA made here. Talks to the API with kubectl only.

Kueue finds its webhook certificate the way it does in a cluster (internal certificate management): in the Secret
kueue-system/kueue-webhook-server-cert, which it keeps while the certificate is valid for its Service's DNS name. The
certificate made here also names 127.0.0.1, where the webhook server listens, so the API server can call it by URL.
"""

from __future__ import annotations

import base64
import collections
import datetime
import ipaddress
import json
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gptops.devcluster import processes

BUILD_SCRIPT = Path(__file__).resolve().parents[3] / "tools" / "build-kueue.sh"
NAMESPACE = "kueue-system"
SERVICE = "kueue-webhook-service"
SECRET = "kueue-webhook-server-cert"
#: The CA name Kueue's certificate rotator checks its CA certificate against.
CA_NAME = "kueue-ca"
#: The CRDs whose conversion webhook Kueue serves and injects its CA into (pkg/util/cert).
CONVERTED_CRDS = ("localqueues", "clusterqueues", "workloads", "cohorts", "multikueueclusters")
#: The webhook configuration names Kueue's rotator injects its CA into: kustomize's `kueue-` prefix on the manifests'.
WEBHOOK_PREFIX = "kueue-"
WEBHOOK_CONFIGURATIONS = (f"mutatingwebhookconfiguration/{WEBHOOK_PREFIX}mutating-webhook-configuration",
                          f"validatingwebhookconfiguration/{WEBHOOK_PREFIX}validating-webhook-configuration")
#: Webhooks registered: those of Kueue's own kinds and of batch/v1 Jobs (the one integration enabled here). The
#: others (Pods, Deployments, JobSet, Kubeflow, Ray, ...) would intercept kinds this cluster does not queue.
WEBHOOK_GROUPS = frozenset({"batch", "kueue.x-k8s.io"})
VALIDITY = datetime.timedelta(days=365)  # Kueue renews a certificate that expires within 90 days


class KueueError(RuntimeError):
    """Kueue could not be built, installed or started; the message says why."""


@dataclass(frozen=True)
class Kueue:
    """A running Kueue controller manager."""

    dir: Path
    pid: int
    program: str
    log: Path
    webhook_port: int
    health_port: int


def find_kueue() -> Path:
    """The directory with `kueue`, `crds/` and `webhook/`, from tools/build-kueue.sh (a no-op once built; it honours
    GPTOPS_KUEUE_DIR). Raises KueueError with the end of the build's output when it fails."""
    proc = subprocess.Popen(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last: collections.deque[str] = collections.deque(maxlen=20)
    assert proc.stderr is not None and proc.stdout is not None
    for line in proc.stderr:
        sys.stderr.write(line)
        last.append(line)
    out = proc.stdout.read().strip().splitlines()
    if proc.wait() != 0 or not out:
        raise KueueError(f"{BUILD_SCRIPT} failed (exit {proc.returncode}):\n" + "".join(last))
    found = Path(out[-1])
    missing = [p for p in ("kueue", "crds", "webhook/manifests.yaml") if not (found / p).exists()]
    if missing:
        raise KueueError(f"{found} lacks {', '.join(missing)}")
    return found


def write_certs(directory: Path) -> dict[str, bytes]:
    """A CA and a serving certificate for Kueue's webhooks (its Service's DNS name and 127.0.0.1), as the Secret's
    ca.crt, ca.key, tls.crt and tls.key. RSA keys in PKCS#1, which Kueue's rotator reads."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kueue"),
                         x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(CA_NAME)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                             f"{SERVICE}.{NAMESPACE}.svc")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"{SERVICE}.{NAMESPACE}.svc"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def pem_key(k: rsa.RSAPrivateKey) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                               serialization.NoEncryption())

    files = {"ca.crt": ca_cert.public_bytes(serialization.Encoding.PEM), "ca.key": pem_key(ca_key),
             "tls.crt": cert.public_bytes(serialization.Encoding.PEM), "tls.key": pem_key(key)}
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("tls.crt", "tls.key"):  # what the webhook server serves; Kueue waits for them in its certDir
        path = directory / name
        path.touch(mode=0o600)
        path.write_bytes(files[name])
    return files


def install_manifests(kueue_dir: Path, port: int, certs: dict[str, bytes]) -> list[dict[str, Any]]:
    """Kueue's namespace, webhook Secret, CRDs and webhook configurations, pointed at https://127.0.0.1:<port>."""
    ca_bundle = base64.b64encode(certs["ca.crt"]).decode()
    base = f"https://127.0.0.1:{port}"
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": SECRET, "namespace": NAMESPACE},
         "data": {k: base64.b64encode(v).decode() for k, v in certs.items()}},
    ]
    for path in sorted((kueue_dir / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["plural"] in CONVERTED_CRDS:
            crd["spec"]["conversion"] = {"strategy": "Webhook", "webhook": {
                "conversionReviewVersions": ["v1"],
                "clientConfig": {"url": f"{base}/convert", "caBundle": ca_bundle}}}
        docs.append(crd)
    for config in yaml.safe_load_all((kueue_dir / "webhook" / "manifests.yaml").read_text()):
        if not config:
            continue
        kept = []
        for hook in config["webhooks"]:
            groups = {g for rule in hook.get("rules") or () for g in rule.get("apiGroups") or ()}
            if groups and groups <= WEBHOOK_GROUPS:
                path = hook["clientConfig"]["service"]["path"]
                hook["clientConfig"] = {"url": f"{base}{path}", "caBundle": ca_bundle}
                kept.append(hook)
        config["metadata"]["name"] = WEBHOOK_PREFIX + config["metadata"]["name"]
        config["webhooks"] = kept
        docs.append(config)
    return docs


def configuration(cert_dir: Path, webhook_port: int, health_port: int) -> dict[str, Any]:
    """Kueue's Configuration (config.kueue.x-k8s.io/v1beta2): the Job integration only, queue-named Jobs only,
    webhooks and health probes on 127.0.0.1, no metrics listener, no leader election."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": True, "webhookServiceName": SERVICE, "webhookSecretName": SECRET},
        "manageJobsWithoutQueueName": False,
        "integrations": {"frameworks": ["batch/job"]},
    }


def _kubectl(kubectl: str, kubeconfig: Path, *args: str, input: str | None = None) -> str:
    done = subprocess.run([kubectl, "--kubeconfig", str(kubeconfig), *args], input=input, capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        raise KueueError(f"kubectl {' '.join(args[:3])} ... exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def _established(crd: dict[str, Any]) -> bool:
    return any(c.get("type") == "Established" and c.get("status") == "True"
               for c in (crd.get("status") or {}).get("conditions") or ())


def start(kueue_dir: Path, state_dir: Path, kubeconfig: Path, kubectl: str, *, die_with_parent: bool = False,
          timeout: float = 180) -> Kueue:
    """Install Kueue's manifests into the cluster of `kubeconfig` and start its controller manager; ready when its
    /readyz (the webhook server serving) says ok. On failure stop what was started and raise KueueError."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    webhook_port, health_port = processes.free_port(), processes.free_port()
    certs = write_certs(state_dir / "certs")
    docs = install_manifests(kueue_dir, webhook_port, certs)
    _kubectl(kubectl, kubeconfig, "apply", "--server-side", "--force-conflicts", "--field-manager=gptops-devcluster",
             "-f", "-", input=yaml.safe_dump_all(docs))
    crds = [f"crd/{d['metadata']['name']}" for d in docs if d["kind"] == "CustomResourceDefinition"]
    deadline = time.monotonic() + 60
    while not all(_established(crd) for crd in
                  json.loads(_kubectl(kubectl, kubeconfig, "get", *crds, "-o", "json"))["items"]):
        if time.monotonic() > deadline:
            raise KueueError(f"Kueue's CRDs were not Established within 60s: {', '.join(crds)}")
        time.sleep(0.5)
    config = state_dir / "config.yaml"
    config.write_text(yaml.safe_dump(configuration(state_dir / "certs", webhook_port, health_port)))
    program = str(kueue_dir / "kueue")
    log = state_dir / "kueue.log"
    pid = processes.spawn([program, f"--kubeconfig={kubeconfig}", f"--config={config}",
                           "--feature-gates=VisibilityOnDemand=false", "--zap-log-level=2"], log,
                          die_with_parent=die_with_parent)
    kueue = Kueue(state_dir, pid, program, log, webhook_port, health_port)

    def ready() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/readyz", timeout=2) as resp:
            return resp.status == 200

    try:
        processes.wait_ready("kueue", pid, log, ready, timeout)
    except processes.StartError as err:
        stop(kueue, kubeconfig, kubectl)
        raise KueueError(str(err)) from err
    return kueue


def stop(kueue: Kueue, kubeconfig: Path, kubectl: str) -> None:
    """Remove Kueue's webhook configurations (the API server must not call a server that is gone), then stop it.
    Its CRDs stay."""
    subprocess.run([kubectl, "--kubeconfig", str(kubeconfig), "delete", "--ignore-not-found", *WEBHOOK_CONFIGURATIONS],
                   capture_output=True, text=True, timeout=60)
    processes.stop(kueue.pid, kueue.program)
