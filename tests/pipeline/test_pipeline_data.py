"""The prepare stage: every file format and source, each preprocessing switch, and bad input with clear messages."""

from __future__ import annotations

import copy
import csv
import json
import threading
from functools import partial
from pathlib import Path
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import TINY_MODEL, ftj_spec
from datasets import load_from_disk
from pipeline_corpus import documents

from gptops.pipeline import PipelineError, configs_from_spec, run_prepare


def prepare(tmp_path, data, **overrides):
    configs = configs_from_spec(ftj_spec(data, **overrides), copy.deepcopy(TINY_MODEL), tmp_path / "run")
    return run_prepare(configs.prepare)


def decoded(tmp_path, split="train") -> str:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "run" / "tokenizer"))
    blocks = load_from_disk(str(tmp_path / "run" / "dataset"))[split]["input_ids"]
    return "".join(tokenizer.decode(b) for b in blocks)


def test_a_directory_of_every_file_format_is_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = documents(100)
    d = tmp_path / "data"
    d.mkdir()
    (d / "a.txt").write_text("\n".join(docs[:20]) + "\n")
    (d / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs[20:40]))
    (d / "c.json").write_text(json.dumps([{"text": t} for t in docs[40:60]]))
    with open(d / "d.csv", "w", newline="", encoding="utf-8-sig") as f:  # with a byte-order mark, as Excel writes
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows([i, t] for i, t in enumerate(docs[60:80]))
    pq.write_table(pa.table({"text": docs[80:100]}), d / "e.parquet")
    (d / ".hidden.txt").write_text("ignored\n")

    report = prepare(tmp_path, d)

    assert report.manifest["documents"]["read"] == 100
    assert report.manifest["documents"]["validation"] == 10


def test_preprocessing_switches(tmp_path):
    data = tmp_path / "docs.jsonl"
    rows = ["The Cat sat on the mat. Then the dog barked loudly at the cat."] * 2 + [
        "the cat   sat on THE mat! then the dog barked loudly at the cat",  # a normalized duplicate of the first
        "tiny",
        "A very long document. " * 40,
    ] + documents(60)
    data.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))

    report = prepare(tmp_path, data, dataset={
        "preprocessing": {"lowercase": True, "removeStopWords": True, "sentenceSegmentation": True,
                          "dedupe": "normalized", "minChars": 10, "maxChars": 300, "blockSize": 16},
        "validationSplit": 0.1})

    assert report.manifest["dropped"] == {"duplicate": 2, "tooShort": 1, "tooLong": 1}
    text = decoded(tmp_path) + decoded(tmp_path, "validation")
    assert text == text.lower()
    assert " the " not in text and "\nthe " not in text  # stop words are gone
    assert "cat sat mat.\ndog barked loudly cat." in text  # one sentence per line


def test_exact_dedupe_keeps_near_duplicates_and_none_keeps_all(tmp_path):
    data = tmp_path / "docs.txt"
    data.write_text("\n".join(["Same line here."] * 3 + ["same line here"] + documents(30)) + "\n")
    assert prepare(tmp_path / "a", data, dataset={"preprocessing": {"blockSize": 16}}).manifest["dropped"] == {"duplicate": 2}
    none = prepare(tmp_path / "b", data, dataset={"preprocessing": {"dedupe": "none", "blockSize": 16}})
    assert none.manifest["dropped"] == {} and none.manifest["documents"]["kept"] == 34


def test_split_and_digest_are_seeded(tmp_path, corpus_file):
    first = prepare(tmp_path / "a", corpus_file)
    again = prepare(tmp_path / "b", corpus_file)
    other = prepare(tmp_path / "c", corpus_file, dataset={"seed": 7})
    assert first.digest == again.digest
    assert other.digest != first.digest


def test_without_packing_each_document_is_one_row(tmp_path, corpus_file):
    report = prepare(tmp_path, corpus_file, dataset={"preprocessing": {"packing": False, "blockSize": 64}})
    rows = load_from_disk(str(tmp_path / "run" / "dataset"))["train"]["input_ids"]
    assert len(rows) == report.manifest["documents"]["train"]
    assert len({len(r) for r in rows}) > 1 and max(len(r) for r in rows) <= 64


