"""The pydantic models: defaults per docs/api.md, camelCase, unknown fields refused, cross-field rules."""

import pytest
from pydantic import ValidationError

from gptops.api import FineTuneJob, GPTModel
from gptops.api.artifacts import served_revision_for, served_revision_from_status


def gm(**spec):
    spec.setdefault("source", {"huggingface": {"repo": "gpt2"}})
    return GPTModel.from_dict({"metadata": {"name": "m", "namespace": "ns"}, "spec": spec})


def ftj(**spec):
    spec.setdefault("model", {"name": "m"})
    spec.setdefault("dataset", {"source": {"url": {"url": "https://example.com/d.jsonl"}}})
    return FineTuneJob.from_dict({"metadata": {"name": "j", "namespace": "ns", "generation": 2}, "spec": spec})


def test_gptmodel_defaults():
    m = gm()
    assert m.spec.serving.engine == "vllm"
    assert m.spec.serving.server_image == "vllm/vllm-openai:v0.33.0"
    assert m.spec.serving.vllm.gpu_memory_utilization == 0.9
    assert m.spec.serving.rollout_deadline_seconds == 600
    assert m.spec.source.huggingface.revision == "main"
    assert m.endpoint() == "http://m.ns.svc:8000/v1"


def test_finetunejob_defaults():
    j = ftj()
    assert j.spec.training.image == "ghcr.io/gptops/trainer:0.1.0"
    assert j.spec.training.backoff_limit == 2
    assert j.spec.evaluation.metrics == ["perplexity"]
    assert j.spec.dataset.validation_split == 0.1
    assert j.spec.dataset.source.kind == "url"
    assert j.metadata.generation == 2


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: gm(source={}), "exactly one"),
        (lambda: gm(source={"huggingface": {"repo": "a"}, "scratch": {}}), "exactly one"),
        (lambda: gm(source={"scratch": {"hidden": 100, "heads": 3}}), "divisible"),
        (lambda: gm(serving={"vllm": {"gpuMemoryUtilization": 1.5}}), "less than or equal"),
        (lambda: gm(bogus=1), "Extra inputs"),
        (lambda: ftj(dataset={"source": {}}), "exactly one"),
        (lambda: ftj(training={"lora": {"r": 4}}), "method is lora"),
        (lambda: ftj(training={"resources": {"nodes": 2, "gpus": 0}}), "more than one node"),
        (lambda: ftj(evaluation={"thresholds": {"maxPerplexity": 1}}), "greater than 1"),
        (lambda: ftj(evaluation={"thresholds": {"minBleu": 5}}), "bleu in evaluation.metrics"),
        (lambda: ftj(dataset={"source": {"url": {"url": "https://x/y"}}, "validationSplit": 0.9}), "0.5"),
        (lambda: ftj(training={"learningRat": 1}), "Extra inputs"),
    ],
)
def test_bad_specs_are_refused(make, needle):
    with pytest.raises(ValidationError, match=needle):
        make()


def test_served_revision_full_and_lora():
    m = gm()
    assert served_revision_for(ftj(), m) is None  # nothing trained yet
    done = {"artifacts": {"directory": "/artifacts/ns/j/0123456789", "digest": "sha256:w"}}
    full = served_revision_for(ftj().model_copy(update={"status": ftj().status.model_validate(done)}), m)
    assert full.model == "/artifacts/ns/j/0123456789/model" and full.adapter is None and full.digest == "sha256:w"
    lora_ftj = ftj(training={"method": "lora"})
    lora = served_revision_for(lora_ftj.model_copy(update={"status": lora_ftj.status.model_validate(done)}), m)
    assert lora.model == "gpt2" and lora.adapter == "/artifacts/ns/j/0123456789/adapter"


def test_served_revision_from_status():
    m = gm()
    assert served_revision_from_status(m) is None
    m.status.serving_revision, m.status.serving_artifact = "j", "/artifacts/ns/j/model"
    assert served_revision_from_status(m).revision == "j"


def test_previous_revision_from_status():
    from gptops.api import previous_revision_from_status

    m = gm()
    assert previous_revision_from_status(m) is None
    m.status.previous_revision, m.status.previous_artifact = "old", "gpt2"
    m.status.previous_adapter = "/artifacts/ns/old/adapter"
    prev = previous_revision_from_status(m)
    assert (prev.revision, prev.model, prev.adapter) == ("old", "gpt2", "/artifacts/ns/old/adapter")
