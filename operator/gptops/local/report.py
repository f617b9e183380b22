"""How `gptops run` shows itself: rich progress while stages run, a final table per FineTuneJob, and the same facts
as one JSON document for scripts. Reads outcomes; decides nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from gptops.reconcile.gate import perplexity_improvement
from gptops.local.runner import Outcome

# The metrics the table knows how to compare with the base: (metric, baseline key, lower is better).
COMPARED = (("perplexity", "baselinePerplexity", True), ("bleu", "baselineBleu", False))
THRESHOLD_OF = {"perplexity": ("maxPerplexity", "<="), "bleu": ("minBleu", ">=")}
DECISION_STYLE = {"Promoted": "bold green", "Passed": "green", "Rejected": "bold red", "Failed": "bold red",
                  "Stopped": "yellow", "AwaitingApproval": "yellow"}


class StageProgress:
    """A rich live display: one spinner per stage, a bar for training steps when the stage reports totals."""

    def __init__(self, console: Console) -> None:
        self.console = console
        stage = Column(min_width=8, no_wrap=True)
        description = Column(no_wrap=True, overflow="ellipsis", ratio=1)
        self.progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.fields[stage]}", table_column=stage),
                                 BarColumn(bar_width=20), TimeElapsedColumn(),
                                 TextColumn("{task.description}", table_column=description),
                                 console=console, transient=False)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> StageProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Stop the live display while a person is asked something on the terminal."""
        self.progress.stop()
        try:
            yield
        finally:
            self.progress.start()

    def __call__(self, job: str, stage: str, event: str, fields: dict[str, Any]) -> None:
        key = f"{job}/{stage}"
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task("", total=None, stage=stage)
        task = self.tasks[key]
        if event == "resumed":
            self.progress.update(task, total=1, completed=1,
                                 description=f"[dim]{job}: done in an earlier run, not repeated[/]")
        elif event == "finished":
            self.progress.update(task, total=1, completed=1,
                                 description=f"{job}: [green]{fields.get('message', 'done')}[/]")
        elif event == "failed":
            self.progress.update(task, total=1, completed=0, description=f"{job}: [red]{fields.get('message')}[/]")
        else:
            total = fields.get("maxSteps") or fields.get("total")
            done = fields.get("step") if fields.get("step") is not None else fields.get("completed")
            if total and done is not None:
                self.progress.update(task, total=total, completed=done)
            self.progress.update(task, description=f"{job}: {_describe(event, fields)}")


def _describe(event: str, fields: dict[str, Any]) -> str:
    if event == "step" and fields.get("step") is not None:
        loss = fields.get("loss")
        return f"step {fields['step']}/{fields.get('maxSteps', '?')}" + (f", loss {loss:.3f}" if loss else "")
    shown = []
    for k, v in fields.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        elif isinstance(v, dict):
            continue
        text = str(v)
        shown.append(f"{k}={text if len(text) < 40 else '…' + text[-37:]}")
    return f"{event} " + " ".join(shown[:5])


def _num(v: Any, fmt: str = ".2f") -> str:
    return "-" if v is None else f"{v:{fmt}}"


def metrics_table(out: Outcome) -> Table:
    """Metric | base | this run | change | threshold | verdict."""
    t = Table(title=f"FineTuneJob {out.name} → GPTModel {out.model}", title_justify="left", expand=False)
    for col in ("metric", "base", "this run", "change", "threshold", ""):
        t.add_column(col, justify="right" if col in ("base", "this run", "change") else "left")
    m = out.metrics
    thresholds = {c.threshold: c for c in (out.gate.checks if out.gate else [])}
    for metric, base_key, lower_better in COMPARED:
        new, base = m.get(metric), m.get(base_key)
        if new is None and base is None:
            continue
        change = ""
        if new is not None and base:
            rel = (new - base) / base
            good = (rel < 0) == lower_better
            change = f"[{'green' if good else 'red'}]{rel:+.1%}[/]"
        name, op = THRESHOLD_OF[metric]
        check = thresholds.get(name)
        t.add_row(metric, _num(base), _num(new), change, f"{op} {check.limit:g}" if check else "",
                  _verdict(check))
    imp = perplexity_improvement(m)
    check = thresholds.get("minPerplexityImprovement")
    if check or imp is not None:
        t.add_row("perplexity improvement", "", _num(imp, ".1%"), "",
                  f">= {check.limit:.0%}" if check else "", _verdict(check))
    check = thresholds.get("minBleuImprovement")
    if check:
        t.add_row("BLEU improvement", "", _num(check.value), "", f">= {check.limit:g}", _verdict(check))
    return t


