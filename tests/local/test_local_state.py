"""The runs directory: one directory per revision (resume within it, a changed spec gets its own, --fresh never
deletes a served one), retention, and the local GPTModel status (served and previous revision, digest, passedAt)."""

from __future__ import annotations

import json

from gptops.api.artifacts import ServedRevision
from gptops.api.revisions import KEY_LENGTH
from gptops.local.state import ModelState, RunState, open_run, revision_key, revisions, spec_digest
from gptops.pipeline.revisions import sweep
from gptops.reconcile.promotion import choose

FTJ = {"model": {"name": "m"}, "training": {"epochs": 1}}
MODEL = {"source": {"scratch": {}}, "serving": {"replicas": 1}}
A = spec_digest(FTJ, MODEL)
B = spec_digest({**FTJ, "training": {"epochs": 2}}, MODEL)


def test_digest_covers_the_finetunejob_and_the_model_source_but_not_serving():
    d = spec_digest(FTJ, MODEL)
    assert d.startswith("sha256:")
    assert spec_digest(FTJ, {**MODEL, "serving": {"replicas": 3}}) == d
    assert spec_digest(FTJ, {**MODEL, "source": {"scratch": {"layers": 2}}}) != d
    assert spec_digest({**FTJ, "training": {"epochs": 2}}, MODEL) != d


def test_the_revision_key_is_the_start_of_the_spec_digest():
    assert revision_key(A) == A.removeprefix("sha256:")[:KEY_LENGTH]
    assert len(revision_key(A)) == KEY_LENGTH == 10 and revision_key(A) != revision_key(B)


def test_same_spec_resumes_after_the_last_finished_stage_in_its_revision(tmp_path):
    ftj = tmp_path / "ftj"
    state, how = open_run(ftj, A, fresh=False)
    assert how == "new" and not state.stages
    assert state.directory == ftj / revision_key(A) and state.path == ftj / revision_key(A) / "state.json"
    state.record("prepare", {"ok": True, "stage": "prepare"}, 1.5)
    (state.directory / "dataset").mkdir()

    again, how = open_run(ftj, A, fresh=False)
    assert how == "resumed" and again.directory == state.directory
    assert again.done("prepare") and not again.done("train")
    assert (again.directory / "dataset").exists()


def test_a_changed_spec_starts_a_new_revision_and_leaves_the_old_one_alone(tmp_path):
    ftj = tmp_path / "ftj"
    old, _ = open_run(ftj, A, fresh=False)
    old.record("prepare", {"ok": True}, 1.0)
    (old.directory / "model").mkdir()
    (old.directory / "model" / "weights.bin").write_bytes(b"served")

    changed, how = open_run(ftj, B, fresh=False)
    assert how == "changed" and not changed.stages
    assert changed.directory == ftj / revision_key(B)
    assert (old.directory / "model" / "weights.bin").read_bytes() == b"served"
    assert RunState.load(old.directory).done("prepare")
    assert [r.key for r in revisions(ftj)] == [revision_key(A), revision_key(B)]

    # Back to the first spec: its revision resumes where it was.
    back, how = open_run(ftj, A, fresh=False)
    assert how == "resumed" and back.directory == old.directory


def test_fresh_starts_over_in_place_unless_the_revision_is_retained(tmp_path):
    ftj = tmp_path / "ftj"
    state, _ = open_run(ftj, A, fresh=False)
    state.record("prepare", {"ok": True}, 1.0)
    (state.directory / "dataset").mkdir()

    fresh, how = open_run(ftj, A, fresh=True)
    assert how == "fresh" and not fresh.stages and fresh.directory == state.directory
    assert not (fresh.directory / "dataset").exists()
    assert RunState.load(fresh.directory).digest == A

    # The revision is served now: --fresh starts over in a new directory and leaves the served one as it is.
    fresh.record("train", {"ok": True}, 1.0)
    (fresh.directory / "model").mkdir()
    served = revision_key(A)
    again, how = open_run(ftj, A, fresh=True, retain=[served])
    assert how == "fresh" and not again.stages
    assert again.directory.parent == ftj and again.key != served and len(again.key) == KEY_LENGTH
    assert RunState.load(ftj / served).done("train") and (ftj / served / "model").is_dir()
    # ... and later runs of the same spec continue the newest attempt, not the served one.
    again.record("prepare", {"ok": True}, 1.0)
    later, how = open_run(ftj, A, fresh=False, retain=[served])
    assert how == "resumed" and later.directory == again.directory


def test_retention_keeps_the_served_and_the_previous_revision(tmp_path):
    ftj = tmp_path / "runs" / "ftj"
    keys = []
    for epochs in (1, 2, 3, 4):
        state, _ = open_run(ftj, spec_digest({**FTJ, "training": {"epochs": epochs}}, MODEL), fresh=False)
        keys.append(state.key)
    (ftj / "notes").mkdir()  # not a revision: never swept
    model = ModelState(name="gm")
    model.promote("ftj", str(ftj / keys[0] / "model"))
    model.promote("ftj", str(ftj / keys[1] / "model"))
    model.promote("other", str(tmp_path / "runs" / "other" / keys[2] / "model"))  # another FineTuneJob's
    assert model.retained_keys(ftj) == sorted([keys[1]])  # serving is another job's; previous is ftj's keys[1]
    removed = sweep(ftj / keys[3], model.retained_keys(ftj))
    assert sorted(removed) == sorted([keys[0], keys[2]])
    assert sorted(p.name for p in ftj.iterdir()) == sorted([keys[1], keys[3], "notes"])


