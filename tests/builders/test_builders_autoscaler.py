"""The HorizontalPodAutoscaler of spec.serving.autoscaling, and the Deployment leaving replicas to it."""

from __future__ import annotations

import re

import pytest

from gptops.api import GPTModel, ServedRevision
from gptops.builders import build_autoscaler, build_deployment

FULL = ServedRevision(revision="tiny-ft", model="/artifacts/ml/tiny-ft/abc/model")


def test_no_autoscaling_no_autoscaler_and_fixed_replicas(gptmodel):
    assert build_autoscaler(gptmodel) is None
    assert build_deployment(gptmodel, FULL)["spec"]["replicas"] == 2


def test_the_autoscaler_scales_the_deployment_on_waiting_requests(gptmodel):
    gptmodel["spec"]["serving"]["autoscaling"] = {"minReplicas": 2, "maxReplicas": 8, "targetWaitingRequests": 5}
    hpa = build_autoscaler(gptmodel)
    dep = build_deployment(gptmodel, FULL)
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["metadata"]["name"] == dep["metadata"]["name"] == "tiny"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tiny"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert hpa["spec"]["metrics"] == [{"type": "Pods", "pods": {
        "metric": {"name": "vllm_num_requests_waiting"}, "target": {"type": "AverageValue", "averageValue": "5"}}}]
    assert hpa["metadata"]["ownerReferences"][0]["uid"] == "uid-gm"
    # The autoscaler owns the replica count: a patch of the Deployment must never set it back.
    assert "replicas" not in dep["spec"]


def test_defaults_and_limits(gptmodel):
    gptmodel["spec"]["serving"]["autoscaling"] = {"maxReplicas": 3}
    hpa = build_autoscaler(gptmodel)
    assert hpa["spec"]["minReplicas"] == 1
    assert hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "4"
    gptmodel["spec"]["serving"]["autoscaling"] = {"minReplicas": 4, "maxReplicas": 3}
    with pytest.raises(ValueError, match="minReplicas must not exceed autoscaling.maxReplicas"):
        GPTModel.from_dict(gptmodel)


def test_a_scaled_object_where_keda_is_installed(gptmodel):
    """KEDA's ScaledObject: the same bounds and target as the HPA, read from Prometheus, and minReplicas 0 allowed."""
    from gptops.builders import build_scaled_object

    assert build_scaled_object(gptmodel, "http://p:9090") is None
    gptmodel["spec"]["serving"]["autoscaling"] = {"minReplicas": 0, "maxReplicas": 5, "targetWaitingRequests": 3}
    so = build_scaled_object(gptmodel, "http://p:9090")
    assert so["kind"] == "ScaledObject" and so["metadata"]["ownerReferences"][0]["uid"] == "uid-gm"
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (0, 5)
    meta = so["spec"]["triggers"][0]["metadata"]
    assert meta["serverAddress"] == "http://p:9090" and meta["threshold"] == "3"
    # A GPTModel called tiny-x is another model: its Pods (tiny-x-<hash>-<id>) do not match tiny's query.
    pattern = re.search(r'pod=~"([^"]+)"', meta["query"]).group(1)
    assert re.fullmatch(pattern, "tiny-7d9f8b6c4-x2k9p") and not re.fullmatch(pattern, "tiny-x-7d9f8b6c4-x2k9p")
    assert "replicas" not in build_deployment(gptmodel, FULL)["spec"]
