"""One reconcile pass, shared by the per-kind handlers, and the work queue that runs passes.

A pass is: read the object, observe (from the watch caches, handlers/indexes.py), plan, apply the actions (events
included), write the status if it changed. Passes over one object are serialized here, whatever started them (a watch
event of the object or of a child, the resync loop), and each reads the object and writes its status inside the lock:
a pass always plans from the status the one before it wrote, so a transition, and its event, is seen once.

kopf's handlers only put keys on the work queue (controller-runtime's workqueue): a key waiting there is queued once
however often it is added, one worker runs it at a time, a key added while it runs is run again afterwards, and a
failed pass comes back after a backoff. So kopf's event loop never waits on a pass, and a pass never waits behind the
passes of other objects longer than the queue is deep.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import heapq
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import kopf
import pydantic

from gptops import cluster, metrics
from gptops.api.conditions import DEGRADED, FAILED, TRUE, Reason, conditions_to_dicts, set_condition
from gptops.api.constants import KIND_FINETUNEJOB, KIND_GPTMODEL
from gptops.handlers import indexes
from gptops.reconcile import derive_phase
from gptops.reconcile.plan import Plan

log = logging.getLogger(__name__)

T = TypeVar("T")
Seen = TypeVar("Seen")
Key = tuple[str, str, str]  # (kind, namespace, name)
#: kind -> the function that runs one pass over the object (namespace, name).
Pass = Callable[[str, str], None]

PASSES: dict[str, Pass] = {}
PLURALS: dict[str, str] = {}
#: Every object the watches have shown this operator (so the resync loop stays in the watched namespaces).
KNOWN: set[Key] = set()

#: How many deletes the watches have shown (the resync thread releases memory once they stop coming).
DELETED = [0]
RELEASE_CHECK_SECONDS = 5.0

#: kind -> the condition (type, status) that says a spec was refused.
REFUSAL_CONDITIONS = {KIND_GPTMODEL: (DEGRADED, TRUE), KIND_FINETUNEJOB: (FAILED, TRUE)}

_locks: dict[Key, threading.RLock] = {}
_locks_guard = threading.Lock()


def register(kind: str, plural: str, one_pass: Pass) -> None:
    """Make `wake(kind, ...)` possible for a kind."""
    PASSES[kind] = one_pass
    PLURALS[kind] = plural


def lock_for(key: Key) -> threading.RLock:
    with _locks_guard:
        return _locks.setdefault(key, threading.RLock())


def track(kind: str, event_type: str, namespace: str, name: str) -> None:
    """Remember (or forget) an object the watch shows."""
    key = (kind, namespace, name)
    if event_type == "DELETED":
        DELETED[0] += 1
        KNOWN.discard(key)
        with _locks_guard:
            _locks.pop(key, None)
        if QUEUE is not None:
            QUEUE.forget(key)
    else:
        KNOWN.add(key)


def run_pass(
    kind: str,
    namespace: str,
    name: str,
    *,
    parse: Callable[[dict[str, Any]], T],
    observe: Callable[[T], Seen],
    plan: Callable[[T, Seen], Plan],
) -> tuple[T, Plan] | None:
    """Under the object's lock: read it, observe -> plan -> apply the actions -> write the status. None when the
    object is gone or going. Raises kopf's errors."""
    started = time.monotonic()
    result = "error"
    plural = PLURALS[kind]
    try:
        with lock_for((kind, namespace, name)):
            body = indexes.current_body(plural, namespace, name)
            if body is None or body.get("metadata", {}).get("deletionTimestamp"):
                result = "ok"
                return None
            try:
                obj = parse(body)
            except pydantic.ValidationError as err:
                refusal = refused_status(kind, body, err)
                if changes_status(body.get("status") or {}, refusal):
                    indexes.note_written(plural, namespace, name,
                                         cluster.patch_status(plural, namespace, name, refusal))
                raise kopf.PermanentError(f"invalid {kind}: {refusal_message(err)}") from err
            decided = plan(obj, observe(obj))
            if EVENTS is not None:  # children first; the events go out behind every pass's Jobs
                existed = cluster.apply(decided.changes, body)
            else:
                existed = cluster.apply(decided.actions, body)
            # A child another pass created (this pass's cache had not seen it yet) was announced by that pass.
            events = tuple(e for e in decided.events if e.child is None or e.child not in existed)
            if EVENTS is not None:
                EVENTS.post(events, body)
            indexes.note_created(decided.actions, body)
            if changes_status(body.get("status") or {}, decided.status):
                indexes.note_written(plural, namespace, name,
                                     cluster.patch_status(plural, namespace, name, decided.status))
            for event in events:  # each transition once: a rollback, a failed stage, a promotion
                log.log(logging.WARNING if event.type == "Warning" else logging.INFO, "%s kind=%s namespace=%s "
                        "name=%s reason=%s", event.message, kind, namespace, name, event.reason)
        result = "ok"
        return obj, decided
    finally:
        metrics.RECONCILE_TOTAL.labels(kind=kind, result=result).inc()
        if result == "error":
            metrics.RECONCILE_ERRORS_TOTAL.labels(kind=kind).inc()
        metrics.RECONCILE_DURATION_SECONDS.labels(kind=kind).observe(time.monotonic() - started)