def _verdict(check: Any) -> str:
    if check is None:
        return ""
    return "[green]✔ met[/]" if check.passed else "[red]✘ not met[/]"


def samples_of(out: Outcome) -> list[dict[str, str]]:
    """The evaluate stage's sample generations (prompt, reference, output, baseOutput)."""
    ev = out.stages.get("evaluate")
    return list(ev.result.get("samples") or []) if ev else []


def samples_table(out: Outcome) -> Table:
    """The sample generations side by side, for a person deciding whether the revision may be served."""
    table = Table(title=f"{out.name}: sample generations (held-out prompts)", show_lines=True)
    for column in ("prompt", "reference", "new model", "base model"):
        table.add_column(column, overflow="fold")
    for sample in samples_of(out):
        table.add_row(sample.get("prompt", ""), sample.get("reference", ""), sample.get("output", ""),
                      sample.get("baseOutput", "-"))
    return table


def summary_line(out: Outcome) -> str:
    """One sentence a person reads first: the perplexity story and the decision."""
    m = out.metrics
    new, base = m.get("perplexity"), m.get("baselinePerplexity")
    parts = []
    if new is not None and base:
        parts.append(f"validation perplexity fell from {base:.1f} to {new:.1f} ({(new - base) / base:+.1%})"
                     if new < base else f"validation perplexity rose from {base:.1f} to {new:.1f} "
                                        f"({(new - base) / base:+.1%})")
    elif new is not None:
        parts.append(f"validation perplexity {new:.2f}")
    return "; ".join(parts)


def render_outcome(out: Outcome) -> Panel:
    style = DECISION_STYLE.get(out.decision, "")
    lines: list[Any] = []
    stages = Table.grid(padding=(0, 2))
    for stage, st in out.stages.items():
        how = "[dim]earlier run[/]" if st.resumed else f"{st.seconds:.0f}s"
        stages.add_row(f"[bold]{stage}[/]", how, st.result.get("message", ""))
    if out.stages:
        lines.append(stages)
    if out.metrics:
        lines.append(metrics_table(out))
        if (s := summary_line(out)):
            lines.append(s)
    decision = f"[{style}]{out.decision}[/]"
    if out.error:
        lines.append(f"Decision: {decision}: {out.error}")
    elif out.gate is not None:
        why = out.gate.message
        promo = ("promoted: GPTModel serves it now" if out.promoted else
                 "serving untouched" if not out.gate.passed else
                 f"not promoted ({out.not_promoted or 'evaluation.promote is false'})")
        lines.append(f"Decision: {decision} ({out.gate.reason}): {why}; {promo}")
    else:
        lines.append(f"Decision: {decision} before the gate")
    arts = Table.grid(padding=(0, 2))
    for k, v in out.artifacts.items():
        arts.add_row(f"[dim]{k}[/]", str(v))
    if out.digest:
        arts.add_row("[dim]digest[/]", out.digest)
    arts.add_row("[dim]state[/]", str(out.directory / "state.json"))
    lines.append(arts)
    title = f"[bold]{out.name}[/]" + (f" — started from {out.start}" if out.start else "")
    return Panel(Group(*lines), title=title, title_align="left",
                 border_style=style.replace("bold ", "") or "white")


def to_json(outcomes: list[Outcome], serving: dict[str, Any] | None, answers: list[dict[str, str]],
            note: str) -> dict[str, Any]:
    """The whole run as one JSON document (`gptops run --output json`)."""
    return {
        "apiVersion": "gptops.io/local-run/v1",
        "finishedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "finetunejobs": [{
            "name": o.name,
            "model": o.model,
            "decision": o.decision,
            "error": o.error,
            "state": o.state,
            "start": o.start,
            "directory": str(o.directory),
            "revision": o.revision,
            "digest": o.digest,
            "passedAt": o.passed_at,
            "removedRevisions": o.removed,
            "stages": {s: {"resumed": st.resumed, "seconds": round(st.seconds, 1), "result": st.result}
                       for s, st in o.stages.items()},
            "metrics": o.metrics,
            "perplexityImprovement": perplexity_improvement(o.metrics),
            "gate": o.gate.to_dict() if o.gate else None,
            "promoted": o.promoted,
            "notPromoted": o.not_promoted or None,
            "approval": o.approval,
            "samples": samples_of(o),
            "artifacts": o.artifacts,
        } for o in outcomes],
        "serving": serving,
        "servingNote": note,
        "answers": answers,
    }
