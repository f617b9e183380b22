"""Pure manifest builders, one module per child kind: stage Jobs (and the multi-node rendezvous Service), the vLLM
Deployment, its Service and its autoscaler. They return dicts and never import kopf or kubernetes."""

from gptops.builders.autoscaler import build_autoscaler, build_scaled_object
from gptops.builders.common import BuildError, owner_reference
from gptops.builders.deployment import (
    adapter_model_names,
    build_deployment,
    deployment_name,
    vllm_args,
)
from gptops.builders.job import (
    build_rendezvous_service,
    build_stage_children,
    build_stage_job,
    stage_job_name,
    stage_spec_json,
)
from gptops.builders.service import build_service

__all__ = [
    "BuildError",
    "adapter_model_names",
    "build_autoscaler",
    "build_deployment",
    "build_rendezvous_service",
    "build_scaled_object",
    "build_service",
    "build_stage_children",
    "build_stage_job",
    "deployment_name",
    "owner_reference",
    "stage_job_name",
    "stage_spec_json",
    "vllm_args",
]
