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
