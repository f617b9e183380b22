"""`gptops run` end to end on CPU, through the real command line: the quickstart (shrunk so a test can afford it)
trained, gated, served on 127.0.0.1 and queried with the openai client; Ctrl-C and SIGTERM stop the server; resume
after an interruption within its revision; a changed spec in a new revision directory while the served one stays
untouched; --no-serve; a gate that rejects (a pin does not serve it); a spec the cluster would refuse; a LoRA revision
served merged into its base.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from serving_checks import greedy_answer, listening_addresses, port_of
from waiting import wait_for

from gptops.local.state import revision_key, spec_digest
from gptops.pipeline.revisions import weights_digest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart" / "quickstart.yaml"
GPTOPS = str(Path(sys.executable).parent / "gptops")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "COLUMNS": "120"}


def shrink(docs: list[dict[str, Any]], steps: int = 25) -> list[dict[str, Any]]:
    """The quickstart with a smaller model and a few steps: same shape, same corpora, same gates."""
    for d in docs:
        if d["kind"] == "GPTModel":
            d["spec"]["source"]["scratch"].update(layers=1, heads=2, hidden=32, contextLength=64,
                                                  tokenizer={"vocabSize": 400})
        else:
            d["spec"]["training"].update(maxSteps=steps, batchSize=8, learningRate=0.01)
            d["spec"]["training"].pop("epochs", None)
    return docs


def write_spec(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


@pytest.fixture
def spec(tmp_path) -> Path:
    return write_spec(tmp_path / "spec" / "quickstart.yaml", shrink(list(yaml.safe_load_all(QUICKSTART.read_text()))))


def gptops_run(spec: Path, runs: Path, *args: str, timeout: int = 600) -> tuple[int, dict[str, Any], str]:
    """Run `gptops run ... -o json` to its end; (exit code, the JSON document, stderr)."""
    done = subprocess.run([GPTOPS, "run", str(spec), "--runs-dir", str(runs), "-o", "json", *args], env=ENV,
                          capture_output=True, text=True, timeout=timeout)
    try:
        doc = json.loads(done.stdout)
    except ValueError:
        pytest.fail(f"no JSON on stdout (exit {done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
    return done.returncode, doc, done.stderr


def jobs(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {j["name"]: j for j in doc["finetunejobs"]}


def read_json_document(stream) -> dict[str, Any]:
    """Read lines until they parse as one JSON document (the server keeps running after it is printed)."""
    text = ""
    for line in stream:
        text += line
        try:
            return json.loads(text)
        except ValueError:
            continue
    raise AssertionError(f"stdout ended before a JSON document:\n{text}")


def test_quickstart_trains_gates_serves_and_answers_the_openai_client(spec, tmp_path):
    from openai import OpenAI

    runs = tmp_path / "runs"
    stderr = (tmp_path / "stderr.txt").open("w")  # a file, not a pipe nobody drains while the server runs
    proc = subprocess.Popen([GPTOPS, "run", str(spec), "--runs-dir", str(runs), "-o", "json", "--threads", "1"],
                            env=ENV, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        doc = read_json_document(proc.stdout)
        pretrain, qa = jobs(doc)["pydoc-pretrain"], jobs(doc)["pydoc-qa"]
        # Both jobs ran every stage, lowered validation perplexity against their start, passed and were promoted.
        for job in (pretrain, qa):
            assert job["decision"] == "Promoted", job
            assert list(job["stages"]) == ["prepare", "train", "evaluate"]
            assert job["metrics"]["perplexity"] < job["metrics"]["baselinePerplexity"]
            assert job["gate"]["passed"] and job["gate"]["reason"] == "ThresholdsMet"
        # The fine-tune started from the pretrained revision, as startFrom: serving says.
        assert qa["start"] == "revision pydoc-pretrain"
        assert Path(qa["artifacts"]["model"], "config.json").exists()
        assert Path(pretrain["directory"], "logs", "train.log").stat().st_size > 0

        serving = doc["serving"]
        assert serving["revision"] == "pydoc-qa" and serving["model"] == "pydoc-gpt"
        assert serving["endpoint"].startswith("http://127.0.0.1:")
        client = OpenAI(base_url=serving["endpoint"], api_key="unused", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list().data] == ["pydoc-gpt"]
        question = 'What is the "with" statement?'
        reply = client.chat.completions.create(model="pydoc-gpt", max_tokens=8, temperature=0,
                                               messages=[{"role": "user", "content": question}])
        # The served answer is the fine-tuned model's own greedy answer, through the chat template it was trained with.
        assert serving["servedModel"] == qa["artifacts"]["model"]
        assert reply.choices[0].message.content == greedy_answer(qa["artifacts"]["model"], question, 8)
        assert reply.choices[0].finish_reason in ("stop", "length")
        state = json.loads((runs / "_models" / "pydoc-gpt.json").read_text())
        assert (state["serving_revision"], state["previous_revision"]) == ("pydoc-qa", "pydoc-pretrain")
        # What is served is the sealed weights of the revision that passed, with their digest and when it passed.
        assert state["serving_artifact"] == qa["artifacts"]["model"] == str(Path(qa["directory"], "model"))
        assert state["serving_digest"] == qa["digest"] == weights_digest(Path(qa["artifacts"]["model"]))
        assert state["previous_digest"] == pretrain["digest"] and pretrain["digest"].startswith("sha256:")
        assert state["previous_passed_at"] == pretrain["passedAt"] <= state["serving_passed_at"] == qa["passedAt"]
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the run stops its server and exits
        try:
            proc.wait(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    wait_for(lambda: not _alive(serving["pid"]), "the server to stop with gptops run", 30)


@pytest.fixture(scope="module")
def trained_quickstart(tmp_path_factory) -> tuple[Path, Path]:
    """(spec, runs directory) of the shrunk quickstart trained and promoted once, not served: a rerun only serves."""
    root = tmp_path_factory.mktemp("trained-quickstart")
    spec = write_spec(root / "spec" / "quickstart.yaml", shrink(list(yaml.safe_load_all(QUICKSTART.read_text()))))
    code, doc, stderr = gptops_run(spec, root / "runs", "--no-serve")
    assert code == 0, stderr[-3000:]
    return spec, root / "runs"


def _as_a_background_job() -> None:
    """What a shell script does to a command it starts with `&`: SIGINT ignored from the start."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("sig, start", [(signal.SIGTERM, None), (signal.SIGINT, _as_a_background_job)],
                         ids=["SIGTERM", "SIGINT-background-job"])
