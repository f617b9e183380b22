"""`gptops run FILE`: the command around gptops.local.runner: progress, the final tables, serving, asking, exit codes.

Exit codes: 0 passed (and served, unless --no-serve), 1 a stage or the server failed, 2 the spec file is unusable,
3 the gate rejected the model, 130 interrupted (Ctrl-C, SIGINT or SIGTERM) before the gate or before the server was up.
"""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console

if TYPE_CHECKING:
    from gptops.local.runner import Options, Outcome
    from gptops.local.state import ModelState
    from gptops.serve import Server

EXIT_FAILED, EXIT_INVALID, EXIT_REJECTED, EXIT_AWAITING_APPROVAL, EXIT_INTERRUPTED = 1, 2, 3, 4, 130


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
    engine: Annotated[str, typer.Option(help="auto (vLLM with a GPU, else transformers serve), vllm or "
                                             "transformers.")] = "auto",
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1; 0 picks a free one.")] = 0,
    max_tokens: Annotated[int, typer.Option(help="Tokens per --ask answer.")] = 64,
    threads: Annotated[int, typer.Option(help="CPU threads for torch when there is no GPU; 0 means one per core. "
                                           "Small models train fastest on one.")] = 1,
    approve: Annotated[bool | None, typer.Option("--approve/--reject", help="For evaluation.approval: manual: "
                                                 "approve (or reject) every revision that passes its gate, without "
                                                 "asking. Unset: ask on a terminal; without one, the run waits.")]
    = None,
    stop_after: Annotated[str | None, typer.Option(hidden=True, help="Stop after this stage (prepare, train, "
                                                   "evaluate).")] = None,
) -> None:
    """Run a FineTuneJob on this machine: prepare, train, evaluate, the gate, then serve the promoted model."""
    from gptops.local import runner

    if output not in ("table", "json"):
        raise typer.BadParameter("expected table or json", param_hint="--output")
    # Ctrl-C, a `kill -INT` of this process alone (also when a script started it in the background, which starts it
    # with SIGINT ignored) and a supervisor's or `docker stop`'s SIGTERM all end the run alike: finished stages are
    # kept and the server (in its own session, so a terminal's Ctrl-C reaches only us) is stopped by the code that
    # started it.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    # The console holds on to the real stream: stages' own output is redirected to their log files.
    out = _Output(Console(file=sys.stderr if output == "json" else sys.stdout), as_json=output == "json")
    options = runner.Options(runs_dir=runs_dir.resolve(), fresh=fresh, stop_after=stop_after, threads=threads,
                             approval="ask" if approve is None else "approve" if approve else "reject")

    out.outcomes = _run_jobs(file, options, out)                           # 1-4: validate, stages, gate, promotion
    code, target, note = _serving_decision(out, options, serve)
    server, serving_doc = _start_server(file, target, note, options, out, engine=engine, port=port,
                                        threads=threads)                  # 5: serving
    _ask_or_serve(server, serving_doc, out, code, note, questions or [], keep_serving, max_tokens)


@dataclass
class _Output:
    """Where the run's results go: tables on the console, or also one JSON document on stdout."""

    console: Console
    as_json: bool
    outcomes: list[Outcome] = field(default_factory=list)

    def error(self, what: str, message: object) -> None:
        self.console.print(f"[red]{what}:[/] {message}", highlight=False, soft_wrap=True)

    def print_json(self, serving_doc: dict[str, Any] | None, answers: list[dict[str, str]], note: str) -> None:
        from gptops.local import report

        print(json.dumps(report.to_json(self.outcomes, serving_doc, answers, note), indent=2, default=str), flush=True)

    def finish(self, code: int, note: str, serving_doc: dict[str, Any] | None = None,
               answers: list[dict[str, str]] | None = None) -> NoReturn:
        """Print the JSON document (with -o json) and exit with `code`."""
        if self.as_json:
            self.print_json(serving_doc, answers or [], note)
        raise typer.Exit(code)