def test_several_processes_give_the_same_dataset(tmp_path):
    data = tmp_path / "many.txt"
    data.write_text("\n".join(documents(2400, seed=3)) + "\n")
    one = prepare(tmp_path / "a", data)
    two = prepare(tmp_path / "b", data, dataset={"preprocessing": {"blockSize": 64, "numProc": 2}})
    assert one.digest == two.digest


def test_prompt_completion_pairs_feed_bleu(tmp_path):
    data = tmp_path / "pc.jsonl"
    rows = [{"q": f"question {i}: what does {d.split()[0]} have?", "a": d} for i, d in enumerate(documents(60))]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = prepare(tmp_path, data, dataset={"format": "prompt-completion", "fields": {"prompt": "q", "completion": "a"},
                                              "preprocessing": {"blockSize": 32}})
    pairs = [json.loads(line) for line in (tmp_path / "run" / "dataset" / "eval_pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == report.manifest["documents"]["validation"] == 6
    assert all(p["prompt"].startswith("question") and " has " in p["reference"] for p in pairs)


def test_chat_uses_the_chat_template(tmp_path):
    data = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"tell me about {d.split()[0]}"},
                          {"role": "assistant", "content": d}]} for d in documents(60)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare(tmp_path, data, dataset={"format": "chat", "preprocessing": {"blockSize": 32}})
    assert "<|user|>\ntell me about" in decoded(tmp_path)
    pair = json.loads((tmp_path / "run" / "dataset" / "eval_pairs.jsonl").read_text().splitlines()[0])
    assert pair["prompt"].endswith("<|assistant|>\n") and " has " in pair["reference"]


def test_http_url_source(tmp_path):
    served = tmp_path / "www"
    served.mkdir()
    (served / "stories.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in documents(50)))
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/stories.jsonl"
        report = prepare(tmp_path, url, dataset={"source": {"url": {"url": url}}})
    finally:
        server.shutdown()
    assert report.manifest["documents"]["read"] == 50 and report.manifest["source"] == url


def test_s3_source_against_a_local_s3_server(tmp_path, s3_endpoint):
    endpoint, s3 = s3_endpoint
    s3.create_bucket(Bucket="data")
    docs = documents(60)
    s3.put_object(Bucket="data", Key="corpus/part-0.jsonl", Body="".join(json.dumps({"text": t}) + "\n" for t in docs[:30]))
    s3.put_object(Bucket="data", Key="corpus/part-1.txt", Body="\n".join(docs[30:]))
    report = prepare(tmp_path, "unused", dataset={"source": {"s3": {"uri": "s3://data/corpus/", "endpointUrl": endpoint}}})
    assert report.manifest["documents"]["read"] == 60
    message = _error(tmp_path / "b", "unused", dataset={"source": {"s3": {"uri": "s3://data/nothing", "endpointUrl": endpoint}}})
    assert "s3://data/nothing" in message


# ---- bad input: the message names the file, the field and what was expected -------------------------------------


def _error(tmp_path, data, **overrides) -> str:
    with pytest.raises(PipelineError) as e:
        prepare(tmp_path, data, **overrides)
    return str(e.value)


def test_empty_file(tmp_path):
    data = tmp_path / "empty.jsonl"
    data.write_text("\n")
    message = _error(tmp_path, data)
    assert str(data) in message and "empty" in message


def test_missing_text_field(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"body": "no text here"}) + "\n")
    message = _error(tmp_path, data)
    assert str(data) in message and "line 2" in message and "'text'" in message
    assert "dataset.fields.text" in message and "body" in message


def test_non_utf8_bytes(tmp_path):
    data = tmp_path / "latin1.txt"
    data.write_bytes("first line\nna\xefve caf\xe9\n".encode("latin-1"))
    message = _error(tmp_path, data)
    assert str(data) in message and "line 2" in message and "UTF-8" in message


def test_invalid_json_line(tmp_path):
    data = tmp_path / "broken.jsonl"
    data.write_text('{"text": "ok"}\n{"text": oops}\n')
    message = _error(tmp_path, data)
    assert str(data) in message and "line 2" in message and "JSON" in message


def test_plain_text_for_a_chat_dataset(tmp_path, corpus_file):
    message = _error(tmp_path, corpus_file, dataset={"format": "chat"})
    assert str(corpus_file) in message and "chat" in message and "jsonl" in message


