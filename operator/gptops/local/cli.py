"""`gptops run FILE`: the command around gptops.local.runner: progress, the final tables, serving, asking, exit codes.

Exit codes: 0 passed (and served, unless --no-serve), 1 a stage or the server failed, 2 the spec file is unusable,
3 the gate rejected the model, 130 interrupted (Ctrl-C) before the gate.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

EXIT_FAILED, EXIT_INVALID, EXIT_REJECTED, EXIT_INTERRUPTED = 1, 2, 3, 130


def ask(base_url: str, model: str, question: str, max_tokens: int = 64) -> str:
    """Ask the served model one question with the openai client (chat completions, greedy)."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="unused", timeout=120, max_retries=1)
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                           max_tokens=max_tokens, temperature=0)
    return (reply.choices[0].message.content or "").strip()


def run(
    file: Annotated[Path, typer.Argument(help="A FineTuneJob YAML (its GPTModel in the same file or a sibling file).",
                                         exists=True, dir_okay=False)],
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where state and artifacts go: <runs-dir>/<ftj>/<revision>/.")]
    = Path("runs"),
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="Serve the promoted model after the gate.")] = True,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start over instead of resuming earlier runs.")] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json (JSON on stdout, progress on stderr).")]
    = "table",
    questions: Annotated[list[str] | None, typer.Option("--ask", help="Ask the served model this (repeatable), "
                                                        "print the answer, then stop serving.")] = None,
    keep_serving: Annotated[bool, typer.Option("--keep-serving", help="With --ask: keep serving afterwards.")]
    = False,
    engine: Annotated[str, typer.Option(help="auto (vLLM with a GPU, else transformers serve), vllm, "
                                             "transformers or gptops (a minimal built-in server).")] = "auto",
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1; 0 picks a free one.")] = 0,
    max_tokens: Annotated[int, typer.Option(help="Tokens per --ask answer.")] = 64,
    threads: Annotated[int, typer.Option(help="CPU threads for torch when there is no GPU; 0 means one per core. "
                                           "Small models train fastest on one.")] = 1,
    stop_after: Annotated[str | None, typer.Option(hidden=True, help="Stop after this stage (prepare, train, "
                                                   "evaluate).")] = None,
) -> None:
    """Run a FineTuneJob on this machine: prepare, train, evaluate, the gate, then serve the promoted model."""
    from gptops import serve as serving
    from gptops.local import report, runner, specs

    if output not in ("table", "json"):
        raise typer.BadParameter("expected table or json", param_hint="--output")
    # The console holds on to the real stream: stages' own output is redirected to their log files.
    console = Console(file=sys.stderr if output == "json" else sys.stdout)
    options = runner.Options(runs_dir=runs_dir.resolve(), fresh=fresh, stop_after=stop_after, threads=threads)

    def finish(code: int, serving_doc: dict[str, Any] | None, answers: list[dict[str, str]], note: str) -> None:
        if output == "json":
            print(json.dumps(report.to_json(outcomes, serving_doc, answers, note), indent=2, default=str))
        raise typer.Exit(code)

    outcomes: list[runner.Outcome] = []
    try:
        with report.StageProgress(console) as progress:
            outcomes = runner.run_file(file, options, progress)
    except (specs.SpecError, runner.InvalidSpec) as e:
        console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        finish(EXIT_INVALID, None, [], str(e))
    except runner.RunFailed as e:
        console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        finish(EXIT_FAILED, None, [], str(e))
    except KeyboardInterrupt:
        console.print(f"interrupted: finished stages are kept in {options.runs_dir}; "
                      "the same command resumes after them", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None

    for out in outcomes:
        console.print(report.render_outcome(out))
    last = outcomes[-1]
    code = {"Failed": EXIT_FAILED, "Rejected": EXIT_REJECTED}.get(last.decision, 0)
    target, note = runner.serving_target(outcomes, options.runs_dir)
    if target is None or not serve:
        if not serve and target is not None:
            note = f"--no-serve: {note.replace('serving', 'would serve', 1)}"
        console.print(note)
        finish(code, None, [], note)

    spec = serving.ServeSpec(
        model_dir=Path(target.serving_base if target.serving_method == "lora" else target.serving_artifact),
        adapter_dir=Path(target.serving_artifact) if target.serving_method == "lora" else None,
        served_name=target.name,
        vllm=_serving_settings(file, target.name),
        port=port,
    )
    log = options.runs_dir / "_serve" / f"{target.name}.log"
    with console.status(f"starting the server for GPTModel {target.name} ({note})"):
        try:
            server = serving.start(spec, engine=engine, log=log, workdir=options.runs_dir / "_serve", threads=threads)
        except (RuntimeError, OSError, ValueError) as e:
            console.print(f"[red]serving failed:[/] {e}")
            finish(EXIT_FAILED, None, [], str(e))
    serving_doc = {"endpoint": server.base_url, "model": server.served_name, "engine": server.engine,
                   "revision": target.serving_revision, "artifact": target.serving_artifact, "log": str(log),
                   "pid": server.process.pid}
    console.print(f"[bold green]Serving[/] GPTModel [bold]{target.name}[/] revision {target.serving_revision} "
                  f"with {server.engine} at [bold]{server.base_url}[/] (model id {server.served_name!r}; log {log})")
    answers: list[dict[str, str]] = []
    try:
        for q in questions or []:
            a = ask(server.base_url, server.served_name, q, max_tokens)
            answers.append({"question": q, "answer": a})
            console.print(f"[bold]Q:[/] {q}\n[bold]A:[/] {a}")
        if questions and not keep_serving:
            server.stop()
            serving_doc["stopped"] = True
            finish(code, serving_doc, answers, note)
        if output == "json":
            print(json.dumps(report.to_json(outcomes, serving_doc, answers, note), indent=2, default=str), flush=True)
        console.print("Press Ctrl-C to stop serving.")
        server.wait()
        console.print(f"[red]the server exited with code {server.process.returncode}[/]; log: {log}")
        raise typer.Exit(EXIT_FAILED)
    except KeyboardInterrupt:
        console.print("stopping the server")
        raise typer.Exit(code) from None
    except Exception as e:  # the question failed: say so, and do not leave a server behind
        if isinstance(e, typer.Exit):
            raise
        console.print(f"[red]asking the model failed:[/] {type(e).__name__}: {e}")
        raise typer.Exit(EXIT_FAILED) from None
    finally:
        server.stop()


def _serving_settings(file: Path, model_name: str) -> dict[str, Any]:
    """GPTModel.spec.serving.vllm of the served model, for the vLLM engine."""
    from gptops.local import specs

    for item in specs.load(file):
        if item.model_name == model_name:
            return ((item.model.get("spec") or {}).get("serving") or {}).get("vllm") or {}
    return {}
