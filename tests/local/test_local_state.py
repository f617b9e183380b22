"""The runs directory: resume on the same spec, start over on a changed one or on --fresh, GPTModel promotion."""

from __future__ import annotations

from gptops.local.state import ModelState, RunState, open_run, spec_digest

FTJ = {"model": {"name": "m"}, "training": {"epochs": 1}}
MODEL = {"source": {"scratch": {}}, "serving": {"replicas": 1}}


def test_digest_covers_the_finetunejob_and_the_model_source_but_not_serving():
    d = spec_digest(FTJ, MODEL)
    assert d.startswith("sha256:")
    assert spec_digest(FTJ, {**MODEL, "serving": {"replicas": 3}}) == d
    assert spec_digest(FTJ, {**MODEL, "source": {"scratch": {"layers": 2}}}) != d
    assert spec_digest({**FTJ, "training": {"epochs": 2}}, MODEL) != d


def test_same_spec_resumes_after_the_last_finished_stage(tmp_path):
    run_dir = tmp_path / "ftj"
    state, how = open_run(run_dir, "sha256:a", fresh=False)
    assert how == "new" and not state.stages
    state.record("prepare", {"ok": True, "stage": "prepare"}, 1.5)
    (run_dir / "dataset").mkdir()

    again, how = open_run(run_dir, "sha256:a", fresh=False)
    assert how == "resumed"
    assert again.done("prepare") and not again.done("train")
    assert (run_dir / "dataset").exists()


def test_changed_spec_or_fresh_starts_over(tmp_path):
    run_dir = tmp_path / "ftj"
    state, _ = open_run(run_dir, "sha256:a", fresh=False)
    state.record("prepare", {"ok": True}, 1.0)
    (run_dir / "dataset").mkdir()

    changed, how = open_run(run_dir, "sha256:b", fresh=False)
    assert how == "changed" and not changed.stages and not (run_dir / "dataset").exists()

    changed.record("prepare", {"ok": True}, 1.0)
    fresh, how = open_run(run_dir, "sha256:b", fresh=True)
    assert how == "fresh" and not fresh.stages
    assert RunState.load(run_dir).digest == "sha256:b"


def test_promotion_keeps_the_previous_revision(tmp_path):
    state = ModelState.load(tmp_path, "gm")
    assert state.serving_revision is None and state.as_status() == {}
    state.promote("one", "/runs/one/model")
    state.promote("two", "/runs/two/model")
    state.save(tmp_path)
    again = ModelState.load(tmp_path, "gm")
    assert again.as_status() == {"servingRevision": "two", "previousRevision": "one",
                                 "servingArtifact": "/runs/two/model"}
    again.promote("two", "/runs/two/model")  # promoting what is served changes nothing
    assert again.previous_revision == "one"
