"""Operator-wide kopf settings (DESIGN §4): gptops.io storage names, finite retries and timeouts, watch timeouts,
events; the API connection of cluster.py; the resync loop. Tunable by environment for tests and small clusters.

No timers or daemons: kopf would put a finalizer on every object, and a stopped operator would block deletes."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import kopf

try:  # kopf's internals: the watch filter below depends on them (kopf 1.45); without them it is left out
    from kopf._cogs.clients import watching
except ImportError:  # pragma: no cover - another kopf
    watching = None  # type: ignore[assignment]

from gptops import cluster
from gptops.api.constants import FINALIZER, KIND_FINETUNEJOB, KOPF_STORAGE_PREFIX
from gptops.handlers import common, indexes


log = logging.getLogger(__name__)


def env_float(name: str, default: float) -> float:
    """A number from the environment, else `default`; a value that is no number names the variable."""
    value = os.environ.get(name)
    try:
        return float(value) if value else default
    except ValueError:
        raise ValueError(f"{name}={value!r}: give a number of seconds or workers, such as {default:g}") from None


#: Seconds between two passes over every object when no event woke it (controller-runtime's resync period).
RESYNC_ENV, RESYNC_SECONDS = "GPTOPS_RESYNC_SECONDS", 60.0
#: How long the API server keeps a watch open before kopf reconnects.
WATCH_TIMEOUT_ENV, WATCH_SERVER_TIMEOUT = "GPTOPS_WATCH_SERVER_TIMEOUT", 300.0
#: Threads that run passes (most of a pass waits on the API server).
WORKERS_ENV, WORKERS = "GPTOPS_WORKERS", 16
#: Of those, how many only the first pass of a new object may use (its first Job is what its user waits for).
FIRST_PASS_WORKERS_ENV, FIRST_PASS_WORKERS = "GPTOPS_FIRST_PASS_WORKERS", 4
#: Seconds an idle kopf per-object worker waits for that object's next event before it exits (kopf's default: 5).
IDLE_WORKER_SECONDS = 0.5
#: Seconds before a failed pass runs again, one per retry; after the last, the next event or resync wakes it.
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 60.0, 60.0, 60.0)

#: Seconds between kopf's retries of a failing API request, watches included: 1 to 8 s, then every 10 s, for about
#: ten minutes in all. A kube-apiserver or etcd restart is waited out by the same process, which reconnects within
#: 10 s of the API server's return (kopf's default gives up after 54 s: its watcher fails and the whole operator
#: stops); past this, kopf stops and `gptops operator` exits with the error, for its Deployment to restart it.
API_ERROR_BACKOFFS = (1.0, 1.0, 2.0, 3.0, 5.0, 8.0) + (10.0,) * 60

_resync: common.Resync | None = None


class NoDiffBaseStorage(kopf.DiffBaseStorage):
    """A diff base for an operator without change-detection handlers: nothing is built, stored or read, so a watch
    event costs no copy of its object."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def drop_managed_fields(watch: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    """kopf's listing-and-watching of a resource, each object without metadata.managedFields, dropped as soon as it
    is decoded. No handler or pass reads it (kopf's own patches do not either), and it is a third to a half of a
    Pod's or Job's decoded size: the events waiting in kopf's per-object queues during a burst hold that much less.
    """

    async def watch_without(**kwargs: Any) -> AsyncIterator[Any]:
        async with contextlib.aclosing(watch(**kwargs)) as events:  # type: ignore[type-var]
            async for event in events:
                obj = event.get("object") if isinstance(event, dict) else None
                if isinstance(obj, dict) and isinstance(obj.get("metadata"), dict):
                    obj["metadata"].pop("managedFields", None)
                yield event

    return watch_without


def install_watch_filter() -> bool:
    """Have kopf's watches drop managedFields (once per process). It wraps a function inside kopf (kopf 1.45's
    `continuous_watch`, which its watchers look up at each reconnect): where another kopf moved it, the operator runs
    without the filter, with more memory per event, and says so."""
    watch = getattr(watching, "continuous_watch", None)
    if watch is None:
        log.warning("kopf %s has no _cogs.clients.watching.continuous_watch: watch events keep their managedFields",
                    getattr(kopf, "__version__", "?"))
        return False
    if not getattr(watch, "drops_managed_fields", False):
        watching.continuous_watch = drop_managed_fields(watch)  # type: ignore[assignment]
        watching.continuous_watch.drops_managed_fields = True  # type: ignore[attr-defined]
    return True


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a Pod its ServiceAccount, else $KUBECONFIG read now (the client library reads it once, at import)."""
    info = kopf.login_with_service_account(**kwargs)
    if info is not None:
        return in_cluster_server(info, os.environ)
    return kopf.login_with_kubeconfig(**kwargs)


