"""The Helm chart: its CRDs are the canonical ones, and what `helm template` renders is what DESIGN §4 asks of the
operator's Deployment and RBAC. Rendering needs the helm binary built with the control plane (marker `cluster`)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "gptops"


def test_the_chart_ships_the_canonical_crds() -> None:
    canonical = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    assert canonical and sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == canonical
    for name in canonical:
        assert (CHART / "crds" / name).read_text() == (ROOT / "crds" / name).read_text(), \
            f"charts/gptops/crds/{name} differs from crds/{name}: cp crds/*.yaml charts/gptops/crds/"


def render(control_plane, *sets: str) -> dict[tuple[str, str], dict[str, Any]]:
    helm = control_plane.bin_dir / "helm"
    args = [str(helm), "template", "gptops", str(CHART), "--namespace", "gptops-system", "--include-crds"]
    for value in sets:
        args += ["--set", value]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    return {(d["kind"], d["metadata"]["name"] + "@" + d["metadata"].get("namespace", "")): d for d in docs}


def one(docs: dict[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, Any]:
    [doc] = [d for (k, _), d in docs.items() if k == kind]
    return doc


@pytest.mark.cluster
def test_the_operator_deployment_is_one_restricted_replica_with_a_liveness_probe(control_plane) -> None:
    docs = render(control_plane)
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == "ghcr.io/gptops/operator:0.1.0"
    assert container["command"] == ["gptops"] and container["args"][:2] == ["operator", "--all-namespaces"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                             "capabilities": {"drop": ["ALL"]}}
    assert {k for k, _ in docs} >= {"CustomResourceDefinition", "ServiceAccount", "ClusterRole",
                                     "ClusterRoleBinding", "Service", "NetworkPolicy"}
    assert "ServiceMonitor" not in {k for k, _ in docs}
    digest = "sha256:" + "a" * 64
    pinned = one(render(control_plane, f"image.digest={digest}"), "Deployment")
    assert pinned["spec"]["template"]["spec"]["containers"][0]["image"] == f"ghcr.io/gptops/operator@{digest}"


@pytest.mark.cluster
def test_rbac_grants_the_children_and_no_secrets(control_plane) -> None:
    rules = one(render(control_plane), "ClusterRole")["rules"]
    granted = {(g, r): set(rule["verbs"]) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert not any(r == "secrets" or "*" in v or r == "*" for (_, r), v in granted.items())
    # delete: old revisions' stage Jobs and finished monitor Jobs are removed by the operator.
    assert granted[("batch", "jobs")] == {"list", "watch", "create", "delete"}
    assert granted[("", "pods")] == {"list", "watch"}
    assert granted[("", "persistentvolumeclaims")] == {"get"}  # the ArtifactsShared condition reads the claim
    assert granted[("keda.sh", "scaledobjects")] == {"get", "create", "patch", "delete"}
    assert "patch" in granted[("gptops.io", "gptmodels/status")]
    assert "create" in granted[("", "events")]
    assert "update" not in granted[("gptops.io", "gptmodels")]  # the operator never writes spec


@pytest.mark.cluster
def test_watching_some_namespaces_grants_roles_there_only(control_plane) -> None:
    docs = render(control_plane, "watchNamespaces={ml,research}", "serviceMonitor.enabled=true")
    roles = sorted(d["metadata"]["namespace"] for (k, _), d in docs.items() if k == "Role")
    assert roles == ["ml", "research"]
    [cluster_role] = [d for (k, _), d in docs.items() if k == "ClusterRole"]
    assert [r["resources"] for r in cluster_role["rules"]] == [["customresourcedefinitions"], ["namespaces"]]
    assert all(set(r["verbs"]) == {"list", "watch"} for r in cluster_role["rules"])
    args = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:5] == ["operator", "--namespace", "ml", "--namespace", "research"]
    assert one(docs, "ServiceMonitor")["spec"]["endpoints"][0]["port"] == "metrics"


@pytest.mark.cluster
def test_the_chart_installs_under_the_restricted_pod_security_standard(control_plane, namespace) -> None:
    """The API server accepts every rendered object; the operator Pod passes the "restricted" admission check."""
    control_plane.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    helm = control_plane.bin_dir / "helm"
    rendered = subprocess.run([str(helm), "template", f"g{namespace[-5:]}", str(CHART), "--namespace", namespace,
                               "--set", f"watchNamespaces={{{namespace}}}"],
                              capture_output=True, text=True, timeout=60, check=True).stdout
    result = control_plane.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=rendered,
                                   check=False)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr  # PodSecurity admission warns about Deployments


@pytest.mark.cluster
def test_alerts_and_dashboard_are_off_by_default_and_carry_the_files_when_on(control_plane) -> None:
    import json

    kinds = {k for k, _ in render(control_plane)}
    assert "PrometheusRule" not in kinds and "ConfigMap" not in kinds
    docs = render(control_plane, "prometheusRule.enabled=true", "prometheusRule.labels.release=kps",
                  "grafanaDashboard.enabled=true")
    rule = one(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kps"
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    dashboard = one(docs, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["gptops.json"]) == json.loads((CHART / "files" / "grafana-dashboard.json")
                                                                      .read_text())
