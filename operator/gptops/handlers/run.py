"""`gptops operator`: run kopf with these handlers, the metrics server and kopf's liveness endpoint."""

from __future__ import annotations

import collections
import ctypes
import gc
import logging
import os
import socket
import threading
import time
import tracemalloc
from collections.abc import Sequence

import kopf

from gptops import metrics
from gptops.handlers import common, settings  # registers the handlers (the package imports them all)


def run_operator(namespaces: Sequence[str], *, all_namespaces: bool, metrics_port: int = metrics.DEFAULT_PORT,
                 health_port: int = 8081, verbose: bool = False) -> None:
    """Block running the operator (one replica: standalone, no peering)."""
    if not namespaces and not all_namespaces:
        raise ValueError("give --namespace NS (repeatable) or --all-namespaces")
    if namespaces and all_namespaces:
        raise ValueError("--namespace and --all-namespaces exclude each other")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:  # kopf says "Handler ... succeeded" for every watch event; our passes log what changed
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.install_watch_filter()

    _limit_malloc_arenas()
    _map_large_blocks()
    _return_freed_memory(settings.env_float(TRIM_ENV, TRIM_SECONDS))
    if os.environ.get(TRACEMALLOC_ENV):
        _trace_memory(os.environ[TRACEMALLOC_ENV])
    metrics.serve(metrics_port)
    kopf.run(
        standalone=True,
        # kopf would name itself after the login name, which a numeric image user (65532, no /etc/passwd entry) lacks.
        identity=f"gptops@{socket.gethostname()}",
        clusterwide=all_namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=f"http://0.0.0.0:{health_port}/healthz",
    )


#: A file name: trace the operator's allocations (slow: for measurements only) and write the largest sites there.
TRACEMALLOC_ENV = "GPTOPS_TRACEMALLOC"


def _trace_memory(path: str, interval: float = 20.0, top: int = 40) -> None:
    """Every `interval` seconds while traced memory is at a new peak, rewrite `path` with the allocation sites
    (file:line) holding the most memory and the commonest types of the objects the garbage collector tracks."""
    tracemalloc.start(1)

    def run() -> None:
        peak = 0
        while True:
            time.sleep(interval)
            current, _ = tracemalloc.get_traced_memory()
            if current <= peak:
                continue
            peak = current
            stats = tracemalloc.take_snapshot().statistics("lineno")
            lines = [f"traced {current / 2**20:.1f} MiB at {time.strftime('%H:%M:%S')}"]
            lines += [f"{s.size / 2**20:8.2f} MiB {s.count:9d} {s.traceback[0].filename}:{s.traceback[0].lineno}"
                      for s in stats[:top]]
            kinds = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
            lines += ["objects the collector tracks, by type:"] + [f"{n:9d} {k}" for k, n in kinds.most_common(top)]
            with open(path, "w") as out:
                out.write("\n".join(lines) + "\n")

    threading.Thread(target=run, name="gptops-tracemalloc", daemon=True).start()


#: glibc's malloc arenas for the operator's threads (its default: 8 per core, each keeping its own freed memory).
MALLOC_ARENAS = 2


def _limit_malloc_arenas() -> None:
    """Have the pass workers' and kopf's threads share MALLOC_ARENAS arenas (as MALLOC_ARENA_MAX would; the
    threads start after this), so that memory freed in one thread is reused by the others instead of each arena
    growing to its own peak."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        ctypes.CDLL(None).mallopt(-8, MALLOC_ARENAS)  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc
        pass


#: Bytes from which glibc's malloc maps a block of its own, returned to the system when freed (its default).
MMAP_THRESHOLD = 128 * 1024


def _map_large_blocks() -> None:
    """Keep glibc's threshold for blocks of their own at MMAP_THRESHOLD. glibc raises it to the size of each such
    block freed (up to 32 MiB): after kopf's first 1 MiB watch-stream read, every later one is carved from the
    heap, where it stays resident among smaller live blocks once freed."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        ctypes.CDLL(None).mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD: set, it is no longer raised
    except (OSError, AttributeError):  # not glibc
        pass


#: Seconds between two returns of the C heap's free pages to the system (0: never).
TRIM_ENV, TRIM_SECONDS = "GPTOPS_MALLOC_TRIM_SECONDS", 10.0


def _return_freed_memory(interval: float) -> None:
    """Every `interval` seconds, give the pages glibc's malloc holds free back to the system (malloc_trim). glibc
    returns on its own only the free memory at the top of each arena's heap; what the watch streams' chunks and
    decoded events freed below live objects stays resident, so the process would keep its largest burst's size."""
    if interval <= 0:
        return

    def run() -> None:
        while True:
            time.sleep(interval)
            common.trim_heap()

    threading.Thread(target=run, name="gptops-malloc-trim", daemon=True).start()
