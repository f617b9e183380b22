"""The stage-result contract as the operator reads it: what the pipeline writes (gptops.pipeline.result.render, the
writer production uses) parses back, within the 4 KiB a termination message keeps, with garbage around it."""

import json

import pytest

from gptops.api.stageresult import MAX_BYTES, STAGE_RESULT_API_VERSION, StageResult, parse_stage_result
from gptops.pipeline.result import StageResult as WrittenResult
from gptops.pipeline.result import render

FIELDS = dict(stage="evaluate", ok=True, message="done", metrics={"perplexity": 12.5},
              artifacts={"eval": "/artifacts/ns/j/eval/report.json"}, digest="sha256:ab")


def _written(**kw) -> str:
    """A stage result as a stage writes it to its termination message."""
    return render(WrittenResult(**{**FIELDS, **kw}))


def test_what_a_stage_writes_is_what_the_operator_reads():
    assert parse_stage_result(_written()) == StageResult(**FIELDS)


def test_a_failed_stage_with_a_huge_message_is_cut_under_the_limit_and_still_parses():
    text = _written(stage="train", ok=False, message="dataset/manifest.json: field 'x' " + "y" * 10_000)
    assert len(text.encode()) <= MAX_BYTES
    parsed = parse_stage_result("some log line\n" + text)
    assert parsed is not None and (parsed.stage, parsed.ok) == ("train", False)
    assert parsed.message.startswith("dataset/manifest.json: field 'x'")


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
    assert parse_stage_result(wrap(_written())) == StageResult(**FIELDS)


@pytest.mark.parametrize(
    "text",
    [None, "", "garbage", "{", '{"apiVersion": "other/v1", "stage": "train", "ok": true}',
     '{"apiVersion": "gptops.io/stage-result/v1", "stage": "bogus", "ok": true}',
     '{"apiVersion": "gptops.io/stage-result/v1", "stage": "train", "ok": tr', b"\xff\xfe"],
)
def test_no_valid_result_gives_none(text):
    assert parse_stage_result(text) is None


def test_last_result_wins_and_stage_filter():
    a, b = _written(stage="train", message="first"), _written(stage="train", message="second")
    assert parse_stage_result(a + "\n" + b).message == "second"
    assert parse_stage_result(a, stage="evaluate") is None


def test_odd_metrics_and_artifacts_are_dropped_not_fatal():
    text = json.dumps({"apiVersion": STAGE_RESULT_API_VERSION, "stage": "evaluate", "ok": True,
                       "metrics": {"perplexity": 3, "bleu": None, "note": "x", "flag": True, "inf": float("inf")},
                       "artifacts": {"eval": "/a/eval", "none": None}})
    result = parse_stage_result(text)
    assert result.metrics == {"perplexity": 3.0}
    assert result.artifacts == {"eval": "/a/eval"}


def test_samples_are_few_and_short_and_give_way_first_in_a_full_termination_message():
    samples = [{"prompt": "p" * 1000, "reference": "r" * 1000, "output": "o" * 1000, "baseOutput": "b" * 1000}] * 9
    result = StageResult(stage="evaluate", ok=True, message="m" * 2000, metrics={"perplexity": 3.0}, samples=samples)
    assert len(result.samples) == 3 and all(len(s.prompt) <= 160 for s in result.samples)
    text = result.to_termination_message()
    assert len(text.encode()) <= MAX_BYTES
    back = parse_stage_result(text)
    assert back is not None and back.message == "m" * 2000 and back.metrics == {"perplexity": 3.0}
    assert len(back.samples) < 3  # samples went before the message was cut
    small = StageResult(stage="evaluate", ok=True, samples=samples[:2])
    assert [s.base_output[:3] for s in parse_stage_result(small.to_termination_message()).samples] == ["bbb", "bbb"]
    assert "samples" not in StageResult(stage="train", ok=True).to_dict()
