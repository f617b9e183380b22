"""GPTModel.spec.monitoring: the CRD's rules (as `gptops validate` and the API server apply them) and the pydantic
model refuse the same specs, each naming the field; the defaults are the documented ones."""

import copy
from pathlib import Path

import pytest
import yaml
from gptops.api.gptmodel import GPTModel
from gptops.validate import validate_object

ROOT = Path(__file__).resolve().parents[2]
GM = yaml.safe_load((ROOT / "examples" / "gptmodel.yaml").read_text())
DATASET = {"source": {"configMap": {"name": "held-out", "key": "data.jsonl"}}}


def with_monitoring(**monitoring):
    doc = copy.deepcopy(GM)
    doc["spec"]["monitoring"] = {"dataset": DATASET, **monitoring}
    return doc


def messages(doc):
    return [f"{p.path}: {p.message}" for p in validate_object(doc)]


def test_defaults_are_the_documented_ones():
    m = GPTModel.from_dict(with_monitoring()).spec.monitoring
    assert (m.interval_seconds, m.metrics, m.tolerance, m.action) == (3600, ["perplexity", "bleu"], 0.1, "alert")
    assert (m.input_drift.psi_threshold, m.input_drift.min_requests) == (0.2, 20)
    assert m.dataset.format == "prompt-completion" and m.dataset.max_samples == 64
    assert messages(with_monitoring()) == []


@pytest.mark.parametrize(("monitoring", "says"), [
    ({"intervalSeconds": 10}, "intervalSeconds"),
    ({"action": "page"}, "action"),
    ({"tolerance": -0.5}, "tolerance"),
    ({"inputDrift": {"psiThreshold": 0}}, "psiThreshold must be greater than 0"),
    ({"metrics": ["bleu"], "dataset": {**DATASET, "format": "text"}}, "bleu needs prompt/reference pairs"),
])
def test_bad_monitoring_is_refused_naming_the_field(monitoring, says):
    found = messages(with_monitoring(**monitoring))
    assert any(says in m for m in found), found


def test_the_model_refuses_bleu_on_text_too():
    with pytest.raises(ValueError, match="bleu needs prompt/reference pairs"):
        GPTModel.from_dict(with_monitoring(metrics=["bleu"], dataset={**DATASET, "format": "text"}))