def refusal_message(err: pydantic.ValidationError) -> str:
    """Each problem as `field.path: message`, e.g. `spec.serving.lora: Extra inputs are not permitted`."""
    return "; ".join(f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in err.errors())


def refused_status(kind: str, body: Mapping[str, Any], err: pydantic.ValidationError) -> dict[str, Any]:
    """The status of an object this operator cannot parse (a CRD newer than the operator admits fields it does not
    know): its other conditions kept, the kind's summary condition saying InvalidSpec with the fields named, so
    `kubectl get`/`describe` shows why nothing happens."""
    conditions = (body.get("status") or {}).get("conditions") or []
    generation = (body.get("metadata") or {}).get("generation")
    type_, status = REFUSAL_CONDITIONS[kind]
    updated = set_condition(conditions, type_, status, Reason.INVALID_SPEC,
                            f"this operator cannot act on the spec: {refusal_message(err)}",
                            observed_generation=generation)
    status: dict[str, Any] = {"conditions": conditions_to_dicts(updated), "observedGeneration": generation}
    if kind == KIND_FINETUNEJOB:  # the PHASE column says Failed, as for any other failed run
        status["phase"] = derive_phase(updated, started=True)
    return status


def changes_status(current: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    """Whether merge-patching `patch` onto `current` changes anything (None deletes a key; dicts merge; the API
    server drops null fields inside what it stores, e.g. in a condition, so they are not compared)."""
    for key, value in patch.items():
        if value is None:
            if current.get(key) is not None:
                return True
        elif isinstance(value, Mapping) and isinstance(current.get(key), Mapping):
            if changes_status(current[key], value):
                return True
        elif current.get(key) != _without_nulls(value):
            return True
    return False


def _without_nulls(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_without_nulls(v) for v in value]
    return value


def wake(kind: str, namespace: str, name: str) -> None:
    """Run a pass over an object now, in this thread."""
    PASSES[kind](namespace, name)


def enqueue(kind: str, namespace: str, name: str, source: str, *, background: bool = False,
            fresh_within: float = 0.0) -> None:
    """Have a pass over an object run soon: on the work queue when the operator runs it, else now. `source` names
    what asked (a bounded label: "own", a child's or another kind's name, "resync"). A `background` pass runs only
    when no other pass waits, and not at all when one ended within `fresh_within` seconds."""
    if QUEUE is not None:
        outcome = QUEUE.add((kind, namespace, name), background=background, fresh_within=fresh_within)
    else:
        outcome = "ran"
        wake(kind, namespace, name)
    metrics.RECONCILE_WAKES_TOTAL.labels(kind=kind, source=source, outcome=outcome).inc()


def enqueue_owner(kind: str, body: Mapping[str, Any], source: str) -> None:
    """Queue the controller owner (of `kind`) of a child whose watch event arrived."""
    meta = body.get("metadata") or {}
    owner = next((ref for ref in meta.get("ownerReferences") or () if ref.get("kind") == kind
                  and ref.get("controller")), None)
    if owner is not None:
        enqueue(kind, meta.get("namespace", ""), owner["name"], source)


def enqueue_labelled(kind: str, body: Mapping[str, Any], label: str, source: str) -> None:
    """Queue the object of `kind` that a grandchild's label names (a stage Pod names its FineTuneJob), if known."""
    meta = body.get("metadata") or {}
    key = (kind, meta.get("namespace", ""), (meta.get("labels") or {}).get(label, ""))
    if key in KNOWN:
        enqueue(*key, source)


class Changes:
    """What the watch last showed of each object, as a small comparable value, so an event that changes nothing
    a pass reads wakes nothing (a Pod's heartbeat, our own status write echoing back)."""

    def __init__(self) -> None:
        self._seen: dict[Any, Any] = {}
        self._guard = threading.Lock()

    def changed(self, key: Any, value: Any) -> bool:
        """Record `value` for `key`; whether it differs from the one recorded before (True the first time)."""
        with self._guard:
            before = self._seen.get(key, _MISSING)
            self._seen[key] = value
            return before != value

    def swap(self, key: Any, value: Any) -> Any:
        """Record `value` for `key`; the value recorded before (a sentinel that equals nothing the first time)."""
        with self._guard:
            before = self._seen.get(key, _MISSING)
            self._seen[key] = value
            return before

    def forget(self, key: Any) -> None:
        with self._guard:
            self._seen.pop(key, None)


_MISSING = MISSING = object()  # what Changes.swap returns for a key seen the first time


class WorkQueue:
    """Keys (kind, namespace, name) waiting for a pass, and the worker threads that run them. Three lanes: the first
    pass of an object this operator has not passed yet (a new FineTuneJob's first Job is what its user waits for),
    passes that something asked for (an event), and background passes (the resync) that run only when the other
    lanes are empty, so that neither the children's events of a thousand runs nor a resync round over them delays
    the pass of a new object. `first_pass_workers` of the workers are kept for first passes: the other lanes never
    hold every worker at once. How long each pass waited is in gptops_reconcile_queue_seconds, by lane."""

    def __init__(self, workers: int, retry_delays: tuple[float, ...], *, first_pass_workers: int = 0) -> None:
        self.retry_delays = retry_delays
        # The other lanes run on at most this many workers at once: the rest stay free for first passes, which would
        # otherwise wait for a worker whenever a burst of events (a thousand runs' Jobs) or a resync round took all.
        self._other_limit = max(1, workers - first_pass_workers)
        self._others = 0  # passes of the other lanes running
        self._first_running: set[Key] = set()
        self._cond = threading.Condition()
        self._new: collections.deque[Key] = collections.deque()  # never passed yet
        self._ready: collections.deque[Key] = collections.deque()
        self._waiting: set[Key] = set()  # in _new or _ready
        self._background: collections.deque[Key] = collections.deque()
        self._idle: set[Key] = set()  # in _background (and not in _ready)
        self._running: set[Key] = set()
        self._dirty: set[Key] = set()  # added while running: run again after
        self._later: list[tuple[float, Key]] = []  # (when, key): retries after a backoff
        self._failures: dict[Key, int] = {}
        self._ended: dict[Key, float] = {}  # when its last pass ended
        self._since: dict[Key, tuple[float, str]] = {}  # waiting or dirty: since when, and in which lane
        self._stop = False
        self._threads = [threading.Thread(target=self._work, name=f"gptops-pass-{i}", daemon=True)
                         for i in range(workers)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)

    def add(self, key: Key, delay: float = 0.0, *, background: bool = False, fresh_within: float = 0.0) -> str:
        """Queue `key`; what became of it: "queued", "merged" (it was waiting already), "rerun" (a pass over it is
        running: it runs again after), "later" (after `delay`), "fresh" (background, and a pass ended within
        `fresh_within` seconds: none is needed)."""
        with self._cond:
            if background:
                ended = self._ended.get(key)
                if ended is not None and time.monotonic() - ended < fresh_within:
                    return "fresh"
                if key in self._running or key in self._waiting or key in self._idle:
                    return "merged"  # the pass running now reads the state the resync would
                if len(self._background) > 2 * len(self._idle) + 1000:  # entries of keys that moved to the front
                    self._background = collections.deque(dict.fromkeys(k for k in self._background
                                                                       if k in self._idle))
                self._idle.add(key)
                self._background.append(key)
                self._since[key] = (time.monotonic(), "background")
                outcome = "queued"
            elif delay > 0:
                heapq.heappush(self._later, (time.monotonic() + delay, key))
                outcome = "later"
            elif key in self._running:
                self._dirty.add(key)
                self._since.setdefault(key, (time.monotonic(), "event"))
                outcome = "rerun"
            elif key not in self._waiting:
                self._idle.discard(key)  # moves to the front lane (its entry in the background lane is skipped)
                self._waiting.add(key)
                lane = "event" if key in self._ended else "first"
                (self._ready if lane == "event" else self._new).append(key)
                since = self._since.get(key)  # a background wait that an event moved to the front keeps its start
                self._since[key] = (since[0] if since else time.monotonic(), lane)
                outcome = "queued"
            else:
                outcome = "merged"
            self._cond.notify()
            return outcome

    def forget(self, key: Key) -> None:
        """Drop what is remembered of a deleted object."""
        with self._cond:
            self._ended.pop(key, None)
            self._failures.pop(key, None)
            if key not in self._waiting and key not in self._idle and key not in self._dirty:
                self._since.pop(key, None)

    def depth(self) -> int:
        with self._cond:
            return len(self._new) + len(self._ready) + len(self._idle)

    def _next(self) -> Key | None:
        with self._cond:
            while not self._stop:
                now = time.monotonic()
                while self._later and self._later[0][0] <= now:
                    _, key = heapq.heappop(self._later)
                    self._since.setdefault(key, (now, "retry"))
                    if key in self._running:
                        self._dirty.add(key)
                    elif key not in self._waiting:
                        self._idle.discard(key)
                        self._waiting.add(key)
                        self._ready.append(key)
                if self._new:
                    key = self._new.popleft()
                    self._waiting.discard(key)
                    self._first_running.add(key)
                    return self._start(key, now)
                if self._others >= self._other_limit:  # the workers left are kept for first passes
                    self._cond.wait(timeout=1.0)
                    continue
                if self._ready:
                    key = self._ready.popleft()
                    self._waiting.discard(key)
                    self._others += 1
                    return self._start(key, now)
                while self._background:
                    key = self._background.popleft()
                    if key in self._idle:
                        self._idle.discard(key)
                        self._others += 1
                        return self._start(key, now)
                timeout = min(1.0, self._later[0][0] - now) if self._later else 1.0
                self._cond.wait(timeout=max(timeout, 0.01))
            return None

    def _start(self, key: Key, now: float) -> Key:
        """Mark `key` running (the condition's lock held) and record how long it waited."""
        self._running.add(key)
        since, lane = self._since.pop(key, (now, "event"))
        metrics.RECONCILE_QUEUE_SECONDS.labels(kind=key[0], lane=lane).observe(max(0.0, now - since))
        return key

    def _done(self, key: Key, retry_in: float | None) -> None:
        with self._cond:
            self._running.discard(key)
            if key in self._first_running:
                self._first_running.discard(key)
            else:
                self._others -= 1
                self._cond.notify()  # a worker waiting for the other lanes' capacity may go on
            if key in KNOWN:  # not a deleted object's last pass
                self._ended[key] = time.monotonic()
            if key in self._dirty:
                self._dirty.discard(key)
                if key not in self._waiting:
                    self._waiting.add(key)
                    self._ready.append(key)
                    self._cond.notify()
            elif retry_in is not None:
                heapq.heappush(self._later, (time.monotonic() + retry_in, key))
                self._cond.notify()

    def _work(self) -> None:
        while (key := self._next()) is not None:
            retry_in: float | None = None
            try:
                wake(*key)
                self._failures.pop(key, None)
            except kopf.TemporaryError as err:  # a concurrent change: try again shortly
                retry_in = err.delay or self.retry_delays[0]
            except kopf.PermanentError as err:  # a spec the operator cannot act on: its next change wakes it
                self._failures.pop(key, None)
                log.error("Reconcile refused kind=%s namespace=%s name=%s: %s", *key, err)
            except Exception:  # one object's failure must not stop the others
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                log.exception("Reconcile failed kind=%s namespace=%s name=%s attempt=%d", *key, failures)
                if failures <= len(self.retry_delays):
                    retry_in = self.retry_delays[failures - 1]
                else:  # given up until an event or the resync wakes it
                    self._failures.pop(key, None)
            if retry_in is not None:
                metrics.RECONCILE_WAKES_TOTAL.labels(kind=key[0], source="retry", outcome="later").inc()
            self._done(key, retry_in)


class EventPoster:
    """Posts a pass's Events from its own thread, so a pass (and the Job the next pass creates) never waits on them.
    Each Event is still posted once: the pass decided it under the object's lock. Bounded: past `limit` waiting,
    an Event is posted by the pass itself."""

    def __init__(self, limit: int = 10_000) -> None:
        self._queue: queue.Queue[tuple[Any, Mapping[str, Any]] | None] = queue.Queue(maxsize=limit)
        self._thread = threading.Thread(target=self._run, name="gptops-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def post(self, events: tuple[Any, ...], body: Mapping[str, Any]) -> None:
        subject = cluster.event_subject(body) if events else body  # a waiting Event keeps no whole object
        for event in events:
            try:
                self._queue.put_nowait((event, subject))
            except queue.Full:
                cluster.post_event(body, event)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                cluster.post_event(item[1], item[0])
            except Exception:  # best effort, like every Event
                log.exception("Could not post event")


#: The running operator's event poster (None outside `gptops operator`: a pass posts its own).
EVENTS: EventPoster | None = None

#: The running operator's work queue (None outside `gptops operator`: passes then run where they are asked for).
QUEUE: WorkQueue | None = None


class Resync:
    """A background thread that queues every known object every `interval` seconds, in the work queue's background
    lane: level-based passes catch what no event announces (and any event that was missed). The kinds in
    `event_driven` (whose plans read no clock) are skipped when a pass over them ended within the interval: that
    pass was as good as the resync's."""

    def __init__(self, interval: float, event_driven: tuple[str, ...] = ()) -> None:
        self.interval = interval
        self.event_driven = event_driven
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gptops-resync", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        metrics.RESYNC_TIMESTAMP_SECONDS.set_to_current_time()
        next_round = time.monotonic() + self.interval
        deleted = released = DELETED[0]
        while not self._stop.wait(min(RELEASE_CHECK_SECONDS, self.interval)):
            # Deletes came and then stopped for a while: hand their memory back.
            if DELETED[0] == deleted and deleted != released:
                release_memory()
                released = deleted
            deleted = DELETED[0]
            if time.monotonic() >= next_round:
                next_round = time.monotonic() + self.interval
                for key in sorted(KNOWN):
                    enqueue(*key, "resync", background=True,
                            fresh_within=self.interval if key[0] in self.event_driven else 0.0)
                metrics.RESYNC_TIMESTAMP_SECONDS.set_to_current_time()


def trim_heap() -> None:
    """Return the C heap's free pages to the system: glibc's malloc_trim (glibc keeps them otherwise, and RSS never
    falls); nothing where the C library is another."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def release_memory() -> None:
    """Collect garbage (the cycles of deleted objects) and return the freed heap at once, whether or not the
    operator's periodic trim runs (`gptops operator` starts one; GPTOPS_MALLOC_TRIM_SECONDS=0 turns it off)."""
    gc.collect()
    trim_heap()