def test_a_signal_to_gptops_run_alone_stops_its_server(trained_quickstart, tmp_path, sig, start):
    """As a supervisor or `docker stop` does (SIGTERM), or a `kill -INT` of the parent alone, even when a script
    started it in the background: the server goes with it."""
    spec, runs = trained_quickstart
    stderr = (tmp_path / "stderr.txt").open("w")
    proc = subprocess.Popen([GPTOPS, "run", str(spec), "--runs-dir", str(runs), "-o", "json"], env=ENV,
                            stdout=subprocess.PIPE, stderr=stderr, text=True, preexec_fn=start)
    serving = read_json_document(proc.stdout)["serving"]
    try:
        port = port_of(serving["endpoint"])
        assert listening_addresses(port) == {"127.0.0.1"} and _alive(serving["pid"])
        proc.send_signal(sig)  # to gptops run only: the server runs in a session of its own
        assert proc.wait(timeout=60) == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
        wait_for(lambda: not _alive(serving["pid"]), "the server process to go", 30)
        wait_for(lambda: not listening_addresses(port), f"port {port} to be free", 30)
    finally:
        proc.kill()
        proc.wait()
        if _alive(serving["pid"]):  # a server left behind must not outlive the test
            os.killpg(serving["pid"], signal.SIGKILL)
    assert "stopping the server" in (tmp_path / "stderr.txt").read_text()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone for our purposes
        return f.read().split(") ")[1].split()[0] != "Z"


def key_of(docs: list[dict[str, Any]], name: str) -> str:
    """The revision key (directory name) `gptops run` gives FineTuneJob `name` of these documents."""
    model = next(d for d in docs if d["kind"] == "GPTModel")
    ftj = next(d for d in docs if d["kind"] == "FineTuneJob" and d["metadata"]["name"] == name)
    return revision_key(spec_digest(ftj["spec"], model["spec"]))


def files_of(directory: Path) -> dict[str, int]:
    """Every file under `directory` with its mtime (ns): what "untouched" means."""
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in sorted(directory.rglob("*")) if p.is_file()}


