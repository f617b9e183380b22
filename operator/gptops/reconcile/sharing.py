"""The ArtifactsShared condition of a GPTModel: whether its artifacts claim can be mounted by every Pod that needs it
at once (stage Pods, every node of a multi-node run, every vLLM replica), which on more than one node takes a
ReadWriteMany claim. Pure: reads what the pass observed; no I/O."""

from __future__ import annotations

from gptops.api.conditions import (
    ARTIFACTS_SHARED,
    FAILED,
    FALSE,
    PASSED,
    TRUE,
    Reason,
    get_condition,
    is_true,
)
from gptops.api.finetunejob import FineTuneJob
from gptops.api.gptmodel import GPTModel
from gptops.reconcile.conditions import Want
from gptops.reconcile.observed import ObservedGPTModel

READ_WRITE_MANY = "ReadWriteMany"


def _in_flight(ftj: FineTuneJob) -> bool:
    """Its stages may still run: nothing failed and the gate has not decided on the current spec."""
    passed = get_condition(ftj.status.conditions, PASSED)
    decided = passed is not None and passed.status in (TRUE, FALSE) \
        and passed.observed_generation == ftj.metadata.generation
    return not decided and not is_true(ftj.status.conditions, FAILED)


def _sharers(model: GPTModel, observed: ObservedGPTModel, serving: bool) -> list[tuple[int, str]]:
    """Who may mount the claim at the same time: (how many Pods, who, as a person would read it)."""
    who: list[tuple[int, str]] = []
    scaling = model.spec.serving.autoscaling
    replicas = scaling.max_replicas if scaling is not None else model.spec.serving.replicas
    if serving and replicas > 0:
        who.append((replicas, f"up to {replicas} vLLM Pods" if replicas > 1 else "the vLLM Pod"))
    for ftj in observed.finetunejobs:
        if _in_flight(ftj):
            nodes = ftj.spec.training.resources.nodes
            who.append((nodes, f"FineTuneJob {ftj.name}'s {nodes} training nodes" if nodes > 1
                        else f"FineTuneJob {ftj.name}'s stage Pod"))
    return who


def artifacts_shared(model: GPTModel, observed: ObservedGPTModel, *, serving: bool) -> Want | None:
    """ArtifactsShared, or None while the claim is unknown (none named, or not found). `serving`: the model has a
    revision to serve, so its vLLM Pods mount the claim."""
    modes = observed.artifacts_access_modes
    claim = model.spec.artifacts.pvc
    if modes is None or claim is None:
        return None
    if READ_WRITE_MANY in modes:
        return Want(ARTIFACTS_SHARED, TRUE, Reason.READ_WRITE_MANY,
                    f"claim {claim.claim_name} is ReadWriteMany: Pods on any node can mount it")
    mode = "/".join(modes) or "of no access mode"
    who = _sharers(model, observed, serving)
    if sum(n for n, _ in who) > 1:
        return Want(ARTIFACTS_SHARED, FALSE, Reason.READ_WRITE_ONCE_CLAIM,
                    f"claim {claim.claim_name} is {mode} but {', '.join(w for _, w in who)} mount it at once: a Pod "
                    "on another node than the first stays ContainerCreating (Multi-Attach error); use a "
                    "ReadWriteMany claim (docs/fleet.md)")
    return Want(ARTIFACTS_SHARED, TRUE, Reason.ONE_POD_AT_A_TIME,
                f"claim {claim.claim_name} is {mode}; one Pod mounts it at a time now (a second one, on another "
                "node, would need a ReadWriteMany claim)")