def test_a_lora_revision_retains_its_base_too(tmp_path):
    ftj = tmp_path / "ftj"
    model = ModelState(name="gm")
    model.promote("ftj", str(ftj / "aaaaaaaaaa" / "adapter"), "lora", str(ftj / "bbbbbbbbbb" / "model"))
    assert model.retained_keys(ftj) == ["aaaaaaaaaa", "bbbbbbbbbb"]
    assert model.retained_keys(tmp_path / "elsewhere") == []


def test_promotion_keeps_the_previous_revision_with_its_digest_and_passed_at(tmp_path):
    state = ModelState.load(tmp_path, "gm")
    assert state.serving_revision is None and state.as_status() == {} and state.served() is None
    state.promote("one", "/runs/one/k1/model", digest="sha256:1", passed_at="2026-01-02T10:00:00Z")
    state.promote("two", "/runs/two/k2/model", digest="sha256:2", passed_at="2026-01-02T11:00:00Z")
    state.save(tmp_path)
    again = ModelState.load(tmp_path, "gm")
    assert again.as_status() == {"servingRevision": "two", "previousRevision": "one",
                                 "servingArtifact": "/runs/two/k2/model", "servingDigest": "sha256:2"}
    assert again.served() == ServedRevision(revision="two", model="/runs/two/k2/model", digest="sha256:2",
                                            passed_at="2026-01-02T11:00:00Z")
    assert again.previous() == ServedRevision(revision="one", model="/runs/one/k1/model", digest="sha256:1",
                                              passed_at="2026-01-02T10:00:00Z")
    again.promote("two", "/runs/two/k2/model", digest="sha256:2")  # promoting what is served changes nothing
    assert again.previous_revision == "one" and again.previous_digest == "sha256:1"
    # A new revision of the same FineTuneJob is other files: the one it replaces becomes previous.
    again.promote("two", "/runs/two/k3/model", digest="sha256:3")
    assert (again.previous_artifact, again.previous_digest) == ("/runs/two/k2/model", "sha256:2")


def test_a_lora_revision_is_served_as_its_adapter_over_its_base():
    state = ModelState(name="gm")
    state.promote("qa", "/runs/qa/k/adapter", "lora", "/base", digest="sha256:a", passed_at="2026-01-02T10:00:00Z")
    assert state.served() == ServedRevision(revision="qa", model="/base", adapter="/runs/qa/k/adapter",
                                            digest="sha256:a", passed_at="2026-01-02T10:00:00Z")


def test_a_state_file_from_before_digests_loads(tmp_path):
    (tmp_path / "_models").mkdir()
    (tmp_path / "_models" / "gm.json").write_text(json.dumps({
        "name": "gm", "serving_revision": "qa", "previous_revision": "pre", "serving_artifact": "/runs/qa/model",
        "serving_method": "full", "serving_base": None, "previous_artifact": "/runs/pre/model",
        "previous_method": "full", "previous_base": None, "promoted_at": "2026-01-01T00:00:00Z", "unknown": 1}))
    state = ModelState.load(tmp_path, "gm")
    assert (state.serving_digest, state.serving_passed_at, state.previous_digest) == (None, None, None)
    served = state.served()
    assert served is not None and served.model == "/runs/qa/model" and served.passed_at is None
    # With no recorded passedAt it comes first in the promotion order: any revision that passes now replaces it.
    new = ServedRevision(revision="pre", model="/runs/pre/k/model", passed_at="2026-01-02T00:00:00Z")
    assert choose(served, [new]).serve == new


def test_the_promotion_rule_from_the_local_state():
    """What run_one asks the rule: a pin on a revision that did not pass keeps what is served; a passed one that
    passed later than what is served replaces it; an older one does not."""
    state = ModelState(name="gm")
    state.promote("pre", "/r/pre/k/model", digest="sha256:p", passed_at="2026-01-02T10:00:00Z")
    current = state.served()
    later = ServedRevision(revision="qa", model="/r/qa/k/model", passed_at="2026-01-02T11:00:00Z")
    earlier = ServedRevision(revision="qa", model="/r/qa/k/model", passed_at="2026-01-02T09:00:00Z")
    assert choose(current, [], pin="qa", pinned=None).serve == current
    assert choose(current, [later], pin="qa", pinned=later).serve == later
    assert choose(current, [later]).serve == later
    assert choose(current, [earlier]).serve == current


def test_an_edit_of_the_gate_alone_keeps_the_revision() -> None:
    """Thresholds and promote are decided again on the same results; anything the stages read is a new revision."""
    spec = {"dataset": {"source": {"local": {"path": "d.txt"}}}, "evaluation": {"metrics": ["perplexity"]}}
    model = {"source": {"scratch": {}}}
    gate = {**spec, "evaluation": {**spec["evaluation"], "thresholds": {"maxPerplexity": 5}, "promote": True}}
    assert spec_digest(gate, model) == spec_digest(spec, model)
    measured = {**spec, "evaluation": {"metrics": ["perplexity", "bleu"]}}
    assert spec_digest(measured, model) != spec_digest(spec, model)
