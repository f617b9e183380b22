"""The one promotion rule, shared by the operator's GPTModel pass and `gptops run`. Pure.

A revision may be served only after it passed its gate. Among the revisions that passed with `promote: true`, the
one that passed last is served (ties: the greater FineTuneJob name), and it stays served until a revision passes
after it. A pin (spec.serving.revision) wins over that order, but it too must have passed its gate. A revision the
GPTModel rolled back from is not served again by either path; a later revision, or a changed pin, is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gptops.api.artifacts import ServedRevision, served_revision_for
from gptops.api.conditions import FAILED, PASSED, TRUE, get_condition, is_true
from gptops.api.finetunejob import FineTuneJob
from gptops.api.gptmodel import GPTModel


def order(revision: ServedRevision) -> tuple[str, str]:
    """The promotion order: when the gate passed (RFC 3339 sorts as text), then the FineTuneJob's name."""
    return (revision.passed_at or "", revision.revision or "")


def passed_revision(ftj: FineTuneJob, model: GPTModel) -> ServedRevision | None:
    """`ftj`'s current revision when it may be served: status describes the current spec, the gate passed for it,
    no stage failed, a person approved it (evaluation.approval: manual) and the weights are recorded; else None."""
    passed = get_condition(ftj.status.conditions, PASSED)
    generation = ftj.metadata.generation
    if (passed is None or passed.status != TRUE or passed.observed_generation != generation
            or ftj.status.observed_generation != generation or is_true(ftj.status.conditions, FAILED)):
        return None
    approval = ftj.status.approval
    if ftj.spec.evaluation.approval == "manual" and (
            approval is None or approval.decision != "Approved" or approval.revision != ftj.status.artifacts.revision):
        return None  # a person has not approved this revision (reconcile/approval.py)
    return served_revision_for(ftj, model, passed_at=passed.last_transition_time)


def candidates(finetunejobs: Iterable[FineTuneJob], model: GPTModel) -> list[ServedRevision]:
    """The revisions that ask for promotion (`evaluation.promote: true`) and may be served."""
    return [r for f in finetunejobs if f.spec.evaluation.promote and (r := passed_revision(f, model)) is not None]


@dataclass(frozen=True)
class Choice:
    """What to serve, and whether the pin decided it."""

    serve: ServedRevision | None
    pinned: bool = False


def choose(current: ServedRevision | None, offered: Iterable[ServedRevision], *, pin: str | None = None,
           pinned: ServedRevision | None = None, rolled_back: ServedRevision | None = None) -> Choice:
    """The revision to serve, given what is served now (`current`; None = the GPTModel's source), the candidates
    `offered`, the pin and the pinned FineTuneJob's passed revision (None when it has not passed), and the revision
    the GPTModel rolled back from."""
    if pin:
        if pinned is not None and not pinned.same_files(rolled_back):
            return Choice(pinned, pinned=True)
        return Choice(current, pinned=True)
    fresh = [r for r in offered if not r.same_files(rolled_back)]
    newest = max(fresh, key=order, default=None)
    if newest is not None and (current is None or order(newest) > order(current)):
        return Choice(newest)
    return Choice(current)
