"""`gptops status`: the FineTuneJobs and GPTModels of a cluster as two tables (or JSON), read through the kubeconfig.

The reads go through gptops.cluster (imported lazily, the only module that talks to the API); *_rows are pure and
tested without a cluster.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Annotated, Any

import typer

from gptops.api.constants import PLURAL_FINETUNEJOB, PLURAL_GPTMODEL

FTJ_COLUMNS = ("NAMESPACE", "NAME", "MODEL", "PHASE", "PERPLEXITY", "BASELINE", "PASSED", "PROMOTED", "AGE")
GM_COLUMNS = ("NAMESPACE", "NAME", "SERVING", "PREVIOUS", "READY", "ENDPOINT", "AGE")


def age(created: str | None, now: dt.datetime | None = None) -> str:
    """kubectl-style age: 45s, 12m, 3h, 5d."""
    if not created:
        return "-"
    now = now or dt.datetime.now(dt.timezone.utc)
    try:
        then = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return "-"
    s = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def _condition(obj: dict[str, Any], type_: str) -> str:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c.get("status", "Unknown")
    return "-"


def _num(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, int | float) else "-"


def finetunejob_rows(items: list[dict[str, Any]], now: dt.datetime | None = None) -> list[dict[str, str]]:
    """One row per FineTuneJob: its printer-column fields from status."""
    rows = []
    for o in items:
        meta, spec, st = o.get("metadata") or {}, o.get("spec") or {}, o.get("status") or {}
        metrics = st.get("metrics") or {}
        rows.append({
            "NAMESPACE": meta.get("namespace", ""), "NAME": meta.get("name", ""),
            "MODEL": (spec.get("model") or {}).get("name", ""), "PHASE": st.get("phase") or "Pending",
            "PERPLEXITY": _num(metrics.get("perplexity")), "BASELINE": _num(metrics.get("baselinePerplexity")),
            "PASSED": _condition(o, "Passed"), "PROMOTED": _condition(o, "Promoted"),
            "AGE": age(meta.get("creationTimestamp"), now),
        })
    return rows


def gptmodel_rows(items: list[dict[str, Any]], now: dt.datetime | None = None) -> list[dict[str, str]]:
    """One row per GPTModel: what it serves, how many replicas are ready, where."""
    rows = []
    for o in items:
        meta, spec, st = o.get("metadata") or {}, o.get("spec") or {}, o.get("status") or {}
        replicas = (spec.get("serving") or {}).get("replicas", 1)
        rows.append({
            "NAMESPACE": meta.get("namespace", ""), "NAME": meta.get("name", ""),
            "SERVING": st.get("serving") or st.get("servingRevision") or "-",
            "PREVIOUS": st.get("previousRevision") or "-",
            "READY": f"{st.get('readyReplicas') or 0}/{replicas}", "ENDPOINT": st.get("endpoint") or "-",
            "AGE": age(meta.get("creationTimestamp"), now),
        })
    return rows


def finetunejob_summary(o: dict[str, Any]) -> dict[str, Any]:
    """A FineTuneJob for `-o json`: its own field names (camelCase) and types (numbers, null when unknown)."""
    meta, spec, st = o.get("metadata") or {}, o.get("spec") or {}, o.get("status") or {}
    return {
        "namespace": meta.get("namespace"), "name": meta.get("name"),
        "model": (spec.get("model") or {}).get("name"), "phase": st.get("phase") or "Pending",
        "metrics": st.get("metrics") or {}, "revision": (st.get("artifacts") or {}).get("revision"),
        "conditions": {c.get("type"): c.get("status") for c in st.get("conditions") or ()},
        "creationTimestamp": meta.get("creationTimestamp"),
    }


def gptmodel_summary(o: dict[str, Any]) -> dict[str, Any]:
    """A GPTModel for `-o json`: its own field names (camelCase) and types."""
    meta, spec, st = o.get("metadata") or {}, o.get("spec") or {}, o.get("status") or {}
    return {
        "namespace": meta.get("namespace"), "name": meta.get("name"),
        "servingRevision": st.get("servingRevision"), "servingArtifact": st.get("servingArtifact"),
        "servingDigest": st.get("servingDigest"), "previousRevision": st.get("previousRevision"),
        "replicas": (spec.get("serving") or {}).get("replicas", 1), "readyReplicas": st.get("readyReplicas") or 0,
        "endpoint": st.get("endpoint"),
        "conditions": {c.get("type"): c.get("status") for c in st.get("conditions") or ()},
        "creationTimestamp": meta.get("creationTimestamp"),
    }


def status(
    namespace: Annotated[str | None, typer.Option("--namespace", "-n", help="Namespace (default: the kubeconfig's).")]
    = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help="Every namespace.")] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json.")] = "table",
) -> None:
    """Show the FineTuneJobs and GPTModels of the cluster in the kubeconfig."""
    if output not in ("table", "json"):
        raise typer.BadParameter("expected table or json", param_hint="--output")
    from gptops import cluster

    ns = None if all_namespaces else (namespace or cluster.current_namespace())
    try:
        ftjs, models = cluster.list_objects(PLURAL_FINETUNEJOB, ns), cluster.list_objects(PLURAL_GPTMODEL, ns)
    except Exception as e:  # no kubeconfig, unreachable server, CRDs not installed: one line, not a traceback
        reason = getattr(e, "reason", None) or str(e).splitlines()[0]
        typer.echo(f"error: cannot list gptops resources: {type(e).__name__}: {reason}", err=True)
        raise typer.Exit(1) from None
    if output == "json":
        typer.echo(json.dumps({"finetunejobs": [finetunejob_summary(o) for o in ftjs],
                               "gptmodels": [gptmodel_summary(o) for o in models]}, indent=2))
        return
    ftj_rows, gm_rows = finetunejob_rows(ftjs), gptmodel_rows(models)

    from rich.console import Console
    from rich.table import Table

    # A pipe or a file gets whole names, however long the lines: only a terminal's width is worth cutting to.
    console = Console() if sys.stdout.isatty() else Console(width=100_000)
    for title, columns, rows in (("GPTModels", GM_COLUMNS, gm_rows), ("FineTuneJobs", FTJ_COLUMNS, ftj_rows)):
        shown = [c for c in columns if c != "NAMESPACE" or ns is None]
        table = Table(title=title, title_justify="left", box=None, header_style="bold")
        for c in shown:
            table.add_column(c)
        for row in rows:
            table.add_row(*(row[c] for c in shown))
        if rows:
            console.print(table)
        else:
            console.print(f"No {title} found" + (f" in namespace {ns}." if ns else "."))
