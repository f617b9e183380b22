"""`gptops operator`: run kopf with these handlers, the metrics server and kopf's liveness endpoint."""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence

import kopf

from gptops import metrics


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
    import gptops.handlers  # noqa: F401  (registers the handlers)

    metrics.serve(metrics_port)
    kopf.run(
        standalone=True,
        # kopf would name itself after the login name, which a numeric image user (65532, no /etc/passwd entry) lacks.
        identity=f"gptops@{socket.gethostname()}",
        clusterwide=all_namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=f"http://0.0.0.0:{health_port}/healthz",
    )
