"""Human review of a passed revision (evaluation.approval: manual): read a person's decision from the FineTuneJob's
annotations and bind it to the revision it is about. Pure; the FineTuneJob's pass records the result in its status.

`gptops.io/approved: "true"` approves, `"false"` rejects. With `gptops.io/approved-revision: KEY` the decision is
about that revision only. Without it, the decision is bound to the revision current when the operator first reads it;
while the value then stays the same, it decides nothing about a later revision (a new spec needs a new decision).
"""

from __future__ import annotations

from collections.abc import Mapping

from gptops.api.constants import ANNOTATION_APPROVED, ANNOTATION_APPROVED_REVISION
from gptops.api.finetunejob import Approval

_VALUES = {"true": "Approved", "false": "Rejected"}


def approval_command(name: str, revision: str, approve: bool = True) -> str:
    """The kubectl command that approves (or rejects) exactly this revision."""
    value = "true" if approve else "false"
    return (f"kubectl annotate ftj {name} --overwrite {ANNOTATION_APPROVED}={value} "
            f"{ANNOTATION_APPROVED_REVISION}={revision}")


def decide_approval(revision: str, annotations: Mapping[str, str], recorded: Approval | None) -> tuple[Approval, str]:
    """(the approval record for `revision`, why it is not decided yet or "" when it is)."""
    raw = (annotations.get(ANNOTATION_APPROVED) or "").strip().lower()
    bound = (annotations.get(ANNOTATION_APPROVED_REVISION) or "").strip()
    decision = _VALUES.get(raw)
    # The value that last decided a revision stays known, so that it is not taken again for another one.
    used = recorded.unbound if recorded is not None else None
    if raw and decision is None:
        return (Approval(revision=revision, decision="Pending", unbound=used),
                f"{ANNOTATION_APPROVED}={raw!r} is not a decision: use true (approve) or false (reject)")
    if decision is None:
        return Approval(revision=revision, decision="Pending"), "no decision yet"
    if bound:
        if bound != revision:
            return (Approval(revision=revision, decision="Pending", unbound=used),
                    f"{ANNOTATION_APPROVED_REVISION} names revision {bound}, not the current revision {revision}")
        return Approval(revision=revision, decision=decision, unbound=raw), ""  # type: ignore[arg-type]
    if recorded is not None and used == raw and (recorded.revision != revision or recorded.decision == "Pending"):
        # Unchanged since it decided an earlier revision: it stays that revision's.
        return (Approval(revision=revision, decision="Pending", unbound=raw),
                f"{ANNOTATION_APPROVED}={raw} was given for an earlier revision; a new revision needs its own decision")
    return Approval(revision=revision, decision=decision, unbound=raw), ""  # type: ignore[arg-type]