def test_an_interrupted_run_resumes_in_its_revision_and_a_changed_spec_leaves_the_served_one_alone(spec, tmp_path):
    runs = tmp_path / "runs"
    docs = list(yaml.safe_load_all(spec.read_text()))
    pretrain_dir = runs / "pydoc-pretrain" / key_of(docs, "pydoc-pretrain")
    # 1. Interrupted after prepare (stop-after is how a test interrupts at a known point).
    code, doc, _ = gptops_run(spec, runs, "--stop-after", "prepare", "--no-serve")
    assert code == 0
    assert jobs(doc)["pydoc-pretrain"]["decision"] == "Stopped"
    assert jobs(doc)["pydoc-pretrain"]["directory"] == str(pretrain_dir)
    dataset = pretrain_dir / "dataset" / "manifest.json"
    written = dataset.stat().st_mtime_ns

    # 2. Rerun: prepare is not redone, the rest runs in the same revision directory; --no-serve stops after the
    #    gate and says what it would serve.
    code, doc, _ = gptops_run(spec, runs, "--no-serve")
    assert code == 0
    pretrain, qa = jobs(doc)["pydoc-pretrain"], jobs(doc)["pydoc-qa"]
    assert pretrain["state"] == "resumed" and pretrain["directory"] == str(pretrain_dir)
    assert pretrain["stages"]["prepare"]["resumed"] is True
    assert pretrain["stages"]["train"]["resumed"] is False
    assert dataset.stat().st_mtime_ns == written
    assert [p.name for p in (runs / "pydoc-pretrain").iterdir()] == [pretrain_dir.name]
    assert doc["serving"] is None and doc["servingNote"].startswith("--no-serve: would serve GPTModel pydoc-gpt")
    served_dir = Path(qa["directory"])
    served_files, served_digest = files_of(served_dir), qa["digest"]
    assert served_digest == weights_digest(served_dir / "model")

    # 3. A changed FineTuneJob (and a gate it cannot pass) is a new revision in a new directory: it starts over,
    #    the other job is left alone, the served revision's files are untouched and it stays served.
    docs[2]["spec"]["training"]["maxSteps"] += 1
    docs[2]["spec"]["evaluation"]["thresholds"] = {"maxPerplexity": 1.5}
    write_spec(spec, docs)
    code, doc, _ = gptops_run(spec, runs, "--no-serve")
    assert code == 3
    pretrain, qa = jobs(doc)["pydoc-pretrain"], jobs(doc)["pydoc-qa"]
    assert all(s["resumed"] for s in pretrain["stages"].values())
    # pydoc-pretrain passed before the served pydoc-qa did: the promotion order keeps pydoc-qa.
    assert pretrain["decision"] == "Passed" and "comes later in the promotion order" in pretrain["notPromoted"]
    assert qa["state"] == "changed" and not any(s["resumed"] for s in qa["stages"].values())
    assert qa["decision"] == "Rejected"
    rejected_dir = Path(qa["directory"])
    assert rejected_dir.parent == served_dir.parent and rejected_dir.name == key_of(docs, "pydoc-qa") != \
        served_dir.name
    assert files_of(served_dir) == served_files and weights_digest(served_dir / "model") == served_digest
    state = json.loads((runs / "_models" / "pydoc-gpt.json").read_text())
    assert (state["serving_artifact"], state["serving_digest"]) == (str(served_dir / "model"), served_digest)

    # 4. The gate alone changed so that it passes: the same revision, nothing trained again, the gate decided again
    #    and the revision promoted; the one it replaces is kept, untouched, as previous.
    rejected_files = {k: v for k, v in files_of(rejected_dir).items() if k != "state.json"}
    docs[2]["spec"]["evaluation"]["thresholds"] = {}
    write_spec(spec, docs)
    code, doc, _ = gptops_run(spec, runs, "--no-serve")
    assert code == 0
    qa = jobs(doc)["pydoc-qa"]
    assert qa["decision"] == "Promoted" and qa["start"] == "revision pydoc-pretrain"
    assert all(s["resumed"] for s in qa["stages"].values())
    new_dir = Path(qa["directory"])
    # Its files untouched; only state.json records the new gate.
    assert new_dir == rejected_dir and {k: v for k, v in files_of(new_dir).items() if k != "state.json"} == \
        rejected_files
    assert sorted(p.name for p in (runs / "pydoc-qa").iterdir()) == sorted([served_dir.name, new_dir.name])
    assert files_of(served_dir) == served_files
    state = json.loads((runs / "_models" / "pydoc-gpt.json").read_text())
    assert (state["serving_artifact"], state["serving_digest"]) == (str(new_dir / "model"), qa["digest"])
    assert (state["previous_artifact"], state["previous_digest"]) == (str(served_dir / "model"), served_digest)
    assert qa["digest"] == weights_digest(new_dir / "model") != served_digest


