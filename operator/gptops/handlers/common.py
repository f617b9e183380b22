"""One reconcile pass, shared by the per-kind handlers: parse, observe, plan, apply, write status, count.
Handlers stay thin; this is the only place that turns failures into kopf's retry signals."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import kopf
import pydantic

from gptops import cluster, metrics
from gptops.reconcile.plan import Plan

T = TypeVar("T")
O = TypeVar("O")


def run_pass(
    kind: str,
    body: Mapping[str, Any],
    patch: kopf.Patch,
    *,
    parse: Callable[[dict[str, Any]], T],
    observe: Callable[[T], O],
    plan: Callable[[T, O], Plan],
) -> tuple[T, Plan]:
    """observe -> plan -> apply the actions -> put the status into kopf's patch. Raises kopf's errors."""
    started = time.monotonic()
    result = "error"
    try:
        try:
            obj = parse(dict(body))
        except pydantic.ValidationError as err:
            raise kopf.PermanentError(f"invalid {kind}: {err}") from err
        decided = plan(obj, observe(obj))
        cluster.apply(decided.actions, body)
        patch.status.update(decided.status)
        result = "ok"
        return obj, decided
    except cluster.Conflict as err:
        result = "conflict"
        raise kopf.TemporaryError(str(err), delay=1) from err
    finally:
        metrics.RECONCILE_TOTAL.labels(kind=kind, result=result).inc()
        if result == "error":
            metrics.RECONCILE_ERRORS_TOTAL.labels(kind=kind).inc()
        metrics.RECONCILE_DURATION_SECONDS.labels(kind=kind).observe(time.monotonic() - started)
