"""The Kueue harness without a cluster: the certificate Kueue's rotator keeps and the API server trusts, and the
manifests pointed at the webhook server on 127.0.0.1."""

from __future__ import annotations

import base64
import datetime
import ipaddress

import yaml
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from gptops.devcluster import kueue

WEBHOOKS = """
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: mutating-webhook-configuration}
webhooks:
- name: mjob.kb.io
  clientConfig: {service: {name: webhook-service, namespace: system, path: /mutate-batch-v1-job}}
  rules: [{apiGroups: [batch], apiVersions: [v1], operations: [CREATE], resources: [jobs]}]
- name: mpod.kb.io
  clientConfig: {service: {name: webhook-service, namespace: system, path: /mutate--v1-pod}}
  rules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}]
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: validating-webhook-configuration}
webhooks:
- name: vclusterqueue.kb.io
  clientConfig: {service: {name: webhook-service, namespace: system, path: /validate-kueue-x-k8s-io-v1beta2-clusterqueue}}
  rules: [{apiGroups: [kueue.x-k8s.io], apiVersions: [v1beta2], operations: [CREATE], resources: [clusterqueues]}]
"""


def crd(plural: str) -> dict:
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.kueue.x-k8s.io"},
            "spec": {"group": "kueue.x-k8s.io", "names": {"plural": plural}}}


def test_the_certificate_serves_both_names_and_satisfies_kueues_rotator(tmp_path):
    files = kueue.write_certs(tmp_path / "certs")
    assert (tmp_path / "certs" / "tls.crt").read_bytes() == files["tls.crt"]
    ca = x509.load_pem_x509_certificate(files["ca.crt"])
    cert = x509.load_pem_x509_certificate(files["tls.crt"])
    # The API server calls https://127.0.0.1:<port>; Kueue's rotator checks the Service's name and, for the CA,
    # "kueue-ca"; both want a PKCS#1 RSA key and 90 days left.
    for name in (x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                 x509.DNSName("kueue-webhook-service.kueue-system.svc")):
        PolicyBuilder().store(Store([ca])).build_server_verifier(name).verify(cert, [])
    assert ca.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["kueue-ca"]
    assert files["ca.key"].startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    assert left > datetime.timedelta(days=90)


def test_the_manifests_call_the_webhook_server_by_url_with_the_ca(tmp_path):
    (tmp_path / "crds").mkdir()
    (tmp_path / "webhook").mkdir()
    for plural in ("workloads", "resourceflavors"):
        (tmp_path / "crds" / f"{plural}.yaml").write_text(yaml.safe_dump(crd(plural)))
    (tmp_path / "webhook" / "manifests.yaml").write_text(WEBHOOKS)
    files = kueue.write_certs(tmp_path / "certs")
    docs = {(d["kind"], d["metadata"]["name"]): d for d in kueue.install_manifests(tmp_path, 12345, files)}
    ca_bundle = base64.b64encode(files["ca.crt"]).decode()

    secret = docs[("Secret", "kueue-webhook-server-cert")]
    assert secret["metadata"]["namespace"] == "kueue-system"
    assert base64.b64decode(secret["data"]["tls.crt"]) == files["tls.crt"]
    conversion = docs[("CustomResourceDefinition", "workloads.kueue.x-k8s.io")]["spec"]["conversion"]
    assert conversion["webhook"]["clientConfig"] == {"url": "https://127.0.0.1:12345/convert", "caBundle": ca_bundle}
    assert "conversion" not in docs[("CustomResourceDefinition", "resourceflavors.kueue.x-k8s.io")]["spec"]
    mutating = docs[("MutatingWebhookConfiguration", "kueue-mutating-webhook-configuration")]
    assert [h["name"] for h in mutating["webhooks"]] == ["mjob.kb.io"]  # no Pod webhook: Pods are not queued here
    assert mutating["webhooks"][0]["clientConfig"] == {"url": "https://127.0.0.1:12345/mutate-batch-v1-job",
                                                       "caBundle": ca_bundle}
    assert docs[("ValidatingWebhookConfiguration", "kueue-validating-webhook-configuration")]["webhooks"][0][
        "clientConfig"]["url"] == "https://127.0.0.1:12345/validate-kueue-x-k8s-io-v1beta2-clusterqueue"
    assert {f"{k.lower()}/{n}" for k, n in docs if k.endswith("WebhookConfiguration")} == set(
        kueue.WEBHOOK_CONFIGURATIONS)


def test_kueue_listens_on_loopback_only_and_queues_labelled_jobs_only(tmp_path):
    config = kueue.configuration(tmp_path, 9443, 8081)
    assert config["webhook"]["host"] == "127.0.0.1"
    assert config["health"]["healthProbeBindAddress"] == "127.0.0.1:8081"
    assert config["metrics"]["bindAddress"] == "0"
    assert config["manageJobsWithoutQueueName"] is False
    assert config["integrations"]["frameworks"] == ["batch/job"]
