"""`gptops monitor FILE`: the live evaluation of the GPTModel that `gptops run FILE` serves, on this machine: the
monitor stage against the local endpoint (one already serving, --endpoint; else the served revision started for the
run and stopped after), its numbers against those the revision was promoted with (its evaluate stage's result), and
the same verdict as the operator's (reconcile.monitoring.judge).

Exit codes: 0 within tolerance, 1 the run failed, 2 the spec file is unusable, 3 drifted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

EXIT_FAILED, EXIT_INVALID, EXIT_DRIFTED = 1, 2, 3


def promotion_values(runs_dir: Path, model: str) -> tuple[str | None, dict[str, float]]:
    """(served revision, its evaluation metrics) as `gptops run` recorded them under `runs_dir`."""
    from gptops.local.state import ModelState, RunState

    state = ModelState.load(runs_dir, model)
    if not state.serving_artifact:
        return None, {}
    run = RunState.load(Path(state.serving_artifact).parent)
    result = ((run.stages.get("evaluate") or {}).get("result") or {}) if run else {}
    metrics = {k: float(v) for k, v in (result.get("metrics") or {}).items() if isinstance(v, (int, float))}
    return state.serving_revision, metrics


def monitor(
    file: Annotated[Path, typer.Argument(help="The spec `gptops run` ran (its GPTModel needs spec.monitoring).",
                                         exists=True, dir_okay=False)],
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where `gptops run` kept its state.")] = Path("runs"),
    endpoint: Annotated[str | None, typer.Option(help="An OpenAI-compatible base URL already serving the model "
                                                 "(http://127.0.0.1:PORT/v1); unset: serve it for this run.")] = None,
    metrics_urls: Annotated[list[str] | None, typer.Option("--metrics-url", help="A vLLM /metrics URL, for input "
                                                           "drift (repeatable).")] = None,
    engine: Annotated[str, typer.Option(help="Without --endpoint: auto, vllm or transformers.")] = "auto",
    output: Annotated[str, typer.Option("--output", "-o", help="table or json.")] = "table",
) -> None:
    """Evaluate the served model live and compare it with the numbers it was promoted with."""
    from gptops.api.gptmodel import Monitoring
    from gptops.local import specs
    from gptops.pipeline import monitor as stage
    from gptops.pipeline.errors import PipelineError
    from gptops.reconcile.monitoring import judge

    console = Console()
    runs_dir = runs_dir.resolve()
    try:
        item = specs.load(file)[0]
        config = stage.config_from_spec(item.model, endpoint or "http://127.0.0.1:1/v1",
                                        metrics_urls=metrics_urls or [],
                                        state_dir=runs_dir / ".monitor" / item.model_name,
                                        run_name=_run_name(), base_dir=item.model_file.parent,
                                        work_dir=runs_dir / ".monitor" / "downloads")
        settings = Monitoring.model_validate(item.model["spec"]["monitoring"])
    except ValueError as e:  # SpecError is one
        console.print(f"[red]{file}: {e}[/red]")
        raise typer.Exit(EXIT_INVALID) from None
    revision, at_promotion = promotion_values(runs_dir, item.model_name)
    if revision is None and endpoint is None:
        console.print(f"[red]GPTModel {item.model_name} serves nothing under {runs_dir}: run `gptops run {file}` "
                      "first, or give --endpoint[/red]")
        raise typer.Exit(EXIT_FAILED)
    server = None
    try:
        if endpoint is None:
            server = _serve(item, runs_dir, engine)
            config.endpoint = server.base_url
        report = stage.run(config)
    except (PipelineError, RuntimeError) as e:
        console.print(f"[red]monitor failed: {e}[/red]")
        raise typer.Exit(EXIT_FAILED) from None
    finally:
        if server is not None:
            server.stop()
    base = {m: at_promotion[m] for m in settings.metrics if m in at_promotion}
    verdict = judge(report.live, base, tolerance=settings.tolerance, psi=report.input_psi,
                    psi_threshold=settings.input_drift.psi_threshold)
    if output == "json":
        print(json.dumps({"model": item.model_name, "revision": revision, "endpoint": config.endpoint,
                          "live": report.live, "atPromotion": base, "change": verdict.change,
                          "inputPsi": report.input_psi, "liveRequests": report.live_requests,
                          "drifted": verdict.drifted, "reasons": verdict.reasons, "notes": report.notes,
                          "samples": report.samples}, indent=2))
    else:
        _print(console, item.model_name, revision, report, base, verdict, settings.action)
    raise typer.Exit(EXIT_DRIFTED if verdict.drifted else 0)


def _print(console: Console, model: str, revision: str | None, report: Any, base: dict[str, float], verdict: Any,
           action: str) -> None:
    table = Table(title=f"GPTModel {model}, revision {revision or 'source'}: live against promotion")
    for column in ("metric", "live", "at promotion", "change"):
        table.add_column(column)
    for metric, value in sorted(report.live.items()):
        change = verdict.change.get(metric)
        table.add_row(metric, f"{value:.4g}", f"{base[metric]:.4g}" if metric in base else "-",
                      f"{change:+.1%}" if change is not None else "-")
    if report.input_psi is not None:
        table.add_row("input PSI", f"{report.input_psi:.3g}", "-", f"over {report.live_requests} live requests")
    console.print(table)
    for note in report.notes:
        console.print(f"[dim]{note}[/dim]")
    if verdict.drifted:
        console.print(f"[red]Drifted[/red] (action {action}): " + "; ".join(verdict.reasons))
    else:
        console.print("[green]Within tolerance[/green]")


def _serve(item: Any, runs_dir: Path, engine: str) -> Any:
    """The served revision, started on 127.0.0.1 for this run (merged, for a LoRA revision, as `gptops run` does)."""
    from gptops import serve
    from gptops.local.state import ModelState

    state = ModelState.load(runs_dir, item.model_name)
    assert state.serving_artifact is not None
    model_dir = serve.model_to_serve(Path(state.serving_artifact), state.serving_method)
    work = runs_dir / ".monitor" / item.model_name / "serve"
    return serve.start(serve.ServeSpec(model_dir=model_dir, served_name=item.model_name,
                                       vllm=(item.model["spec"].get("serving") or {}).get("vllm") or {}),
                       engine=engine, log=work / "server.log", workdir=work, threads=1)


def _run_name() -> str:
    from gptops.local.state import now_precise

    return "run-" + "".join(c for c in now_precise() if c.isdigit())