def test_messages_of_the_wrong_shape(tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": "hello"}) + "\n")
    message = _error(tmp_path, data, dataset={"format": "chat"})
    assert str(data) in message and "'messages'" in message and "role" in message


def test_dataset_smaller_than_one_block(tmp_path):
    data = tmp_path / "small.txt"
    data.write_text("\n".join(documents(2)) + "\n")
    message = _error(tmp_path, data)
    assert str(data) in message and "fewer than one block of 64" in message and "blockSize" in message


def test_block_longer_than_the_context(tmp_path, corpus_file):
    message = _error(tmp_path, corpus_file, dataset={"preprocessing": {"blockSize": 4096}})
    assert "dataset.preprocessing.blockSize" in message and "context length (64)" in message


def test_missing_path(tmp_path):
    message = _error(tmp_path, tmp_path / "nope.txt")
    assert "nope.txt" in message and "no such file" in message


def test_unreadable_file(tmp_path, monkeypatch):
    data = tmp_path / "locked.txt"
    data.write_text("hello\n")
    real = Path.open

    def denied(self, *args, **kwargs):  # chmod 000 does not stop root, so deny the open itself
        if self == data:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", denied)
    message = _error(tmp_path, data)
    assert str(data) in message and "cannot read" in message and "Permission denied" in message


def test_hugging_face_source_through_load_dataset(tmp_path):
    # load_dataset on a local directory runs the same code path as a hub name, offline.
    repo = tmp_path / "hub-dataset"
    repo.mkdir()
    (repo / "train.jsonl").write_text("".join(json.dumps({"body": t, "n": i}) + "\n" for i, t in enumerate(documents(50))))
    report = prepare(tmp_path, "unused", dataset={"source": {"huggingface": {"name": str(repo)}},
                                                  "fields": {"text": "body"}})
    assert report.manifest["documents"]["read"] == 50
    message = _error(tmp_path / "b", "unused", dataset={"source": {"huggingface": {"name": str(repo)}}})
    assert str(repo) in message and "'text'" in message and "body" in message


def test_tokens_are_what_the_tokenizer_gives_one_document_at_a_time(tmp_path):
    """Prepare's batched tokenization gives the tokenizer's own ids, EOS after each document: nothing cut or padded
    by a tokenizer saved with truncation and padding on (as some hub tokenizers are), special-token text kept."""
    from transformers import AutoTokenizer, GPT2Config

    from gptops.pipeline import models

    docs = documents(200) + ["before <|endoftext|> after, and more words than the truncation keeps", "naïve café, 日本語 text"]
    tokenizer = models.train_tokenizer(docs, 400, 64)
    tokenizer.backend_tokenizer.enable_truncation(max_length=4)
    tokenizer.backend_tokenizer.enable_padding(length=48, pad_id=tokenizer.eos_token_id, pad_token=tokenizer.eos_token)
    model_dir = tmp_path / "model"
    tokenizer.save_pretrained(str(model_dir))
    GPT2Config(n_positions=64, n_layer=2, n_head=2, n_embd=64, vocab_size=len(tokenizer)).save_pretrained(str(model_dir))
    data = tmp_path / "docs.txt"
    data.write_text("\n".join(docs) + "\n")

    configs = configs_from_spec(ftj_spec(data, dataset={"preprocessing": {"packing": False, "blockSize": 64}}),
                                {"source": {"local": {"path": str(model_dir)}}}, tmp_path / "run")
    report = run_prepare(configs.prepare)

    saved = AutoTokenizer.from_pretrained(str(tmp_path / "run" / "tokenizer"))
    assert saved.backend_tokenizer.truncation is not None  # the hazard is really there
    per_document = [saved(d, add_special_tokens=False)["input_ids"] + [saved.eos_token_id] for d in docs]
    dataset = load_from_disk(str(tmp_path / "run" / "dataset"))
    rows = sorted(list(r) for split in ("train", "validation") for r in dataset[split]["input_ids"])
    assert rows == sorted(ids[:64] for ids in per_document)
    assert sum(report.manifest["tokens"].values()) == sum(len(ids) for ids in per_document)
    assert max(len(r) for r in rows) > 8
