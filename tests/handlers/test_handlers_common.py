"""Passes over one object, whatever started them, are serialized and plan from the status the one before wrote:
each transition, and its event, is posted once. Runs the real handlers and planner against an in-memory API."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import kopf
import pytest

from gptops import cluster, metrics
from gptops.api import GPTModel
from gptops.api.constants import KIND_FINETUNEJOB, KIND_GPTMODEL, PLURAL_FINETUNEJOB, PLURAL_GPTMODEL
from gptops.handlers import common
from gptops.handlers import finetunejob as ftj_handlers
from gptops.handlers import gptmodel as gm_handlers
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

    def create(self, manifest: dict[str, Any]) -> bool:
        """Like the API server: False (AlreadyExists) for a name that exists."""
        name = manifest["metadata"]["name"]
        with self.guard:
            created = name not in self.jobs
            self.jobs.setdefault(name, JobState(name=name, stage=manifest["metadata"]["labels"]["gptops.io/stage"],
                                                active=1))
            return created

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


def finetunejob_event(body: dict[str, Any]) -> None:
    """Deliver a FineTuneJob's watch event as kopf would (no work queue runs here: what it queues runs at once)."""
    asyncio.run(ftj_handlers.finetunejob_event(type="MODIFIED", name=body["metadata"]["name"], namespace=NS,
                                               uid=body["metadata"]["uid"], body=copy.deepcopy(body)))


def test_concurrent_passes_post_each_event_once(api: FakeAPI) -> None:
    # The FineTuneJob's event, a Job's watch event and the resync loop wake the same FineTuneJob at once.
    def kopf_handler() -> None:
        finetunejob_event(api.objects[PLURAL_FINETUNEJOB])

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
    # Its GPTModel hears of it when the watch shows a change that the promotion reads, not of every status write.
    woken_before = len(api.woken)
    finetunejob_event(api.objects[PLURAL_FINETUNEJOB])
    assert len(api.woken) == woken_before
    conditions = {c["type"]: c["status"] for c in api.objects[PLURAL_FINETUNEJOB]["status"]["conditions"]}
    assert conditions["Prepared"] == "True"

    # A later pass with nothing new posts nothing.
    woken()
    assert len(api.events) == 3


