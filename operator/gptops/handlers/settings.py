"""Operator-wide kopf settings (DESIGN §4): gptops.io storage names, finite retries and timeouts, watch timeouts,
events; and the API connection of cluster.py. Tunable by environment for tests and small clusters."""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf

from gptops import cluster
from gptops.api.constants import FINALIZER, KOPF_STORAGE_PREFIX


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


#: Seconds between two level-based passes over an object when nothing woke it (timers).
RESYNC_SECONDS = _env_float("GPTOPS_RESYNC_SECONDS", 15.0)
#: How long the API server keeps a watch open before kopf reconnects.
WATCH_SERVER_TIMEOUT = _env_float("GPTOPS_WATCH_SERVER_TIMEOUT", 300.0)
#: Retries of a failing create/update/resume handler before kopf gives up on that change.
HANDLER_RETRIES = 10
HANDLER_TIMEOUT = 600.0
HANDLER_BACKOFF = 5.0


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Storage under gptops.io, finite timeouts, events from gptops; connect cluster.py."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_STORAGE_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_STORAGE_PREFIX, key="last-handled-configuration")
    settings.watching.server_timeout = WATCH_SERVER_TIMEOUT
    settings.watching.client_timeout = WATCH_SERVER_TIMEOUT + 30
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 30
    settings.queueing.error_delays = (1, 2, 5, 10, 20, 30, 60)
    settings.execution.max_workers = 8
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = "gptops"
    settings.posting.event_name_prefix = "gptops-"
    cluster.configure(os.environ.get("KUBECONFIG"))