def in_cluster_server(info: kopf.ConnectionInfo, environ: Mapping[str, str]) -> kopf.ConnectionInfo:
    """The API server at the `kubernetes` Service's address from the environment the kubelet gives every Pod, as
    client-go's in-cluster config and cluster.py's client find it; kopf's own default, kubernetes.default.svc, needs
    cluster DNS."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT") or "443"
    if not host:
        return info
    host = f"[{host}]" if ":" in host else host
    return dataclasses.replace(info, server=f"https://{host}:{port}")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
    """Storage under gptops.io, finite timeouts, events from gptops; connect cluster.py; bind the watch caches;
    start the pass workers and the resync loop."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_STORAGE_PREFIX)
    # kopf builds a diff base (a deep copy of the whole object) on every watch event, for change-detection handlers
    # (on.create/update/...). There are none here (every handler is on.event or an index): build nothing.
    settings.persistence.diffbase_storage = NoDiffBaseStorage()
    watch_timeout = int(env_float(WATCH_TIMEOUT_ENV, WATCH_SERVER_TIMEOUT))  # the API server wants an integer
    settings.watching.server_timeout = watch_timeout
    settings.watching.client_timeout = watch_timeout + 30
    settings.watching.connect_timeout = 30
    for resource, selector in indexes.WATCH_SELECTORS.items():
        settings.watching.label_selectors[resource] = selector
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 30
    settings.networking.error_backoffs = API_ERROR_BACKOFFS
    settings.queueing.error_delays = (1, 2, 5, 10, 20, 30, 60)
    settings.execution.max_workers = 4  # kopf's own pool: every handler here is async and only queues
    # kopf keeps a worker (a task holding the object's last raw event) per object that had an event in the last
    # idle_timeout seconds (5 by default): thousands of Jobs and Pods at once at scale. The handlers only queue.
    settings.queueing.idle_timeout = IDLE_WORKER_SECONDS
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = "gptops"
    settings.posting.event_name_prefix = "gptops-"
    workers = int(env_float(WORKERS_ENV, WORKERS))
    cluster.configure(os.environ.get("KUBECONFIG"), pool_size=workers + 2)
    common.KNOWN.clear()
    indexes.bind(kwargs)
    common.EVENTS = common.EventPoster()
    common.EVENTS.start()
    common.QUEUE = common.WorkQueue(workers, RETRY_DELAYS,
                                    first_pass_workers=int(env_float(FIRST_PASS_WORKERS_ENV, FIRST_PASS_WORKERS)))
    common.QUEUE.start()
    global _resync
    # A FineTuneJob's plan reads no clock (a GPTModel's does: rollout deadlines, monitoring schedules).
    _resync = common.Resync(env_float(RESYNC_ENV, RESYNC_SECONDS), event_driven=(KIND_FINETUNEJOB,))
    _resync.start()


@kopf.on.cleanup()
def stop(**_: Any) -> None:
    """Stop the resync loop and the pass workers with the operator; unbind the watch caches."""
    if _resync is not None:
        _resync.stop()
    if common.QUEUE is not None:
        common.QUEUE.stop()
        common.QUEUE = None
    if common.EVENTS is not None:
        common.EVENTS.stop()
        common.EVENTS = None
    indexes.unbind()
