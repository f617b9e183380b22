"""What keeps the operator cheap at scale without changing what it does: the API server filters the children's
watches by the handlers' own labels; kopf builds no diff base (nothing here reads one); the watch caches keep no
managedFields; a Pod or Job event that changes nothing a plan reads wakes nothing; the resync runs behind the passes
events asked for, and skips a FineTuneJob that had a pass within its interval."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import gptops.handlers  # noqa: F401  (registers the handlers)
import kopf
import pytest
from gptops import cluster
from gptops.handlers import common, indexes, settings
from gptops.handlers import finetunejob as ftj_handlers
from gptops.reconcile.observed import job_state, pod_state
from gptops.reconcile.plan import EmitEvent

NS = "ml"


def _selector_labels(selector: str) -> dict[str, Any]:
    labels: dict[str, Any] = {}
    for part in selector.split(","):
        key, _, value = part.partition("=")
        labels[key] = value if value else kopf.PRESENT
    return labels


def test_every_child_handler_sees_all_it_matched_before_the_api_server_filtered_its_watch() -> None:
    registry = kopf.get_default_registry()
    handlers = [*registry._watching.get_all_handlers(), *registry._indexing.get_all_handlers()]
    s = kopf.OperatorSettings()
    for resource, selector in indexes.WATCH_SELECTORS.items():
        s.watching.label_selectors[resource] = selector
    filtered = 0
    for handler in handlers:
        if handler.selector.group == "gptops.io":
            continue
        resource = kopf.Resource(handler.selector.group or "", handler.selector.version,
                                 handler.selector.any_name)
        [selector] = s.watching.label_selectors.collect(resource)
        # Each label the API server requires, the handler requires too (same value, or present for any value).
        for key, value in _selector_labels(selector).items():
            assert key in (handler.labels or {}), (handler.id, key)
            assert value is kopf.PRESENT or handler.labels[key] == value, (handler.id, key)
        filtered += 1
    assert filtered >= 10  # the Jobs, Pods, Services, Deployments and autoscalers of both kinds


def test_no_handler_needs_the_diff_base_kopf_no_longer_builds() -> None:
    registry = kopf.get_default_registry()
    assert not list(registry._changing.get_all_handlers())  # on.create/update/delete/resume/field
    assert not list(registry._spawning.get_all_handlers())  # daemons, timers
    storage = settings.NoDiffBaseStorage()
    body = kopf.Body({"metadata": {"name": "x"}, "spec": {"a": 1}})
    assert storage.build(body=body) == {} and storage.fetch(body=body) is None


def test_the_watch_cache_of_an_object_keeps_all_a_pass_reads_but_managed_fields_and_last_applied() -> None:
    body = {"apiVersion": "gptops.io/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": "run", "namespace": NS, "uid": "u", "resourceVersion": "7", "generation": 2,
                         "labels": {"team": "a"},
                         "annotations": {"gptops.io/approved": "true",
                                         "kubectl.kubernetes.io/last-applied-configuration": "{...}" * 100},
                         "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"model": {"name": "m"}}, "status": {"phase": "Training"}}
    cached = asyncio.run(indexes.gptops_finetunejob_bodies(namespace=NS, name="run", body=kopf.Body(body)))[(NS, "run")]
    assert cached.version == "7"
    kept = cached.load()
    assert "managedFields" not in kept["metadata"]
    assert kept["metadata"]["annotations"] == {"gptops.io/approved": "true"}
    assert {k: v for k, v in kept["metadata"].items() if k != "annotations"} == {
        k: v for k, v in body["metadata"].items() if k not in ("annotations", "managedFields")}
    assert kept["spec"] == body["spec"] and kept["status"] == body["status"]
    assert "managedFields" in body["metadata"]  # the watch's event itself is left alone


def test_an_event_waiting_to_be_posted_keeps_only_what_posting_it_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(cluster, "api_client", lambda: None)
    monkeypatch.setattr(cluster, "_raw", lambda call, namespace, manifest: sent.append(
        {k: v for k, v in manifest.items() if not k.endswith("Timestamp")}))
    body = {"apiVersion": "gptops.io/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": "run", "namespace": NS, "uid": "u", "labels": {"team": "a"}},
            "spec": {"model": {"name": "m"}}, "status": {"phase": "Training"}}
    event = EmitEvent("Normal", "JobCreated", "created Job run-prepare-1")
    poster = common.EventPoster()  # not started: what waits stays in its queue
    poster.post((event,), body)
    waiting, subject = poster._queue.get_nowait()
    assert waiting == event and set(subject) == {"apiVersion", "kind", "metadata"}
    assert set(subject["metadata"]) == {"name", "namespace", "uid"}
    cluster.post_event(subject, event)
    cluster.post_event(body, event)
    assert sent[0] == sent[1]


POD = {"metadata": {"name": "run-prepare-x", "namespace": NS, "uid": "pod-1", "creationTimestamp": "t0",
                    "labels": {"gptops.io/finetunejob": "run", "batch.kubernetes.io/job-name": "run-prepare-1"}},
       "status": {"phase": "Pending"}}


def _pod(**status: Any) -> dict[str, Any]:
    return {**POD, "status": status}


def test_a_pod_starting_wakes_nothing_and_its_result_or_a_problem_wakes_its_finetunejob(
        monkeypatch: pytest.MonkeyPatch) -> None:
    woken: list[tuple[str, ...]] = []
    monkeypatch.setattr(common, "enqueue", lambda *key, **_: woken.append(key))
    monkeypatch.setattr(common, "KNOWN", {("FineTuneJob", NS, "run")})
    ftj_handlers.SEEN.forget("pod-1")

    def event(body: dict[str, Any]) -> int:
        before = len(woken)
        asyncio.run(ftj_handlers.stage_pod_event(body=kopf.Body(body), type="MODIFIED", uid="pod-1"))
        return len(woken) - before

    assert event(_pod(phase="Pending")) == 0  # new, with nothing to say yet
    assert event(_pod(phase="Pending", conditions=[{"type": "PodScheduled", "status": "True"}])) == 0
    assert event(_pod(phase="Pending", containerStatuses=[
        {"state": {"waiting": {"reason": "ContainerCreating"}}}])) == 0
    assert event(_pod(phase="Running", containerStatuses=[{"state": {"running": {}}}])) == 0
    assert event(_pod(phase="Running", containerStatuses=[
        {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}])) == 1
    assert event(_pod(phase="Succeeded", containerStatuses=[
        {"state": {"terminated": {"reason": "Completed", "exitCode": 0, "message": "{\"ok\": true}"}}}])) == 1
    assert pod_state(_pod(phase="Pending")).plan_inputs() == pod_state(_pod(phase="Running")).plan_inputs()
    # A Pod first seen when it already cannot be scheduled wakes its FineTuneJob at once.
    ftj_handlers.SEEN.forget("pod-1")
    assert event(_pod(phase="Pending", conditions=[{"type": "PodScheduled", "status": "False",
                                                    "reason": "Unschedulable", "message": "0/2 nodes"}])) == 1


def test_a_job_event_wakes_its_finetunejob_when_it_starts_or_ends_not_when_its_pod_counts_move() -> None:
    base = {"metadata": {"name": "run-prepare-1", "labels": {"gptops.io/stage": "prepare"},
                         "creationTimestamp": "t0"}, "status": {}}

    def inputs(**status: Any) -> tuple[Any, ...]:
        return job_state({**base, "status": status}).plan_inputs()

    started = {"startTime": "t1", "active": 1}
    assert inputs() != inputs(**started)
    assert inputs(**started) == inputs(startTime="t1", active=1, ready=1, terminating=0)
    criteria = {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": "t2"}
    assert inputs(**started) == inputs(startTime="t1", active=0, succeeded=1, conditions=[criteria])
    complete = {"type": "Complete", "status": "True", "lastTransitionTime": "t3"}
    assert inputs(startTime="t1", conditions=[criteria]) != inputs(startTime="t1", completionTime="t3",
                                                                    conditions=[criteria, complete])
    failed = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "m"}
    assert inputs(**started) != inputs(startTime="t1", conditions=[failed])
    assert job_state({**base, "spec": {"suspend": True}}).plan_inputs() != inputs()


def _queue_runs(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], threading.Event]:
    runs: list[str] = []
    gate = threading.Event()

    def one_pass(namespace: str, name: str) -> None:
        if name == "blocker":
            gate.wait(5)
        runs.append(name)

    monkeypatch.setitem(common.PASSES, "Test", one_pass)
    return runs, gate


def _wait(cond: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cond()


def test_a_resync_round_runs_behind_every_pass_an_event_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    runs, gate = _queue_runs(monkeypatch)
    queue = common.WorkQueue(1, (0.01,))
    queue.start()
    try:
        queue.add(("Test", NS, "blocker"))  # the one worker is busy
        _wait(lambda: queue.depth() == 0)
        for i in range(5):
            assert queue.add(("Test", NS, f"old-{i}"), background=True) == "queued"
        assert queue.add(("Test", NS, "old-0"), background=True) == "merged"
        queue.add(("Test", NS, "new"))  # a new object's event, after the resync round
        queue.add(("Test", NS, "old-3"))  # an event for one waiting in the resync round: it moves up
        gate.set()
        _wait(lambda: len(runs) == 7)
        assert runs[:3] == ["blocker", "new", "old-3"]
        assert sorted(runs[3:]) == ["old-0", "old-1", "old-2", "old-4"]  # each once
    finally:
        gate.set()
        queue.stop()


def test_the_first_pass_of_a_new_object_runs_ahead_of_the_events_of_objects_passed_before(
        monkeypatch: pytest.MonkeyPatch) -> None:
    runs, gate = _queue_runs(monkeypatch)
    known = {("Test", NS, f"old-{i}") for i in range(3)}
    monkeypatch.setattr(common, "KNOWN", known | {("Test", NS, "blocker")})
    queue = common.WorkQueue(1, (0.01,))
    queue.start()
    try:
        gate.set()
        for key in sorted(known):  # each has had its first pass
            queue.add(key)
        _wait(lambda: len(runs) == 3)
        gate.clear()
        queue.add(("Test", NS, "blocker"))  # the one worker is busy
        _wait(lambda: queue.depth() == 0)
        for key in sorted(known):  # their Jobs moved: a thousand runs' children would queue the same way
            assert queue.add(key) == "queued"
        queue.add(("Test", NS, "new"))  # applied after them
        gate.set()
        _wait(lambda: len(runs) == 8)
        assert runs[3:5] == ["blocker", "new"]
        assert runs[5:] == ["old-0", "old-1", "old-2"]
    finally:
        gate.set()
        queue.stop()


def test_workers_kept_for_first_passes_start_a_new_object_while_a_burst_of_events_holds_the_rest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[str] = []
    gate = threading.Event()

    def one_pass(namespace: str, name: str) -> None:
        started.append(name)
        if name.startswith("old"):
            gate.wait(5)

    monkeypatch.setitem(common.PASSES, "Test", one_pass)
    old = [("Test", NS, f"old-{i}") for i in range(4)]
    monkeypatch.setattr(common, "KNOWN", set(old))
    queue = common.WorkQueue(3, (0.01,), first_pass_workers=1)
    for key in old:  # their first passes, done
        queue._ended[key] = time.monotonic()
    queue.start()
    try:
        for key in old:  # a burst of their children's events
            assert queue.add(key) == "queued"
        _wait(lambda: len(started) == 2)
        time.sleep(0.2)
        assert sorted(started) == ["old-0", "old-1"]  # two of three workers: the third is kept
        queue.add(("Test", NS, "new"))
        _wait(lambda: "new" in started)  # at once, while the burst still holds two workers
        assert len(started) == 3
        gate.set()
        _wait(lambda: len(started) == 5)
        assert sorted(started[3:]) == ["old-2", "old-3"]
    finally:
        gate.set()
        queue.stop()


def test_the_queue_reports_how_long_each_lane_waited(monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import REGISTRY

    def waited(lane: str) -> tuple[float, float]:
        labels = {"kind": "Test", "lane": lane}
        return (REGISTRY.get_sample_value("gptops_reconcile_queue_seconds_count", labels) or 0.0,
                REGISTRY.get_sample_value("gptops_reconcile_queue_seconds_sum", labels) or 0.0)

    runs, gate = _queue_runs(monkeypatch)
    monkeypatch.setattr(common, "KNOWN", {("Test", NS, "old"), ("Test", NS, "blocker")})
    queue = common.WorkQueue(1, (0.01,))
    queue.start()
    try:
        gate.set()
        queue.add(("Test", NS, "old"))
        _wait(lambda: runs == ["old"])
        gate.clear()
        before = {lane: waited(lane) for lane in ("first", "event", "background")}
        queue.add(("Test", NS, "blocker"))  # a first pass, holding the one worker
        _wait(lambda: queue.depth() == 0)
        queue.add(("Test", NS, "new"))
        queue.add(("Test", NS, "old"))
        queue.add(("Test", NS, "idle"), background=True)
        time.sleep(0.2)
        gate.set()
        _wait(lambda: len(runs) == 5)
        after = {lane: waited(lane) for lane in before}
        count, seconds = (a - b for a, b in zip(after["first"], before["first"]))
        assert count == 2 and seconds >= 0.2  # the blocker's own wait, and the new one's behind it
        count, seconds = (a - b for a, b in zip(after["event"], before["event"]))
        assert count == 1 and seconds >= 0.2
        count, seconds = (a - b for a, b in zip(after["background"], before["background"]))
        assert count == 1 and seconds >= 0.2
    finally:
        gate.set()
        queue.stop()


def test_the_resync_skips_an_object_whose_last_pass_is_recent_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    runs, _ = _queue_runs(monkeypatch)
    key = ("Test", NS, "run")
    monkeypatch.setattr(common, "KNOWN", {key})
    queue = common.WorkQueue(1, (0.01,))
    queue.start()
    try:
        queue.add(key)
        _wait(lambda: runs == ["run"])
        time.sleep(0.05)
        assert queue.add(key, background=True, fresh_within=60) == "fresh"
        assert queue.add(key, background=True, fresh_within=0.01) == "queued"  # its pass is older than that
        _wait(lambda: runs == ["run", "run"])
        queue.forget(key)  # deleted: nothing is kept of it
        assert queue.add(key, background=True, fresh_within=60) == "queued"
    finally:
        queue.stop()


def _ftj(name: str, *, passed: bool = False, started: bool = True, generation: int = 1) -> Any:
    """What gptops_finetunejobs_by_model keeps of such a FineTuneJob."""
    status: dict[str, Any] = {}
    if started:
        status = {"observedGeneration": 1, "artifacts": {"revision": f"r-{name}"},
                  "stages": {"prepare": {"jobName": f"{name}-prepare-r"}}}
    if passed:
        status["conditions"] = [{"type": "Passed", "status": "True", "reason": "ThresholdsMet", "message": "ok",
                                 "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    body = {"apiVersion": "gptops.io/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": generation},
            "spec": {"model": {"name": "m"}, "dataset": {"source": {"pvc": {"claimName": "d", "path": "c.jsonl"}}}},
            "status": status}
    indexed = asyncio.run(indexes.gptops_finetunejobs_by_model(namespace=NS, name=name, spec=body["spec"],
                                                               body=kopf.Body(body)))
    return indexed[(NS, "m")]


def test_a_promotion_wakes_the_finetunejobs_whose_plan_reads_what_the_gptmodel_serves(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from gptops.handlers import gptmodel as gm_handlers

    runs = [_ftj("running"), _ftj("passed", passed=True), _ftj("waiting", started=False),
            _ftj("edited", generation=2), _ftj("old-served"), _ftj("new-served")]
    monkeypatch.setattr(indexes, "bound", lambda: True)
    monkeypatch.setattr(indexes, "_read", lambda index, key: runs
                        if index == "gptops_finetunejobs_by_model" and key == (NS, "m") else [])
    woken: list[str] = []
    monkeypatch.setattr(common, "enqueue", lambda kind, ns, name, *_, **__: woken.append(name)
                        if kind == "FineTuneJob" else None)
    gm_handlers.SEEN.forget(("FineTuneJob", ("GPTModel", NS, "m")))

    def event(generation: int, **status: Any) -> list[str]:
        woken.clear()
        body = {"metadata": {"name": "m", "namespace": NS, "uid": "uid-m", "generation": generation},
                "spec": {}, "status": status}
        asyncio.run(gm_handlers.gptmodel_event(type="MODIFIED", name="m", namespace=NS, uid="uid-m",
                                               body=kopf.Body(body)))
        return sorted(woken)

    everyone = sorted(f.name for f in runs)
    assert event(1, servingRevision="old-served") == everyone  # it appeared: FineTuneJobs may wait for it
    assert event(1, servingRevision="old-served", phase="x") == []  # nothing it serves changed
    # A promotion: the run it served before and the one it serves now, the runs that passed, the runs not started.
    assert event(1, servingRevision="new-served", previousRevision=None) == [
        "edited", "new-served", "old-served", "passed", "waiting"]
    assert event(2, servingRevision="new-served") == everyone  # its spec changed


def test_a_stage_recording_its_outputs_wakes_the_gptmodel_only_once_the_run_passed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    woken: list[tuple[str, ...]] = []
    monkeypatch.setattr(common, "enqueue", lambda *key, **_: woken.append(key[:3]))
    key = ("FineTuneJob", NS, "run")
    ftj_handlers.SEEN.forget(key)
    ftj_handlers.SEEN.forget(("GPTModel", key))

    def event(status: dict[str, Any]) -> list[tuple[str, ...]]:
        woken.clear()
        body = {"metadata": {"name": "run", "namespace": NS, "uid": "uid-run", "generation": 1},
                "spec": {"model": {"name": "m"}}, "status": status}
        asyncio.run(ftj_handlers.finetunejob_event(type="MODIFIED", name="run", namespace=NS, uid="uid-run",
                                                   body=kopf.Body(body)))
        return [k for k in woken if k[0] == "GPTModel"]

    waiting = [{"type": "Passed", "status": "Unknown", "reason": "Waiting", "message": "waiting"}]
    passed = [{"type": "Passed", "status": "True", "reason": "ThresholdsMet", "message": "ok"}]
    assert event({"observedGeneration": 1, "conditions": waiting}) == [("GPTModel", NS, "m")]  # first seen
    assert event({"observedGeneration": 1, "conditions": waiting,
                  "artifacts": {"revision": "r", "dataset": "/d"}}) == []  # the prepare stage's output
    assert event({"observedGeneration": 1, "conditions": waiting,
                  "artifacts": {"revision": "r", "dataset": "/d", "model": "/m"}}) == []  # the train stage's
    assert event({"observedGeneration": 1, "conditions": passed,
                  "artifacts": {"revision": "r", "dataset": "/d", "model": "/m"}}) == [("GPTModel", NS, "m")]
    assert event({"observedGeneration": 1, "conditions": passed,
                  "artifacts": {"revision": "r", "dataset": "/d", "model": "/m", "digest": "sha256:1"}}) == [
        ("GPTModel", NS, "m")]  # what it would serve changed


def test_a_pass_after_a_status_write_starts_from_what_the_write_returned_until_the_watch_shows_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def obj(version: str, phase: str) -> dict[str, Any]:
        return {"metadata": {"name": "run", "namespace": NS, "resourceVersion": version}, "status": {"phase": phase}}

    cache = {"body": obj("1", "Pending")}
    gets: list[str] = []
    monkeypatch.setattr(indexes, "bound", lambda: True)
    monkeypatch.setattr(indexes, "_read", lambda index, key: [indexes.CachedBody.of(cache["body"])])
    monkeypatch.setattr(indexes.cluster, "get_object", lambda *key: gets.append(key[2]) or obj("9", "from GET"))
    plural = "finetunejobs"
    indexes.forget_written(plural, NS, "run")

    assert indexes.current_body(plural, NS, "run")["status"]["phase"] == "Pending"  # nothing written yet
    indexes.note_written(plural, NS, "run", obj("2", "Preparing"))
    # The watch still shows version 1: the pass plans from the status it wrote, without a GET.
    assert indexes.current_body(plural, NS, "run")["status"]["phase"] == "Preparing" and not gets
    cache["body"] = obj("2", "Preparing")  # the watch caught up
    assert indexes.current_body(plural, NS, "run")["metadata"]["resourceVersion"] == "2" and not gets
    indexes.note_written(plural, NS, "run", obj("3", "Training"))
    cache["body"] = obj("4", "Training")  # a change after the write (someone else's, or a relist): ask the API
    assert indexes.current_body(plural, NS, "run")["status"]["phase"] == "from GET" and gets == ["run"]
    indexes.forget_written(plural, NS, "run")


def test_resync_rounds_that_never_drain_keep_one_entry_per_waiting_object() -> None:
    queue = common.WorkQueue(1, (0.01,))  # not started: nothing drains
    keys = [("Test", NS, f"run-{i}") for i in range(600)]
    for _ in range(10):  # ten resync rounds, each object then woken by an event (it moves to the front lane)
        for key in keys:
            queue.add(key, background=True)
        for key in keys:
            queue.add(key)
        queue._ready.clear()
        queue._waiting.clear()
    assert len(queue._background) <= 2 * len(keys) + 1000


def test_a_gptmodel_pass_sees_its_finetunejobs_as_the_watch_last_showed_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from gptops.api import FineTuneJob, GPTModel

    from tests.reconcile.reconcile_world import GPTMODEL, passed_finetunejob

    bodies = {name: passed_finetunejob(name) for name in ("a", "b")}
    bodies["bad"] = {**passed_finetunejob("bad"), "spec": {"model": {"name": "tiny"}, "nonsense": 1}}
    stores: dict[tuple[str, Any], list[Any]] = {}
    for name, body in bodies.items():
        for index in (indexes.gptops_finetunejobs_by_model, indexes.gptops_finetunejob_bodies):
            kept = asyncio.run(index(namespace="ml", name=name, spec=body["spec"], body=kopf.Body(body)))
            for key, value in kept.items():
                stores.setdefault((index.__name__, key), []).append(value)
    monkeypatch.setattr(indexes, "bound", lambda: True)
    monkeypatch.setattr(indexes, "_read", lambda index, key: list(stores.get((index, key), [])))
    monkeypatch.setattr(cluster, "observe_monitoring", lambda *_: ((), ()))
    monkeypatch.setattr(cluster, "observe_keda", lambda *_: (None, None))
    monkeypatch.setattr(cluster, "observe_artifacts_claim", lambda *_: None)

    observed = indexes.observe_gptmodel(GPTModel.from_dict(GPTMODEL))
    assert observed.finetunejobs == (FineTuneJob.from_dict(bodies["a"]), FineTuneJob.from_dict(bodies["b"]))
    assert indexes.finetunejobs_of("ml", "tiny") == ["a", "b", "bad"]
    assert indexes.finetunejobs_reading_serving("ml", "tiny", set()) == ["a", "b", "bad"]  # passed, or unreadable
