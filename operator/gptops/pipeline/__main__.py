"""`python -m gptops.pipeline prepare|train|evaluate|monitor`: the entry point of the trainer image.

Reads the FineTuneJob and GPTModel (YAML/JSON files, one multi-document YAML, or inline JSON), runs one stage,
writes the stage result to the termination log and prints it as the last stdout line. Exit 0 on success, 1 when
the stage rejected its input (PipelineError, a bad spec: final), 3 when it crashed (any other exception: its Job
retries it, training from its checkpoint), 2 when the result could not be written. A crash still writes an ok: false
result, so the operator can say what happened while the Job retries.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from gptops.api.constants import EXIT_CRASHED, EXIT_RESULT_UNWRITTEN, EXIT_STAGE_FAILED
from gptops.crashes import report_native_crashes
from gptops.pipeline import as_result, run_evaluate, run_prepare, run_train
from gptops.pipeline.config import configs_from_spec
from gptops.pipeline.errors import PipelineError
from gptops.pipeline.result import StageResult, emit

log = logging.getLogger("gptops.pipeline")
STAGES = ("prepare", "train", "evaluate", "monitor")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gptops.pipeline", description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=STAGES)
    p.add_argument("--spec", type=Path, help="FineTuneJob YAML/JSON file (may also hold the GPTModel, multi-document)")
    p.add_argument("--spec-json", help="the FineTuneJob (object or spec) as inline JSON")
    p.add_argument("--model-spec", type=Path, help="GPTModel YAML/JSON file")
    p.add_argument("--model-spec-json", help="the GPTModel (object or spec) as inline JSON")
    p.add_argument("--artifacts", type=Path, help="the run's artifact directory (every stage but monitor)")
    p.add_argument("--base-dir", type=Path, help="resolves relative local paths (default: the spec file's directory)")
    p.add_argument("--start-model", help="start from this model directory instead of the GPTModel's source")
    p.add_argument("--evaluation-dir", type=Path, help="evaluate: where report.json goes (default: <artifacts>/eval)")
    p.add_argument("--retain", action="append", metavar="REVISION",
                   help="prepare: remove this FineTuneJob's other revision directories except these (repeatable)")
    p.add_argument("--endpoint", help="monitor: the GPTModel's OpenAI-compatible base URL, http://HOST:PORT/v1")
    p.add_argument("--metrics-url", action="append", metavar="URL",
                   help="monitor: a vLLM Pod's /metrics, for input drift (repeatable)")
    p.add_argument("--state-dir", type=Path, help="monitor: where runs leave the prompt-length histogram they saw")
    p.add_argument("--run-name", default="run", help="monitor: this run's name (the monitor Job's)")
    args = p.parse_args(argv)
    if args.stage == "monitor" and not args.endpoint:
        p.error("monitor needs --endpoint")
    if args.stage != "monitor" and args.artifacts is None:
        p.error(f"{args.stage} needs --artifacts")
    return args


def load_specs(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The FineTuneJob and GPTModel documents named by the arguments."""
    docs: list[dict[str, Any]] = []
    if args.spec:
        docs += _read_documents(args.spec)
    if args.spec_json:
        docs.append(_parse_json(args.spec_json, "--spec-json", default_kind="FineTuneJob"))
    if args.model_spec:
        docs += [{"kind": "GPTModel", **d} if "kind" not in d else d for d in _read_documents(args.model_spec)]
    if args.model_spec_json:
        docs.append(_parse_json(args.model_spec_json, "--model-spec-json", default_kind="GPTModel"))
    ftj = next((d for d in docs if d.get("kind", "FineTuneJob") == "FineTuneJob"), None)
    model = next((d for d in docs if d.get("kind") == "GPTModel"), None)
    if ftj is None:
        raise PipelineError("no FineTuneJob given; expected --spec FILE or --spec-json JSON")
    if model is None:
        raise PipelineError("no GPTModel given; expected --model-spec FILE, --model-spec-json JSON, "
                            "or a GPTModel document in the --spec file")
    return ftj, model


def _read_documents(path: Path) -> list[dict[str, Any]]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PipelineError(f"{path}: cannot read the spec ({e}); expected a YAML or JSON file") from e
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise PipelineError(f"{path}: not valid YAML ({e}); expected FineTuneJob/GPTModel documents") from e
    if not docs or not all(isinstance(d, dict) for d in docs):
        raise PipelineError(f"{path}: expected one or more YAML mappings (FineTuneJob, GPTModel)")
    return docs


def _parse_json(text: str, flag: str, default_kind: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise PipelineError(f"{flag}: not valid JSON ({e.msg}); expected a {default_kind} object or spec") from e
    if not isinstance(doc, dict):
        raise PipelineError(f"{flag}: expected a JSON object")
    return doc if "kind" in doc else {"kind": default_kind, **doc}


def _log_progress(event: str, fields: dict[str, Any]) -> None:
    log.info("Progress event=%s %s", event, " ".join(f"{k}={_short(v)}" for k, v in fields.items()))


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _monitor(args: argparse.Namespace) -> StageResult:
    """The monitor stage: the GPTModel from --model-spec/--model-spec-json, evaluated live at --endpoint."""
    from gptops.pipeline import monitor

    docs = ([{"kind": "GPTModel", **d} if "kind" not in d else d for d in _read_documents(args.model_spec)]
            if args.model_spec else [])
    if args.model_spec_json:
        docs.append(_parse_json(args.model_spec_json, "--model-spec-json", default_kind="GPTModel"))
    model = next((d for d in docs if d.get("kind") == "GPTModel"), None)
    if model is None:
        raise PipelineError("no GPTModel given; expected --model-spec FILE or --model-spec-json JSON")
    base_dir = args.base_dir or (args.model_spec.resolve().parent if args.model_spec else Path.cwd())
    config = monitor.config_from_spec(model, args.endpoint, metrics_urls=args.metrics_url or [],
                                      state_dir=args.state_dir, run_name=args.run_name, base_dir=base_dir)
    return monitor.run(config, _log_progress).result()


def _run(args: argparse.Namespace) -> StageResult:
    """The stage's result; bad input raises PipelineError or ValueError."""
    if args.stage == "monitor":
        return _monitor(args)
    ftj, model = load_specs(args)
    base_dir = args.base_dir or (args.spec.resolve().parent if args.spec else Path.cwd())
    configs = configs_from_spec(ftj, model, args.artifacts, base_dir, start_model=args.start_model,
                                evaluation_dir=args.evaluation_dir)
    if args.stage == "prepare":
        return run_prepare(configs.prepare, _log_progress, retain=args.retain or ()).result()
    if args.stage == "train":
        return as_result(run_train(configs.train, _log_progress))
    return run_evaluate(configs.evaluate, _log_progress).result()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report_native_crashes()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    main_process = int(os.environ.get("LOCAL_RANK", 0)) == 0  # one result per Pod under torchrun
    failed = EXIT_STAGE_FAILED
    try:
        result = _run(args)
    except (PipelineError, ValueError) as e:
        result = StageResult(stage=args.stage, ok=False, message=str(e))
    except Exception as e:  # anything else still leaves a readable result for the operator
        traceback.print_exc()
        result = StageResult(stage=args.stage, ok=False, message=f"{type(e).__name__}: {e}")
        failed = EXIT_CRASHED
    if main_process and not emit(result):
        return EXIT_RESULT_UNWRITTEN
    return 0 if result.ok else failed


if __name__ == "__main__":
    sys.exit(main())
