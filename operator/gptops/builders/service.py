"""The ClusterIP Service in front of a GPTModel's vLLM Pods (port 8000, OpenAI-compatible under /v1).
Pure: returns a dict; imports gptops.api only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gptops.api.constants import LABEL_COMPONENT, VLLM_PORT, fixed_labels
from gptops.api.gptmodel import GPTModel
from gptops.builders.common import as_model, metadata
from gptops.builders.deployment import COMPONENT, deployment_name, server_selector


def service_selector(model: GPTModel) -> dict[str, str]:
    """The vLLM Pods of this GPTModel, and nothing else: the Deployment's selector (immutable since the first
    release, so unchanged) plus the component, which the stage and monitor Pods of the same model do not share."""
    return {**server_selector(model), LABEL_COMPONENT: COMPONENT}


def build_service(model: GPTModel | Mapping[str, Any]) -> dict[str, Any]:
    """The Service `<gptmodel>`; status.endpoint is http://<gptmodel>.<ns>.svc:8000/v1."""
    model = as_model(GPTModel, model)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(deployment_name(model), model, fixed_labels(component=COMPONENT, model=model.name)),
        "spec": {
            "type": "ClusterIP",
            "selector": service_selector(model),
            "ports": [{"name": "http", "port": VLLM_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }
