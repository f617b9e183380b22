"""The one promotion rule (reconcile/promotion.py), which the GPTModel pass and `gptops run` both apply."""

from __future__ import annotations

from reconcile_world import GPTMODEL, passed_finetunejob

from gptops.api import FineTuneJob, GPTModel, ServedRevision
from gptops.reconcile.promotion import candidates, choose, passed_revision

MODEL = GPTModel.from_dict(GPTMODEL)


def rev(name: str, at: str, model: str | None = None) -> ServedRevision:
    return ServedRevision(revision=name, model=model or f"/artifacts/ml/{name}/k/model", passed_at=at)


def test_the_revision_that_passed_last_is_served_ties_by_name() -> None:
    offered = [rev("a", "2026-01-01T00:00:01Z"), rev("c", "2026-01-01T00:00:02Z"), rev("b", "2026-01-01T00:00:02Z")]
    assert choose(None, offered).serve.revision == "c"
    assert choose(None, list(reversed(offered))).serve.revision == "c"


def test_what_is_served_stays_until_a_revision_passes_after_it() -> None:
    current = rev("new", "2026-01-01T00:00:05Z")
    assert choose(current, [rev("old", "2026-01-01T00:00:01Z")]).serve is current
    assert choose(current, []).serve is current  # its own FineTuneJob re-training does not unserve it
    later = rev("later", "2026-01-01T00:00:06Z")
    assert choose(current, [later]).serve is later


def test_a_pin_wins_but_only_a_passed_revision_is_served() -> None:
    current = rev("a", "2026-01-01T00:00:05Z")
    pinned = rev("old", "2026-01-01T00:00:01Z")
    assert choose(current, [rev("b", "2026-01-01T00:00:09Z")], pin="old", pinned=pinned).serve is pinned
    held = choose(current, [rev("b", "2026-01-01T00:00:09Z")], pin="old", pinned=None)
    assert held.serve is current and held.pinned


def test_a_rolled_back_revision_is_not_served_again_but_a_new_revision_of_its_run_is() -> None:
    bad = rev("x", "2026-01-01T00:00:05Z")
    source = None
    assert choose(source, [bad], rolled_back=bad).serve is None
    assert choose(source, [bad], pin="x", pinned=bad, rolled_back=bad).serve is None
    again = rev("x", "2026-01-01T00:00:09Z", model="/artifacts/ml/x/k2/model")
    assert choose(source, [again], rolled_back=bad).serve is again


def test_only_a_current_passed_gate_with_promote_is_a_candidate() -> None:
    ok = FineTuneJob.from_dict(passed_finetunejob("ok", promote=True))
    no_promote = FineTuneJob.from_dict(passed_finetunejob("np"))
    rejected = FineTuneJob.from_dict(passed_finetunejob("rj", promote=True, passed="False"))
    stale = passed_finetunejob("st", promote=True)
    stale["metadata"]["generation"] = 2  # edited since the gate passed: the status describes an older spec
    found = candidates([ok, no_promote, rejected, FineTuneJob.from_dict(stale)], MODEL)
    assert [r.revision for r in found] == ["ok"]
    assert found[0].digest == "sha256:ok" and found[0].model == "/artifacts/ml/ok/0123456789/model"
    assert passed_revision(no_promote, MODEL) is not None  # a pin may still serve it
