"""The HorizontalPodAutoscaler of a GPTModel's vLLM Deployment (spec.serving.autoscaling): autoscaling/v2 on the
requests waiting in each vLLM Pod, a Pods metric from the custom metrics API. Pure: returns a dict or None."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gptops.api.constants import ANNOTATION_SPEC_HASH, fixed_labels
from gptops.api.gptmodel import GPTModel
from gptops.builders.common import as_model, metadata
from gptops.builders.deployment import COMPONENT, deployment_name, spec_hash

#: The custom metric the autoscaler reads: vLLM's vllm:num_requests_waiting gauge per Pod, as a metrics adapter
#: serves it (the colon is not allowed in a custom metrics API name; docs/fleet.md has prometheus-adapter's rule).
WAITING_METRIC = "vllm_num_requests_waiting"


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
        # A vLLM Pod takes minutes to load its weights: add at once, remove slowly.
        "behavior": {
            "scaleUp": {"stabilizationWindowSeconds": 0},
            "scaleDown": {"stabilizationWindowSeconds": 300,
                          "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}]},
        },
    }
    # The API server fills in defaults, so the live spec never equals this one: the hash says what was applied.
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(name, model, fixed_labels(component=COMPONENT, model=model.name),
                             {ANNOTATION_SPEC_HASH: spec_hash(spec)}),
        "spec": spec,
    }
