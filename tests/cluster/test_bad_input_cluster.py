"""Generated GPTModels and FineTuneJobs, valid and invalid, go to `gptops validate` and to the real API server
(server-side dry-run create): the same decision and the same messages for every one; every admitted one parses and
goes through the planners, and a sample of them through the running operator, without an exception."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from crd_documents import BASES, documents
from gptops.api import FineTuneJob, GPTModel
from gptops.api.constants import GROUP, KIND_FINETUNEJOB, KIND_GPTMODEL
from gptops.cli import app
from gptops.reconcile import (
    ObservedFineTuneJob,
    ObservedGPTModel,
    plan_finetunejob,
    plan_gptmodel,
)
from gptops.validate import validate_object
from hypothesis import HealthCheck, given, settings
from operator_kit import running_operator
from typer.testing import CliRunner
from waiting import wait_for

pytestmark = pytest.mark.cluster

EXAMPLES = 1200
PLURALS = {KIND_GPTMODEL: "gptmodels", KIND_FINETUNEJOB: "finetunejobs"}
NOW = "2026-01-01T00:00:00Z"
UNCHECKED = "some validation rules were not checked"


def server_problems(api: Any, namespace: str, doc: dict[str, Any]) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """(field, message) of every cause the API server gives for refusing `doc` (none when it admits it), and what it
    would store (defaults applied) when it admits it."""
    from kubernetes.client import ApiException

    try:
        stored = api.create_namespaced_custom_object(GROUP, "v1alpha1", namespace, PLURALS[doc["kind"]], doc,
                                                     dry_run="All", field_validation="Strict")
    except ApiException as err:
        status = json.loads(err.body)
        if status.get("reason") == "BadRequest" and "strict decoding error" in status.get("message", ""):
            return [(f, f'unknown field "{f.rsplit(".", 1)[-1]}"')
                    for f in re.findall(r'unknown field "([^"]+)"', status["message"])], {}
        assert status.get("reason") == "Invalid", status
        return [(_field(c.get("field", ""), c.get("message", "")), c.get("message", ""))
                for c in status["details"]["causes"] if UNCHECKED not in c.get("message", "")], {}
    return [], stored


def _field(field: str, message: str) -> str:
    """The field of a cause; for a few schema errors the API server leaves it out ("<nil>") and names it in the
    message instead."""
    named = re.search(r'(?: in |")(spec\.[^\s"]+)', message)
    return named.group(1) if field == "<nil>" and named else field


def same_message(ours: tuple[str, str], theirs: tuple[str, str]) -> bool:
    """The same field and the same message; a CEL rule's message may come after the value the API server shows, and
    a value outside an enum may be written differently (Go's syntax) before the supported values."""
    (our_path, our_message), (their_path, their_message) = ours, theirs
    if our_path != their_path:
        return False
    if our_message.startswith("Unsupported value") and their_message.startswith("Unsupported value"):
        return our_message.split("supported values: ")[-1] == their_message.split("supported values: ")[-1]
    return their_message.endswith(our_message)


def divergence(ours: list[tuple[str, str]], theirs: list[tuple[str, str]]) -> str | None:
    """Why `gptops validate` and the API server disagree about a document, or None when they agree."""
    if bool(ours) != bool(theirs):
        return f"validate: {ours or 'admitted'}; API server: {theirs or 'admitted'}"
    unmatched = [t for t in theirs if not any(same_message(o, t) for o in ours)]
    extra = [o for o in ours if not any(same_message(o, t) for t in theirs)]
    if unmatched or extra:
        return f"messages differ: only the API server: {unmatched}; only validate: {extra}"
    return None


def plan_admitted(doc: dict[str, Any]) -> None:
    """The models parse what the API server admitted (with its defaults), and the planners' first pass runs."""
    meta = {"namespace": "ml", "uid": "uid-1", "generation": 1}
    if doc["kind"] == KIND_GPTMODEL:
        model = GPTModel.from_dict({**doc, "metadata": {**doc["metadata"], **meta}})
        plan_gptmodel(model, ObservedGPTModel(now=NOW, deployment=None, service=False, finetunejobs=(),
                                              monitor_jobs=(), serving_pods=(), autoscaler=None))
        return
    ftj = FineTuneJob.from_dict({**doc, "metadata": {**doc["metadata"], **meta}})
    for base in BASES[KIND_GPTMODEL]:
        model = GPTModel.from_dict({**base, "metadata": {"name": ftj.spec.model.name, **meta}})
        plan_finetunejob(ftj, ObservedFineTuneJob(now=NOW, jobs={}, services=frozenset(), model=model))


def test_generated_documents_get_the_same_decision_and_messages(control_plane, crds, namespace, tmp_path: Path):
    api = _custom_objects(control_plane)
    counts: Counter[str] = Counter()
    admitted: list[dict[str, Any]] = []

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(doc=documents())
    def check(doc: dict[str, Any]) -> None:
        ours = [((p.path if p.path != "<root>" else "<nil>"), p.message) for p in validate_object(doc)]
        theirs, stored = server_problems(api, namespace, doc)
        why = divergence(ours, theirs)
        assert why is None, f"{why}\n{yaml.safe_dump(doc)}"
        counts["tried"] += 1
        counts[doc["kind"]] += 1
        if ours:
            counts["refused"] += 1
            return
        counts["admitted"] += 1
        plan_admitted(stored)
        admitted.append(doc)

    check()
    print(f"\nbad input: {dict(counts)}")
    assert counts["tried"] >= 1000 and counts[KIND_GPTMODEL] >= 300 and counts[KIND_FINETUNEJOB] >= 300
    assert counts["refused"] >= 300 and counts["admitted"] >= 200

    # The command itself, over files: the same decision per file as above.
    files = []
    for i, doc in enumerate(admitted[:50]):
        path = tmp_path / f"doc-{i}.yaml"
        path.write_text(yaml.safe_dump(doc))
        files.append(str(path))
    result = CliRunner().invoke(app, ["validate", "-o", "json", *files])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["checked"] == len(files)


def _custom_objects(plane: Any) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(plane.api_client())


def test_admitted_documents_are_reconciled_by_the_operator_without_an_exception(control_plane, k, monkeypatch):
    """A sample of generated documents that the API server admits, applied with the operator running: each gets its
    conditions from a pass, and no handler raises."""
    sample: list[dict[str, Any]] = []

    @settings(max_examples=150, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(doc=documents())
    def collect(doc: dict[str, Any]) -> None:
        if not validate_object(doc) and len(sample) < 24:
            sample.append(doc)

    collect()
    models = [d for d in sample if d["kind"] == KIND_GPTMODEL]
    assert len(models) >= 4 and len(sample) - len(models) >= 4
    for i, doc in enumerate(sample):
        doc["metadata"] = {"name": f"{'gm' if doc['kind'] == KIND_GPTMODEL else 'ftj'}-{i}"}
    for i, doc in enumerate(d for d in sample if d["kind"] == KIND_FINETUNEJOB):
        doc["spec"]["model"]["name"] = models[i % len(models)]["metadata"]["name"]  # some start, some wait
    with running_operator(k, control_plane.kubeconfig, monkeypatch) as runner:
        k.apply(*sample)
        for doc in sample:
            plural, name = PLURALS[doc["kind"]], doc["metadata"]["name"]
            wait_for(lambda p=plural, n=name: ((k.get(p, n) or {}).get("status") or {}).get("conditions"),
                     f"{doc['kind']}/{name} to get conditions from a pass", 120)
    # The operator's log is complete once it has stopped.
    assert "failed with an exception" not in runner.output and "Traceback" not in runner.output, \
        runner.output[-4000:]
