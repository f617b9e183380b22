"""One reconcile pass, shared by the per-kind handlers, and waking a parent when something it depends on changed.

A pass is: read the object, observe, plan, apply the actions (events included), write the status. Passes over one
object are serialized here, whatever started them (a kopf handler, a child's watch event, the resync loop), and each
reads the object and writes its status inside the lock: a pass always plans from the status the one before it wrote,
so a transition, and its event, is seen once. (kopf's own `patch.status` would be written after the handler returns,
outside the lock, and kopf's body can be older than a status another pass wrote: either would let two passes see the
same transition.) Follow-up wakes run after the lock is released, so two objects never wait on each other.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import kopf
import pydantic

from gptops import cluster, metrics
from gptops.reconcile.plan import Plan

log = logging.getLogger(__name__)

T = TypeVar("T")
Seen = TypeVar("Seen")
Key = tuple[str, str, str]  # (kind, namespace, name)
#: kind -> the function that runs one pass over the object (namespace, name); it returns the objects to wake next.
Pass = Callable[[str, str], list[Key]]

PASSES: dict[str, Pass] = {}
PLURALS: dict[str, str] = {}
#: Every object the watches have shown this operator (so the resync loop stays in the watched namespaces).
KNOWN: set[Key] = set()

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
        KNOWN.discard(key)
        with _locks_guard:
            _locks.pop(key, None)
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
            body = cluster.get_object(plural, namespace, name)
            if body is None or body.get("metadata", {}).get("deletionTimestamp"):
                result = "ok"
                return None
            try:
                obj = parse(body)
            except pydantic.ValidationError as err:
                raise kopf.PermanentError(f"invalid {kind}: {err}") from err
            decided = plan(obj, observe(obj))
            cluster.apply(decided.actions, body)
            cluster.patch_status(plural, namespace, name, decided.status)
            for event in decided.events:  # each transition once: a rollback, a failed stage, a promotion
                log.log(logging.WARNING if event.type == "Warning" else logging.INFO, "%s kind=%s namespace=%s "
                        "name=%s reason=%s", event.message, kind, namespace, name, event.reason)
        result = "ok"
        return obj, decided
    finally:
        metrics.RECONCILE_TOTAL.labels(kind=kind, result=result).inc()
        if result == "error":
            metrics.RECONCILE_ERRORS_TOTAL.labels(kind=kind).inc()
        metrics.RECONCILE_DURATION_SECONDS.labels(kind=kind).observe(time.monotonic() - started)


def wake(kind: str, namespace: str, name: str, *, depth: int = 0) -> None:
    """Run a pass over an object now, then whatever it wakes in turn."""
    try:
        follow = PASSES[kind](namespace, name)
    except kopf.TemporaryError:
        return  # a concurrent change; the event it caused wakes this object again
    if depth < 2:  # a promotion wakes the GPTModel, which may wake FineTuneJobs; nothing goes deeper
        for key in follow:
            wake(*key, depth=depth + 1)


def wake_owner(kind: str, body: Mapping[str, Any]) -> None:
    """Wake the controller owner (of `kind`) of a child whose watch event arrived."""
    meta = body.get("metadata") or {}
    owner = next((ref for ref in meta.get("ownerReferences") or () if ref.get("kind") == kind
                  and ref.get("controller")), None)
    if owner is not None:
        wake(kind, meta.get("namespace", ""), owner["name"])


def wake_labelled(kind: str, body: Mapping[str, Any], label: str) -> None:
    """Wake the object of `kind` that a grandchild's label names (a stage Pod names its FineTuneJob), if known."""
    meta = body.get("metadata") or {}
    key = (kind, meta.get("namespace", ""), (meta.get("labels") or {}).get(label, ""))
    if key in KNOWN:
        wake(*key)


def wake_all(keys: list[Key]) -> None:
    for key in keys:
        try:
            wake(*key)
        except Exception:  # one object's failure must not stop the others
            log.exception("Reconcile failed kind=%s namespace=%s name=%s", *key)


class Resync:
    """A background thread that wakes every known object every `interval` seconds: level-based passes catch what
    no event announces (and any event that was missed)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gptops-resync", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        metrics.RESYNC_TIMESTAMP_SECONDS.set_to_current_time()
        while not self._stop.wait(self.interval):
            wake_all(sorted(KNOWN))
            metrics.RESYNC_TIMESTAMP_SECONDS.set_to_current_time()
