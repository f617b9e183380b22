"""Pure decisions: plan(resource, observed) -> Plan(actions, status). No I/O; never imports kopf or kubernetes."""

from gptops.reconcile.finetunejob import derive_phase, plan_finetunejob
from gptops.reconcile.gptmodel import plan_gptmodel
from gptops.reconcile.observed import (
    DeploymentState,
    JobState,
    ObservedFineTuneJob,
    ObservedGPTModel,
    PodState,
    deployment_state,
    job_state,
    pod_state,
)
from gptops.reconcile.plan import Action, ApplyChild, CreateChild, DeleteChild, EmitEvent, Plan

__all__ = [
    "Action",
    "ApplyChild",
    "CreateChild",
    "DeleteChild",
    "DeploymentState",
    "EmitEvent",
    "JobState",
    "ObservedFineTuneJob",
    "ObservedGPTModel",
    "Plan",
    "PodState",
    "deployment_state",
    "derive_phase",
    "job_state",
    "plan_finetunejob",
    "plan_gptmodel",
    "pod_state",
]
