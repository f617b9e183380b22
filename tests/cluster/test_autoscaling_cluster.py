"""spec.serving.autoscaling on the real control plane: the operator's HorizontalPodAutoscaler is accepted, the real
HPA controller (kube-controller-manager) scales the vLLM Deployment, the operator never undoes it, and removing
autoscaling removes the autoscaler and gives the replica count back to the spec."""

from __future__ import annotations

import copy

import pytest

from operator_kit import Cluster, wait_for
from test_revisions_cluster import GPTMODEL, MODEL

pytestmark = pytest.mark.cluster


def test_an_autoscaled_model_is_scaled_by_the_real_autoscaler_and_given_back(k: Cluster, operator) -> None:
    model = copy.deepcopy(GPTMODEL)
    model["spec"]["serving"]["autoscaling"] = {"minReplicas": 2, "maxReplicas": 3, "targetWaitingRequests": 4}
    k.apply(model)
    hpa = wait_for(lambda: k.get("hpa", MODEL), "the operator's HorizontalPodAutoscaler", timeout=90)
    assert hpa["spec"]["scaleTargetRef"]["name"] == MODEL and hpa["spec"]["maxReplicas"] == 3
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "vllm_num_requests_waiting"
    # Below minReplicas the controller scales up without any metric (no metrics adapter runs here).
    wait_for(lambda: (k.get("deployment", MODEL) or {}).get("spec", {}).get("replicas") == 2,
             "the HPA controller to scale the Deployment to minReplicas", timeout=120)
    wait_for(lambda: (k.get("gptmodel", MODEL) or {}).get("status", {}).get("ready") == "2/2",
             "READY to count the autoscaler's replicas", timeout=120)
    assert (k.get("deployment", MODEL) or {})["spec"]["replicas"] == 2  # the operator's passes left it alone

    k.kubectl("patch", "gptmodel", MODEL, "--type=json", "-p",
              '[{"op":"remove","path":"/spec/serving/autoscaling"}]')
    wait_for(lambda: k.get("hpa", MODEL) is None, "the autoscaler to be deleted", timeout=90)
    wait_for(lambda: (k.get("deployment", MODEL) or {}).get("spec", {}).get("replicas") == 1,
             "spec.serving.replicas to set the Deployment again", timeout=90)