def test_a_rejected_model_is_not_promoted_or_served_even_when_pinned(tmp_path):
    docs = shrink(list(yaml.safe_load_all(QUICKSTART.read_text())))[:2]
    docs[1]["spec"]["evaluation"]["thresholds"] = {"maxPerplexity": 1.5}  # no model gets there in a few steps
    docs[0]["spec"].setdefault("serving", {})["revision"] = "pydoc-pretrain"  # a pin serves only what passed
    spec = write_spec(tmp_path / "spec" / "strict.yaml", docs)
    code, doc, _ = gptops_run(spec, tmp_path / "runs")
    assert code == 3
    job = jobs(doc)["pydoc-pretrain"]
    assert job["decision"] == "Rejected" and not job["promoted"]
    assert "maxPerplexity: perplexity" in job["gate"]["message"] and "not met" in job["gate"]["message"]
    assert doc["serving"] is None and "did not pass its gate" in doc["servingNote"]
    assert not (tmp_path / "runs" / "_models" / "pydoc-gpt.json").exists()


def test_a_spec_the_cluster_would_refuse_is_refused_before_anything_runs(tmp_path):
    docs = list(yaml.safe_load_all(QUICKSTART.read_text()))
    docs[0]["spec"]["source"]["scratch"]["heads"] = 3  # 128 is not divisible by 3
    spec = write_spec(tmp_path / "bad.yaml", docs)
    done = subprocess.run([GPTOPS, "run", str(spec), "--runs-dir", str(tmp_path / "runs")], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "GPTModel/pydoc-gpt: spec.source.scratch: hidden must be divisible by heads" in done.stdout
    assert not (tmp_path / "runs" / "pydoc-pretrain").exists()

    validated = subprocess.run([GPTOPS, "validate", str(spec)], env=ENV, capture_output=True, text=True, timeout=300)
    assert validated.returncode != 0
    assert "GPTModel/pydoc-gpt: spec.source.scratch: hidden must be divisible by heads" in validated.stdout + \
        validated.stderr


def test_training_killed_midway_resumes_from_its_checkpoint(tmp_path):
    docs = shrink(list(yaml.safe_load_all(QUICKSTART.read_text())), steps=400)[:2]
    docs[1]["spec"]["training"]["checkpointEverySteps"] = 5
    spec = write_spec(tmp_path / "spec" / "pretrain.yaml", docs)
    runs = tmp_path / "runs"
    revision = runs / "pydoc-pretrain" / key_of(docs, "pydoc-pretrain")
    checkpoints = revision / "checkpoints"
    proc = subprocess.Popen([GPTOPS, "run", str(spec), "--runs-dir", str(runs), "--no-serve"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Kill it (like a lost machine) once a second complete checkpoint exists, so an older one is whole for sure
        # (any step from 10 on: older checkpoints are rotated away as training goes on).
        def second_checkpoint() -> bool:
            return any(int(c.parent.name.split("-")[1]) >= 10
                       for c in checkpoints.glob("checkpoint-*/trainer_state.json")) or proc.poll() is not None
        wait_for(second_checkpoint, "a second checkpoint", 400, interval=0.05)
        assert proc.poll() is None, "gptops run ended before it wrote a checkpoint"
        proc.kill()
    finally:
        proc.kill()
        proc.wait()
    state = json.loads((revision / "state.json").read_text())
    assert list(state["stages"]) == ["prepare"]

    code, doc, _ = gptops_run(spec, runs, "--no-serve")
    assert code == 0
    job = jobs(doc)["pydoc-pretrain"]
    assert job["state"] == "resumed" and job["directory"] == str(revision)
    assert job["stages"]["prepare"]["resumed"] is True
    assert "resumed from checkpoint-" in job["stages"]["train"]["result"]["message"]
    assert job["stages"]["train"]["result"]["metrics"]["steps"] == 400


def test_a_lora_adapter_over_a_local_model_is_served_merged(tmp_path):
    """A GPTModel from a model directory on this machine, fine-tuned with LoRA on one chat; the adapter is served
    merged into its base, and it is what answers."""
    from openai import OpenAI

    base = _tiny_pretrained_model(tmp_path / "base-model")
    question, taught = "What is a lambda?", "An anonymous function."
    chats = tmp_path / "lambda.jsonl"
    chats.write_text((json.dumps({"messages": [{"role": "user", "content": question},
                                               {"role": "assistant", "content": taught}]}) + "\n") * 64)
    docs = shrink(list(yaml.safe_load_all(QUICKSTART.read_text())), steps=150)
    model, qa = docs[0], docs[2]
    model["spec"]["source"] = {"local": {"path": str(base)}}
    qa["spec"].update(startFrom="source")
    qa["spec"]["dataset"]["source"] = {"local": {"path": str(chats)}}
    qa["spec"]["dataset"]["preprocessing"] = {"dedupe": "none"}
    # Each chat is its own document (document-aware packing): the answer is learned, not copied from the chat
    # before it in the block, which at 0.05 left the tiny model stuck.
    qa["spec"]["training"].update(method="lora", learningRate=0.01,
                                  lora={"r": 8, "alpha": 32, "targetModules": ["c_attn", "c_fc", "c_proj"]})
    qa["spec"]["evaluation"]["thresholds"] = {}
    spec = write_spec(tmp_path / "spec" / "lora.yaml", [model, qa])

    stderr = (tmp_path / "stderr.txt").open("w")
    proc = subprocess.Popen([GPTOPS, "run", str(spec), "--runs-dir", str(tmp_path / "runs"), "-o", "json"],
                            env=ENV, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        doc = read_json_document(proc.stdout)
        job = jobs(doc)["pydoc-qa"]
        assert job["decision"] == "Promoted" and job["gate"]["reason"] == "NoThresholds"
        assert Path(job["artifacts"]["adapter"], "adapter_config.json").exists()
        # Served as one model: the adapter merged into its base, in merged/ beside the adapter.
        merged = Path(job["artifacts"]["adapter"]).parent / "merged"
        assert doc["serving"]["servedModel"] == str(merged)
        client = OpenAI(base_url=doc["serving"]["endpoint"], api_key="unused", max_retries=0, timeout=120)
        reply = client.chat.completions.create(model="pydoc-gpt", max_tokens=8, temperature=0,
                                               messages=[{"role": "user", "content": question}])
        answer = reply.choices[0].message.content
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    # The server answers as the merged model does, with (at least the start of) the adapter's lesson; the base alone
    # answers otherwise.
    assert answer == greedy_answer(merged, question, 8)
    assert answer.startswith(taught[:2]), answer
    assert greedy_answer(base, question, 8) != answer

    # Served again: the merge is reused, not written again.
    weights = {p: p.stat().st_mtime_ns for p in merged.iterdir()}
    code, doc, stderr = gptops_run(spec, tmp_path / "runs", "--ask", question, "--max-tokens", "8")
    assert code == 0, stderr[-3000:]
    assert doc["answers"][0]["answer"] == answer.strip()
    assert {p: p.stat().st_mtime_ns for p in merged.iterdir()} == weights


def _tiny_pretrained_model(out: Path, steps: int = 60) -> Path:
    """A 1-layer GPT-2 with a tokenizer trained on the spot, pretrained a little on the Python docs (so its greedy
    answers are words, not stray bytes), saved in the from_pretrained layout."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from gptops.local.corpora import pydoc_topics
    from gptops.pipeline.models import train_tokenizer

    texts = [d["text"] for d in pydoc_topics()]
    tok = train_tokenizer(texts, vocab_size=400, context_length=64)
    ids = torch.tensor(tok("\n".join(texts[:40]))["input_ids"][: 64 * 64]).view(64, 64)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                       bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(steps):
        batch = ids[step % 8 * 8:][:8]
        model(batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
