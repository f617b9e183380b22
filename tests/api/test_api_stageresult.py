"""The stage-result contract: round trip, 4 KiB limit, and parsing that tolerates garbage."""

import json

import pytest

from gptops.api.stageresult import MAX_BYTES, STAGE_RESULT_API_VERSION, StageResult, parse_stage_result


def _result(**kw):
    base = dict(stage="evaluate", ok=True, message="done", metrics={"perplexity": 12.5},
                artifacts={"eval": "/artifacts/ns/j/eval/report.json"}, digest="sha256:ab")
    base.update(kw)
    return StageResult(**base)


def test_round_trip():
    r = _result()
    text = r.to_termination_message()
    assert json.loads(text)["apiVersion"] == STAGE_RESULT_API_VERSION
    assert parse_stage_result(text) == r


def test_huge_message_is_cut_under_the_limit_and_still_parses():
    r = _result(message="x" * 10_000, artifacts={f"k{i}": "/p" * 50 for i in range(100)})
    text = r.to_termination_message()
    assert len(text.encode()) <= MAX_BYTES
    parsed = parse_stage_result(text)
    assert parsed is not None and parsed.metrics == {"perplexity": 12.5}


@pytest.mark.parametrize(
    "wrap",
    [
        lambda t: "Traceback...\nsome log line\n" + t + "\n",
        lambda t: "progress 99%" + t,
        lambda t: t + "\nWARNING trailing output {not json",
        lambda t: '{"other": "json"}\n' + t,
    ],
)
def test_garbage_around_the_document_is_tolerated(wrap):
    r = _result()
    assert parse_stage_result(wrap(r.to_termination_message())) == r


@pytest.mark.parametrize(
    "text",
    [None, "", "garbage", "{", '{"apiVersion": "other/v1", "stage": "train", "ok": true}',
     '{"apiVersion": "gptops.io/stage-result/v1", "stage": "bogus", "ok": true}',
     '{"apiVersion": "gptops.io/stage-result/v1", "stage": "train", "ok": tr', b"\xff\xfe"],
)
def test_no_valid_result_gives_none(text):
    assert parse_stage_result(text) is None


def test_last_result_wins_and_stage_filter():
    a = _result(stage="train", message="first").to_termination_message()
    b = _result(stage="train", message="second").to_termination_message()
    assert parse_stage_result(a + "\n" + b).message == "second"
    assert parse_stage_result(a, stage="evaluate") is None


def test_odd_metrics_and_artifacts_are_dropped_not_fatal():
    text = json.dumps({"apiVersion": STAGE_RESULT_API_VERSION, "stage": "evaluate", "ok": True,
                       "metrics": {"perplexity": 3, "bleu": None, "note": "x", "flag": True, "inf": float("inf")},
                       "artifacts": {"eval": "/a/eval", "none": None}})
    result = parse_stage_result(text)
    assert result.metrics == {"perplexity": 3.0}
    assert result.artifacts == {"eval": "/a/eval"}


def test_the_pipeline_writes_what_the_operator_reads():
    """Both sides of the contract: gptops.pipeline.result renders, gptops.api.stageresult parses."""
    from gptops.pipeline.result import StageResult as PipelineResult
    from gptops.pipeline.result import render

    written = render(PipelineResult(stage="train", ok=False, message="dataset/manifest.json: field 'x' " + "y" * 9000,
                                    metrics={"loss": 1.5}, artifacts={"checkpoint": "/artifacts/ns/j/checkpoints"}))
    read = parse_stage_result("some log line\n" + written)
    assert read is not None and read.stage == "train" and read.ok is False
    assert read.message.startswith("dataset/manifest.json: field 'x'")
