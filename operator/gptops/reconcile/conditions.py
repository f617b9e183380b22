"""Conditions rebuilt whole on every pass, and the events their transitions deserve. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gptops.api.conditions import FALSE, TRUE, Condition, ConditionStatus
from gptops.reconcile.plan import EmitEvent


@dataclass(frozen=True)
class Want:
    """The desired state of one condition type in this pass."""

    type: str
    status: ConditionStatus
    reason: str
    message: str = ""


def rebuild(old: Iterable[Condition], wants: Sequence[Want], *, generation: int, now: str) -> list[Condition]:
    """Conditions in the order of `wants`; lastTransitionTime is kept from `old` while the status holds."""
    previous = {c.type: c for c in old}
    out: list[Condition] = []
    for w in wants:
        before = previous.get(w.type)
        kept = before is not None and before.status == w.status and before.last_transition_time
        out.append(Condition(
            type=w.type,
            status=w.status,
            reason=w.reason,
            message=w.message,
            observed_generation=generation,
            last_transition_time=before.last_transition_time if kept and before else now,
        ))
    return out


def transition_events(
    old: Iterable[Condition], new: Iterable[Condition], *, warn_when_true: Iterable[str] = (),
    warn_when_false: Iterable[str] = (),
) -> list[EmitEvent]:
    """One event per condition that became True, or left True, or became False in a way worth a warning.

    Conditions that merely start out False or Unknown (waiting for an earlier step) are not news.
    """
    previous = {c.type: c.status for c in old}
    warn_true, warn_false = set(warn_when_true), set(warn_when_false)
    events: list[EmitEvent] = []
    for c in new:
        before = previous.get(c.type)
        if before == c.status:
            continue
        text = f"{c.type}={c.status}: {c.message}" if c.message else f"{c.type}={c.status}"
        if c.status == TRUE:
            events.append(EmitEvent("Warning" if c.type in warn_true else "Normal", c.reason, text))
        elif c.status == FALSE and (before == TRUE or c.type in warn_false):
            events.append(EmitEvent("Warning" if c.type in warn_false else "Normal", c.reason, text))
    return events