def _run_jobs(file: Path, options: Options, out: _Output) -> list[Outcome]:
    """Steps 1-4 of docs/local.md: validate, prepare/train/evaluate each FineTuneJob, the gate, promotion."""
    from gptops.local import report, runner, specs

    try:
        with report.StageProgress(out.console) as progress:
            options.ask = lambda outcome: _ask_approval(outcome, out.console, progress)
            return runner.run_file(file, options, progress)
    except (specs.SpecError, runner.InvalidSpec) as e:
        out.error("error", e)
        out.finish(EXIT_INVALID, str(e))
    except runner.RunFailed as e:
        out.error("error", e)
        out.finish(EXIT_FAILED, str(e))
    except KeyboardInterrupt:
        out.console.print(f"interrupted: finished stages are kept in {options.runs_dir}; "
                          "the same command resumes after them", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _ask_approval(outcome: Outcome, console: Console, progress: Any) -> bool | None:
    """Show the sample generations and ask whether the passed revision may be served; None without a terminal."""
    from rich.prompt import Confirm

    from gptops.local import report

    if not (sys.stdin.isatty() and console.is_terminal):
        return None
    with progress.paused():
        console.print(report.samples_table(outcome))
        return Confirm.ask(f"{outcome.name}: revision {outcome.revision} passed its gate. Serve it?", console=console,
                           default=False)


def _serving_decision(out: _Output, options: Options, serve: bool) -> tuple[int, ModelState, str]:
    """Print each job's outcome; (exit code, the GPTModel state to serve, why). Exits when nothing is served."""
    from gptops.local import report, runner

    for outcome in out.outcomes:
        out.console.print(report.render_outcome(outcome))
    code = {"Failed": EXIT_FAILED, "Rejected": EXIT_REJECTED,
            "AwaitingApproval": EXIT_AWAITING_APPROVAL}.get(out.outcomes[-1].decision, 0)
    target, note = runner.serving_target(out.outcomes, options.runs_dir)
    if target is None or not serve:
        if not serve and target is not None:
            note = f"--no-serve: {note.replace('serving', 'would serve', 1)}"
        out.console.print(note)
        out.finish(code, note)
    return code, target, note


def _start_server(file: Path, target: ModelState, note: str, options: Options, out: _Output, *, engine: str,
                  port: int, threads: int) -> tuple[Server, dict[str, Any]]:
    """Step 5: the promoted revision served on 127.0.0.1 (a LoRA revision merged into its base first)."""
    from gptops import serve as serving
    from gptops.pipeline.errors import PipelineError

    log = options.runs_dir / "_serve" / f"{target.name}.log"
    with out.console.status(f"starting the server for GPTModel {target.name} ({note})"):
        try:
            model_dir = serving.model_to_serve(Path(target.serving_artifact), target.serving_method)
            spec = serving.ServeSpec(model_dir=model_dir, served_name=target.name,
                                     vllm=_serving_settings(file, target.name), port=port)
            server = serving.start(spec, engine=engine, log=log, workdir=options.runs_dir / "_serve",
                                   threads=threads)
        except (RuntimeError, OSError, ValueError, PipelineError) as e:  # PipelineError: the LoRA merge
            out.error("serving failed", e)
            out.finish(EXIT_FAILED, str(e))
        except KeyboardInterrupt:
            out.console.print("interrupted before the server was up; nothing is left running")
            raise typer.Exit(EXIT_INTERRUPTED) from None
    serving_doc = {"endpoint": server.base_url, "model": server.served_name, "engine": server.engine,
                   "revision": target.serving_revision, "artifact": target.serving_artifact,
                   "servedModel": str(model_dir), "log": str(log), "pid": server.process.pid}
    out.console.print(f"[bold green]Serving[/] GPTModel [bold]{target.name}[/] revision {target.serving_revision} "
                      f"with {server.engine} at [bold]{server.base_url}[/] (model id {server.served_name!r}; "
                      f"log {log})")
    return server, serving_doc


def _ask_or_serve(server: Server, serving_doc: dict[str, Any], out: _Output, code: int, note: str,
                  questions: list[str], keep_serving: bool, max_tokens: int) -> NoReturn:
    """Ask the questions, then stop, or serve until Ctrl-C or SIGTERM; the server never outlives this function."""
    answers: list[dict[str, str]] = []
    try:
        for q in questions:
            a = ask(server.base_url, server.served_name, q, max_tokens)
            answers.append({"question": q, "answer": a})
            out.console.print(f"[bold]Q:[/] {q}\n[bold]A:[/] {a}")
        if questions and not keep_serving:
            server.stop()
            serving_doc["stopped"] = True
            out.finish(code, note, serving_doc, answers)
        if out.as_json:
            out.print_json(serving_doc, answers, note)
        out.console.print("Press Ctrl-C to stop serving.")
        server.wait()
        out.console.print(f"[red]the server exited with code {server.process.returncode}[/]; log: {serving_doc['log']}")
        raise typer.Exit(EXIT_FAILED)
    except KeyboardInterrupt:
        out.console.print("stopping the server")
        raise typer.Exit(code) from None
    except typer.Exit:
        raise
    except Exception as e:  # the question failed: say so, and do not leave a server behind
        out.error("asking the model failed", f"{type(e).__name__}: {e}")
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
