"""Bad datasets, one table: empty, wrong encoding, wrong fields, truncated JSON lines, binary files. Each gives a
PipelineError naming the file and where in it (line, byte or field) and what was expected; never another exception,
and nothing is left in the run's dataset directory."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import TINY_MODEL, ftj_spec
from gptops.pipeline import PipelineError, configs_from_spec, run_prepare

GOOD = json.dumps({"text": "a line long enough to be kept by the cleaning step " * 4}) + "\n"
CHAT = {"dataset": {"format": "chat"}}
PAIRS = {"dataset": {"format": "prompt-completion"}}

CASES = [
    # (file name, bytes, spec overrides, fragments the message must hold besides the file's path)
    ("empty.jsonl", b"", {}, ["the file is empty", "jsonl"]),
    ("blank.txt", b"\n \n\t\n", {}, ["the file is empty"]),
    ("utf16.txt", "first line\nsecond line\n".encode("utf-16"), {}, ["line 1", "byte 0", "UTF-8"]),
    ("latin1.jsonl", (GOOD + '{"text": "caf\xe9 na\xefve"}\n').encode("latin-1"), {}, ["line 2", "UTF-8"]),
    ("truncated.jsonl", (GOOD * 3 + '{"text": "cut in the mid').encode(), {}, ["line 4", "not valid JSON"]),
    ("truncated-object.jsonl", (GOOD + '{"text": "x", ').encode(), {}, ["line 2", "not valid JSON"]),
    ("truncated.json", b'[{"text": "a"}, {"text": ', {}, ["line 1", "not valid JSON"]),
    ("array-row.jsonl", (GOOD + "[1, 2]\n").encode(), {}, ["line 2", "a list", "'text'"]),
    ("string-row.jsonl", (GOOD + '"just a string"\n').encode(), {}, ["line 2", "'text'"]),
    ("number-text.jsonl", (GOOD + '{"text": 5}\n').encode(), {}, ["line 2", "field 'text'", "expected a string"]),
    ("null-text.jsonl", (GOOD + '{"text": null}\n').encode(), {}, ["line 2", "'text'", "null"]),
    ("wrong-field.jsonl", (GOOD + '{"body": "x"}\n').encode(), {}, ["line 2", "dataset.fields.text", "body"]),
    ("wrong-column.csv", b"body,other\nx,y\n", {}, ["dataset.fields.text", "body, other"]),
    ("binary.txt", bytes(range(256)) * 16, {}, ["byte 128", "UTF-8"]),
    ("image.jsonl", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, {}, ["line 1", "byte 0", "UTF-8"]),
    ("nul-bytes.jsonl", b"\x00" * 64, {}, ["line 1", "not valid JSON"]),
    ("chat-missing-content.jsonl", b'{"messages": [{"role": "user"}]}\n', CHAT, ["line 1", "messages[0]", "content"]),
    ("chat-not-a-list.jsonl", b'{"messages": "hello"}\n', CHAT, ["line 1", "'messages'"]),
    ("pairs-no-completion.jsonl", b'{"prompt": "a"}\n', PAIRS, ["line 1", "dataset.fields.completion"]),
]


@pytest.mark.parametrize(("name", "data", "overrides", "fragments"), CASES, ids=[c[0] for c in CASES])
def test_a_bad_dataset_is_a_pipeline_error_naming_the_file_and_the_place(tmp_path, name, data, overrides, fragments):
    path = tmp_path / name
    path.write_bytes(data)
    configs = configs_from_spec(ftj_spec(path, **overrides), copy.deepcopy(TINY_MODEL), tmp_path / "run")
    with pytest.raises(PipelineError) as raised:
        run_prepare(configs.prepare)
    message = str(raised.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    assert not (tmp_path / "run" / "dataset").exists()