def test_a_job_already_created_is_not_announced_again_by_a_pass_whose_cache_lags(
        api: FakeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    common.wake(KIND_FINETUNEJOB, NS, "tiny-ft")  # creates the prepare Job and announces it
    jobs, events = list(api.jobs), list(api.events)
    assert jobs and [reason for reason, _ in events].count("JobCreated") == len(jobs)

    # A later pass observes no Job yet (its watch cache is behind, as on a loaded API server): it plans the Job
    # again, the create meets AlreadyExists, and nobody is told twice that it was created.
    observe = api.observe_finetunejob
    monkeypatch.setattr(cluster, "observe_finetunejob", lambda ftj: dataclasses.replace(observe(ftj), jobs={}))
    common.wake(KIND_FINETUNEJOB, NS, "tiny-ft")
    assert list(api.jobs) == jobs
    assert api.events == events


def test_a_pass_that_changes_nothing_writes_no_status(api: FakeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    common.wake(KIND_FINETUNEJOB, NS, "tiny-ft")  # creates the prepare Job
    common.wake(KIND_FINETUNEJOB, NS, "tiny-ft")  # sees it running
    writes: list[dict[str, Any]] = []
    monkeypatch.setattr(cluster, "patch_status", lambda plural, ns, name, status: writes.append(status))
    common.wake(KIND_FINETUNEJOB, NS, "tiny-ft")
    assert writes == []


def test_the_status_check_follows_merge_patch_rules() -> None:
    current = {"phase": "Training", "stages": {"prepare": {"job": "a"}}, "metrics": None}
    assert not common.changes_status(current, {"phase": "Training", "stages": {"prepare": {"job": "a"}}})
    assert not common.changes_status(current, {"metrics": None, "gone": None})
    assert common.changes_status(current, {"stages": {"prepare": {"job": "b"}}})
    assert common.changes_status(current, {"phase": None})
    assert common.changes_status(current, {"conditions": []})
    stored = {"conditions": [{"type": "Prepared", "status": "True"}]}  # the API server dropped the null
    assert not common.changes_status(stored, {"conditions": [{"type": "Prepared", "status": "True", "message": None}]})


def test_the_work_queue_runs_a_key_once_at_a_time_and_again_when_added_meanwhile(
        monkeypatch: pytest.MonkeyPatch) -> None:
    running, runs, overlaps = set(), [], []
    gate = threading.Event()

    def one_pass(namespace: str, name: str) -> None:
        if name in running:
            overlaps.append(name)
        running.add(name)
        runs.append(name)
        if name == "slow":
            gate.wait(5)
        running.discard(name)

    monkeypatch.setitem(common.PASSES, "Test", one_pass)
    queue = common.WorkQueue(4, (0.01,))
    queue.start()
    try:
        queue.add(("Test", NS, "slow"))
        deadline = time.monotonic() + 5
        while "slow" not in runs and time.monotonic() < deadline:
            time.sleep(0.01)
        for _ in range(5):  # added while it runs: one more run, after
            queue.add(("Test", NS, "slow"))
        for _ in range(5):  # another object does not wait behind it, and runs once
            queue.add(("Test", NS, "fast"))
        while runs.count("fast") < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert runs.count("fast") == 1 and runs.count("slow") == 1
        gate.set()
        while runs.count("slow") < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        assert runs.count("slow") == 2 and runs.count("fast") == 1 and not overlaps
    finally:
        gate.set()
        queue.stop()


def test_a_failed_pass_is_retried_after_its_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[float] = []

    def one_pass(namespace: str, name: str) -> None:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise RuntimeError("the API server is away")

    monkeypatch.setitem(common.PASSES, "Test", one_pass)
    queue = common.WorkQueue(2, (0.05, 0.2))
    queue.start()
    try:
        queue.add(("Test", NS, "flaky"))
        deadline = time.monotonic() + 5
        while len(attempts) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(attempts) == 3
        assert attempts[1] - attempts[0] >= 0.05 and attempts[2] - attempts[1] >= 0.2
    finally:
        queue.stop()


@pytest.mark.parametrize("plural, one_pass, condition", [
    (PLURAL_GPTMODEL, gm_handlers.one_pass, ("Degraded", "True")),
    (PLURAL_FINETUNEJOB, ftj_handlers.one_pass, ("Failed", "True")),
], ids=["GPTModel", "FineTuneJob"])
def test_a_spec_this_operator_cannot_parse_is_refused_with_a_condition_naming_the_field(
        api: FakeAPI, plural: str, one_pass: Any, condition: tuple[str, str]) -> None:
    """A CRD newer than the operator admits a field the operator does not know: the object says so in its status,
    not only in the operator's log."""
    api.objects[plural]["spec"]["newerField"] = {"rank": 8}
    name = api.objects[plural]["metadata"]["name"]
    with pytest.raises(kopf.PermanentError, match=r"spec\.newerField"):
        one_pass(NS, name)
    status = api.objects[plural]["status"]
    refused = next(c for c in status["conditions"] if c["type"] == condition[0])
    assert (refused["status"], refused["reason"]) == (condition[1], "InvalidSpec")
    assert "spec.newerField: Extra inputs are not permitted" in refused["message"]
    assert status["observedGeneration"] == 1
    if plural == PLURAL_FINETUNEJOB:
        assert status["phase"] == "Failed"
    assert api.jobs == {}

    # Another pass over the same spec writes nothing more.
    written = copy.deepcopy(status)
    with pytest.raises(kopf.PermanentError):
        one_pass(NS, name)
    assert api.objects[plural]["status"] == written
