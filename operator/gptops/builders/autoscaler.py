"""The autoscaler of a GPTModel's vLLM Deployment (spec.serving.autoscaling): an autoscaling/v2
HorizontalPodAutoscaler on the requests waiting in each vLLM Pod (a Pods metric from the custom metrics API), or, where
KEDA is installed, a KEDA ScaledObject on the same gauge read from Prometheus. Pure: returns a dict or None."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gptops.api.constants import (
    ANNOTATION_SPEC_HASH,
    KEDA_GROUP,
    KEDA_KIND,
    KEDA_VERSION,
    fixed_labels,
)
from gptops.api.gptmodel import GPTModel
from gptops.builders.common import as_model, metadata
from gptops.builders.deployment import COMPONENT, deployment_name, spec_hash

#: The custom metric the autoscaler reads: vLLM's vllm:num_requests_waiting gauge per Pod, as a metrics adapter
#: serves it (the colon is not allowed in a custom metrics API name; docs/fleet.md has prometheus-adapter's rule).
WAITING_METRIC = "vllm_num_requests_waiting"
#: A vLLM Pod takes minutes to load its weights: add at once, remove slowly.
BEHAVIOR = {
    "scaleUp": {"stabilizationWindowSeconds": 0},
    "scaleDown": {"stabilizationWindowSeconds": 300, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}]},
}


def build_autoscaler(model: GPTModel | Mapping[str, Any]) -> dict[str, Any] | None:
    """The HorizontalPodAutoscaler `<gptmodel>`, or None when spec.serving.autoscaling is unset."""
    model = as_model(GPTModel, model)
    scaling = model.spec.serving.autoscaling
    if scaling is None:
        return None
    name = deployment_name(model)
    spec = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
        "minReplicas": scaling.min_replicas,
        "maxReplicas": scaling.max_replicas,
        "metrics": [{"type": "Pods", "pods": {
            "metric": {"name": WAITING_METRIC},
            "target": {"type": "AverageValue", "averageValue": str(scaling.target_waiting_requests)},
        }}],
        "behavior": BEHAVIOR,
    }
    # The API server fills in defaults, so the live spec never equals this one: the hash says what was applied.
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(name, model, fixed_labels(component=COMPONENT, model=model.name),
                             {ANNOTATION_SPEC_HASH: spec_hash(spec)}),
        "spec": spec,
    }


def waiting_query(model: GPTModel) -> str:
    """The PromQL sum of the requests waiting in the GPTModel's vLLM Pods, picked by the namespace and pod labels a
    PodMonitor, a ServiceMonitor or a kubernetes_sd scrape config put on each series: the Deployment's Pods are
    `<name>-<pod-template-hash>-<5 characters>` (a GPTModel called `<name>-x` has Pods with one more part)."""
    return (f'sum(vllm:num_requests_waiting{{namespace="{model.namespace}",'
            f'pod=~"{deployment_name(model)}-[a-z0-9]{{1,10}}-[a-z0-9]{{5}}"}})')


def build_scaled_object(model: GPTModel | Mapping[str, Any], prometheus: str) -> dict[str, Any] | None:
    """KEDA's ScaledObject `<gptmodel>` (instead of the HorizontalPodAutoscaler, where KEDA is installed): KEDA's
    Prometheus scaler on the waiting requests, `prometheus` being the server it queries; it may scale to zero
    (minReplicas 0). None when spec.serving.autoscaling is unset."""
    model = as_model(GPTModel, model)
    scaling = model.spec.serving.autoscaling
    if scaling is None:
        return None
    name = deployment_name(model)
    spec = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
        "minReplicaCount": scaling.min_replicas,
        "maxReplicaCount": scaling.max_replicas,
        "pollingInterval": 15,
        "cooldownPeriod": 300,  # before the last Pod goes (minReplicas 0)
        "advanced": {"horizontalPodAutoscalerConfig": {"behavior": BEHAVIOR}},
        "triggers": [{
            "type": "prometheus",
            "metricType": "AverageValue",  # the sum over the Pods, kept at the target per Pod
            "metadata": {
                "serverAddress": prometheus,
                "query": waiting_query(model),
                "threshold": str(scaling.target_waiting_requests),
                # With minReplicas 0: the last Pod goes after cooldownPeriod without a waiting request.
                "activationThreshold": "0",
            },
        }],
    }
    return {
        "apiVersion": f"{KEDA_GROUP}/{KEDA_VERSION}",
        "kind": KEDA_KIND,
        "metadata": metadata(name, model, fixed_labels(component=COMPONENT, model=model.name),
                             {ANNOTATION_SPEC_HASH: spec_hash(spec)}),
        "spec": spec,
    }
