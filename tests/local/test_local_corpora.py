"""The built-in offline corpora: Python's documentation as text documents and as question/answer chats."""

from __future__ import annotations

import json

import pytest

from gptops.local import corpora


def test_sections_split_on_underlined_headings():
    text = "Title\n*****\n\nBody one.\n\nSub\n===\n\nBody two.\n"
    assert list(corpora.split_sections(text)) == [("Title", "Body one."), ("Sub", "Body two.")]


def test_pydoc_topics_is_a_real_corpus():
    docs = list(corpora.pydoc_topics())
    assert len(docs) > 100
    assert sum(len(d["text"]) for d in docs) > 200_000
    assert any(d["text"].startswith('The "with" statement') for d in docs)


def test_pydoc_qa_asks_about_each_section_once():
    chats = list(corpora.pydoc_qa())
    questions = [c["messages"][0]["content"] for c in chats]
    assert len(chats) > 100 and len(set(questions)) == len(questions)
    assert 'What is the "with" statement?' in questions
    assert all(c["messages"][1]["role"] == "assistant" and c["messages"][1]["content"] for c in chats)


def test_write_builtin_writes_jsonl_once(tmp_path):
    path = corpora.write_builtin("builtin:pydoc-qa", tmp_path)
    assert path == tmp_path / "pydoc-qa.jsonl"
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) >= {"messages"}
    mtime = path.stat().st_mtime_ns
    assert corpora.write_builtin("builtin:pydoc-qa.jsonl", tmp_path).stat().st_mtime_ns == mtime


def test_unknown_builtin_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown built-in corpus 'builtin:nope'; known: builtin:pydoc-qa"):
        corpora.write_builtin("builtin:nope", tmp_path)
