"""Passes over one object, whatever started them, are serialized and plan from the status the one before wrote:
each transition, and its event, is posted once. Runs the real handlers and planner against an in-memory API."""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gptops import cluster, metrics
from gptops.api import GPTModel
from gptops.api.constants import KIND_FINETUNEJOB, KIND_GPTMODEL, PLURAL_FINETUNEJOB, PLURAL_GPTMODEL
from gptops.handlers import common
from gptops.handlers import finetunejob as ftj_handlers
from gptops.reconcile import JobState, ObservedFineTuneJob, PodState

NS = "ml"
GPTMODEL = {
    "apiVersion": "gptops.io/v1alpha1", "kind": "GPTModel",
    "metadata": {"name": "tiny", "namespace": NS, "uid": "uid-gm", "generation": 1},
    "spec": {"source": {"huggingface": {"repo": "sshleifer/tiny-gpt2"}},
             "artifacts": {"pvc": {"claimName": "gptops-artifacts"}}},
}
FINETUNEJOB = {
    "apiVersion": "gptops.io/v1alpha1", "kind": "FineTuneJob",
    "metadata": {"name": "tiny-ft", "namespace": NS, "uid": "uid-ftj", "generation": 1},
    "spec": {"model": {"name": "tiny"}, "dataset": {"source": {"pvc": {"claimName": "data", "path": "c.jsonl"}}}},
}


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class FakeAPI:
    """The two objects, the Jobs created and the events posted, behind the functions of cluster.py the pass uses.
    Observing is slow, so passes that are not serialized overlap."""

    def __init__(self) -> None:
        self.objects = {PLURAL_GPTMODEL: copy.deepcopy(GPTMODEL), PLURAL_FINETUNEJOB: copy.deepcopy(FINETUNEJOB)}
        self.jobs: dict[str, JobState] = {}
        self.events: list[tuple[str, str]] = []
        self.woken: list[str] = []
        self.guard = threading.Lock()

    def get_object(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.guard:
            return copy.deepcopy(self.objects[plural])

    def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        with self.guard:
            obj = self.objects[plural]
            obj["status"] = merge(obj.get("status") or {}, status)

    def create(self, manifest: dict[str, Any]) -> None:
        name = manifest["metadata"]["name"]
        with self.guard:
            self.jobs.setdefault(name, JobState(name=name, stage=manifest["metadata"]["labels"]["gptops.io/stage"],
                                                active=1))

    def observe_finetunejob(self, ftj: Any) -> ObservedFineTuneJob:
        with self.guard:
            jobs = dict(self.jobs)
        time.sleep(0.05)
        return ObservedFineTuneJob(now="2026-01-01T00:00:00Z", jobs=jobs, services=frozenset(),
                                   model=GPTModel.from_dict(self.objects[PLURAL_GPTMODEL]))

    def post_event(self, body: Any, event: Any) -> None:
        with self.guard:
            self.events.append((event.reason, event.message))


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAPI]:
    fake = FakeAPI()
    for name in ("get_object", "patch_status", "create", "observe_finetunejob", "post_event"):
        monkeypatch.setattr(cluster, name, getattr(fake, name))
    # A FineTuneJob pass with news wakes its GPTModel; here only that it asked is recorded.
    monkeypatch.setitem(common.PASSES, KIND_GPTMODEL, lambda ns, name: fake.woken.append(name) or [])
    yield fake
    metrics.forget_finetunejob(NS, "tiny-ft")  # the passes counted it by phase


def at_once(*starters: Any) -> None:
    """Run the starters in threads at the same time; re-raise what any of them raised."""
    errors: list[BaseException] = []

    def run(start: Any) -> None:
        try:
            start()
        except BaseException as err:  # noqa: BLE001 (handed to the test)
            errors.append(err)

    threads = [threading.Thread(target=run, args=(start,)) for start in starters]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_concurrent_passes_post_each_event_once(api: FakeAPI) -> None:
    # A kopf handler, a Job's watch event and the resync loop wake the same FineTuneJob at once.
    def kopf_handler() -> None:
        ftj_handlers.reconcile(name="tiny-ft", namespace=NS)

    def woken() -> None:
        common.wake(KIND_FINETUNEJOB, NS, "tiny-ft")

    at_once(kopf_handler, woken, woken)
    [prepare] = api.jobs
    assert prepare.startswith("tiny-ft-prepare-")
    assert [reason for reason, _ in api.events] == ["JobCreated"]

    # The prepare Job succeeds: one Prepared=True event, one train Job and its event.
    api.jobs[prepare] = JobState(name=prepare, stage="prepare", succeeded=1,
                                 conditions=({"type": "Complete", "status": "True"},),
                                 pods=(PodState(name=f"{prepare}-x", phase="Succeeded",
                                                message=json.dumps({"apiVersion": "gptops.io/stage-result/v1",
                                                                    "stage": "prepare", "ok": True,
                                                                    "message": f"Job {prepare} succeeded"})),))
    at_once(woken, kopf_handler, woken)
    train = next(j for j in api.jobs if j != prepare)
    key = prepare.rsplit("-", 1)[1]
    assert sorted(api.events) == sorted([
        ("JobCreated", f"Created Job {prepare} for the prepare stage of revision {key}"),
        ("JobCreated", f"Created Job {train} for the train stage of revision {key}"),
        ("JobSucceeded", f"Prepared=True: Job {prepare} succeeded"),
    ])
    assert set(api.woken) == {"tiny"}  # its GPTModel heard of the news
    conditions = {c["type"]: c["status"] for c in api.objects[PLURAL_FINETUNEJOB]["status"]["conditions"]}
    assert conditions["Prepared"] == "True"

    # A later pass with nothing new posts nothing.
    woken()
    assert len(api.events) == 3
