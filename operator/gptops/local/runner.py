"""Runs the FineTuneJobs of a spec file on this machine: prepare, train, evaluate (in-process), the gate, promotion
into the local GPTModel state (the operator's rule, gptops.reconcile.promotion), then serving. Each spec is a
revision with its own directory, `<runs>/<ftj>/<key>/`: a rerun resumes after its last finished stage, a changed spec
starts a new revision and leaves the others (the served one above all) as they are.

Rendering lives in gptops.local.report; this module decides and records.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptops.api.artifacts import ServedRevision
from gptops.api.conditions import now_rfc3339
from gptops.local import corpora, specs
from gptops.local.state import DATA_DIR, STAGES, ModelState, RunState, open_run, spec_digest
from gptops.pipeline.revisions import sealed, sweep
from gptops.reconcile import gate, promotion

log = logging.getLogger(__name__)

# Stage progress: (finetunejob, stage, event, fields). The pipeline's ProgressFn is (event, fields).
Progress = Callable[[str, str, str, dict[str, Any]], None]


class RunFailed(Exception):
    """A stage failed or the spec cannot run; the message says which and why."""


class InvalidSpec(RunFailed):
    """The spec breaks the CRDs' rules."""


@dataclass
class Options:
    runs_dir: Path = Path("runs")
    fresh: bool = False
    """Start every FineTuneJob of the file over, even when its state matches (in a new directory when the GPTModel
    serves, or keeps as previous, the matching revision)."""
    stop_after: str | None = None
    """Stop after this stage (prepare, train, evaluate): for tests and for looking at intermediate artifacts."""
    threads: int = 1
    """torch CPU threads for the stages when there is no GPU; 0 keeps torch's default (one per core)."""
    approval: str = "ask"
    """For evaluation.approval: manual: approve or reject decide every passed revision of the file; ask keeps a
    decision made earlier for the same revision, else calls `ask` (None: nobody to ask, the run waits)."""
    ask: Callable[[Outcome], bool | None] | None = None


@dataclass
class StageOutcome:
    result: dict[str, Any]
    """The stage-result document (gptops.io/stage-result/v1)."""
    seconds: float
    resumed: bool
    """True when the stage had finished in an earlier invocation and was not run again."""


@dataclass
class Outcome:
    """What happened to one FineTuneJob."""

    name: str
    model: str
    directory: Path
    """The revision's directory, `<runs>/<ftj>/<key>`."""
    state: str
    """new, resumed, changed or fresh: how the revision was found."""
    start: str
    """What training started from: the GPTModel's source, or a served revision's model directory."""
    stages: dict[str, StageOutcome] = field(default_factory=dict)
    gate: gate.GateDecision | None = None
    promote: bool = False
    """spec.evaluation.promote."""
    promoted: bool = False
    pinned: str | None = None
    """GPTModel.spec.serving.revision, when set."""
    digest: str | None = None
    """sha256 of the trained weights, as the train stage sealed them."""
    passed_at: str | None = None
    """When the gate passed (RFC 3339), the promotion order."""
    not_promoted: str = ""
    """Why a passed run was not promoted, for people."""
    approval: str | None = None
    """evaluation.approval manual: Pending, Approved or Rejected (None: auto)."""
    removed: list[str] = field(default_factory=list)
    """Revision directories of this FineTuneJob that retention removed."""
    error: str | None = None

    @property
    def revision(self) -> str:
        """The revision key (the directory's name)."""
        return self.directory.name

    @property
    def metrics(self) -> dict[str, Any]:
        ev = self.stages.get("evaluate")
        return dict(ev.result.get("metrics") or {}) if ev else {}

    @property
    def artifacts(self) -> dict[str, str]:
        arts: dict[str, str] = {}
        for st in self.stages.values():
            arts.update(st.result.get("artifacts") or {})
        return arts

    @property
    def decision(self) -> str:
        """Failed, Rejected (by the gate or a person), AwaitingApproval, Promoted, Passed, or Stopped (interrupted on
        purpose before the gate)."""
        if self.error:
            return "Failed"
        if self.gate is None:
            return "Stopped"
        if not self.gate.passed or self.approval == "Rejected":
            return "Rejected"
        if self.approval == "Pending":
            return "AwaitingApproval"
        return "Promoted" if self.promoted else "Passed"


def _stage_result(report: Any) -> dict[str, Any]:
    """A stage's report as the stage-result document, whatever report class the stage returns."""
    result = report.result() if callable(getattr(report, "result", None)) else report
    return result.to_dict() if hasattr(result, "to_dict") else dict(result)


@contextlib.contextmanager
def _capture(log_path: Path) -> Iterator[None]:
    """A stage's prints and library logs go to its log file; the terminal keeps our progress, table or JSON."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pipeline_log = logging.getLogger("gptops")
    with log_path.open("a", encoding="utf-8") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        handler = logging.StreamHandler(f)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        level = pipeline_log.level
        pipeline_log.addHandler(handler)
        pipeline_log.setLevel(logging.INFO)
        try:
            yield
        finally:
            pipeline_log.removeHandler(handler)
            pipeline_log.setLevel(level)


def materialize_dataset(ftj_spec: dict[str, Any], runs_dir: Path) -> dict[str, Any]:
    """A copy of the FineTuneJob spec whose `builtin:` local dataset path points at the written corpus file."""
    spec = copy.deepcopy(ftj_spec)
    local = (((spec.get("dataset") or {}).get("source") or {}).get("local") or {})
    path = local.get("path")
    if isinstance(path, str) and corpora.is_builtin(path):
        local["path"] = str(corpora.write_builtin(path, runs_dir / DATA_DIR).resolve())
    return spec


def _start_model(item: specs.RunItem, model_state: ModelState) -> tuple[str | None, str]:
    """(model directory or None for the source, a description): startFrom against the local GPTModel status."""
    start_from = (item.finetunejob.get("spec") or {}).get("startFrom", "auto")
    revision, artifact, method = (model_state.serving_revision, model_state.serving_artifact,
                                  model_state.serving_method)
    if revision == item.name:
        # This job's own earlier output is served and is about to be replaced: start from what was served before it.
        revision, artifact, method = (model_state.previous_revision, model_state.previous_artifact,
                                      model_state.previous_method)
    if start_from in ("auto", "serving") and artifact:
        # A LoRA revision's artifact is its adapter directory: the pipeline merges it into its base first.
        return artifact, f"revision {revision}" + (" (LoRA adapter, merged)" if method == "lora" else "")
    if start_from == "serving":
        raise RunFailed(f"startFrom is serving, but GPTModel {item.model_name} serves "
                        f"nothing yet on this machine (run the FineTuneJob that trains it first)")
    source = (item.model.get("spec") or {}).get("source") or {}
    return None, "source " + ", ".join(sorted(k for k, v in source.items() if v is not None))


def validate(item: specs.RunItem) -> None:
    """Check both objects with the cluster's rules (gptops.validate: the CRDs' schemas and CEL) before running."""
    from gptops.validate import validate_object

    problems = [f"{path}: {p}" for obj, path in ((item.model, item.model_file), (item.finetunejob, item.spec_file))
                for p in validate_object(obj, file=str(path))]
    if problems:
        raise InvalidSpec("the spec is invalid (the cluster would refuse it too):\n  " + "\n  ".join(problems))


def run_one(item: specs.RunItem, options: Options, progress: Progress) -> Outcome:
    """Run one FineTuneJob to its gate and promotion; returns the outcome (errors are recorded, not raised)."""
    runs_dir = options.runs_dir
    spec = item.finetunejob.get("spec") or {}
    model_spec = item.model.get("spec") or {}
    model_state = ModelState.load(runs_dir, item.model_name)
    ftj_dir = runs_dir / item.name
    state, how = open_run(ftj_dir, spec_digest(spec, model_spec), options.fresh, model_state.retained_keys(ftj_dir))
    out = Outcome(item.name, item.model_name, state.directory, how, "",
                  promote=bool((spec.get("evaluation") or {}).get("promote", False)))
    # Retention: this FineTuneJob's other revisions go, but never the served or the previous one.
    out.removed = sweep(state.directory, model_state.retained_keys(ftj_dir))
    try:
        if not state.stages:  # where a run starts is decided once, when it begins
            state.start_model, state.start_description = _start_model(item, model_state)
            state.save()
        start = state.start_model
        out.start = state.start_description or str(start or "source")
        from gptops.pipeline import configs_from_spec

        configs = configs_from_spec(materialize_dataset(spec, runs_dir), {"spec": model_spec}, state.directory,
                                    base_dir=item.base_dir, start_model=start)
    except (ValueError, RunFailed) as e:
        out.error = f"{item.spec_file}: FineTuneJob {item.name}: {e}"
        return out

    for stage in STAGES:
        if state.done(stage):
            done = state.stages[stage]
            out.stages[stage] = StageOutcome(done["result"], done.get("seconds", 0.0), resumed=True)
            progress(item.name, stage, "resumed", {"finishedAt": done.get("finishedAt")})
        else:
            progress(item.name, stage, "started", {})
            began = time.monotonic()
            try:
                result = _run_stage(stage, getattr(configs, stage), lambda e, f, s=stage: progress(item.name, s, e, f),
                                    state.directory / "logs" / f"{stage}.log", options.threads)
            except Exception as e:  # a stage's error ends this FineTuneJob, with its message, not a traceback
                log.debug("Stage failed", exc_info=True)
                detail = str(e) if _is_pipeline_error(e) else f"{type(e).__name__}: {e}"
                out.error = f"{stage}: {detail} (log: {state.directory / 'logs' / f'{stage}.log'})"
                progress(item.name, stage, "failed", {"message": out.error})
                return out
            seconds = time.monotonic() - began
            if not result.get("ok", True):
                out.error = f"{stage}: {result.get('message')}"
                progress(item.name, stage, "failed", {"message": out.error})
                return out
            state.record(stage, result, seconds)
            out.stages[stage] = StageOutcome(result, seconds, resumed=False)
            progress(item.name, stage, "finished", {"seconds": seconds, "message": result.get("message", "")})
        if options.stop_after == stage:
            return out

    thresholds = (spec.get("evaluation") or {}).get("thresholds") or {}
    out.gate = gate.decide(thresholds, out.metrics)
    decided = out.gate.to_dict()
    if out.gate.passed:  # when the gate passed: kept from the first decision, so a rerun does not move it
        earlier = state.gate or {}
        decided["passedAt"] = earlier.get("passedAt") if earlier.get("passed") and earlier.get("passedAt") \
            else now_rfc3339()
        out.passed_at = decided["passedAt"]
    if out.gate.passed and (state.gate or {}).get("approval"):  # a person's decision on this revision stays
        decided["approval"] = state.gate["approval"]
    if state.gate != decided:  # a finished revision's directory is not written again
        state.gate = decided
        state.save()
    out.pinned = (model_spec.get("serving") or {}).get("revision")
    train = out.stages.get("train")
    out.digest = (train.result.get("digest") if train else None) or sealed(configs.train.output_dir)
    this = _served_revision(item, out, configs.train.method, start) if out.gate.passed else None
    if this is not None and (spec.get("evaluation") or {}).get("approval") == "manual":
        out.approval = _approval(state, out, options)
        if out.approval != "Approved":
            out.not_promoted = ("rejected by a person" if out.approval == "Rejected" else
                                "awaits approval: run again on a terminal to be asked, or with --approve or --reject")
            this = None
    current = model_state.served()
    # The operator's rule (gptops.reconcile.promotion): only a revision that passed its gate is served; a pin wins;
    # otherwise the one that passed last among those with promote: true. No rollback happens on this machine.
    choice = promotion.choose(current, [this] if this is not None and out.promote else [], pin=out.pinned,
                              pinned=this if out.pinned == item.name else None)
    if this is not None and this.same_files(choice.serve):
        _promote(item, model_state, this, configs.train.method)
        model_state.save(runs_dir)
        out.promoted = True
        out.removed += sweep(state.directory, model_state.retained_keys(ftj_dir))
    elif this is not None:
        out.not_promoted = _why_not(out, current)
    return out


def _approval(state: RunState, out: Outcome, options: Options) -> str:
    """A person's decision on this revision: the flag's, else one recorded with the revision earlier, else asked.
    A decision is recorded in the revision's own state, so it never carries over to another revision."""
    recorded = (state.gate or {}).get("approval")
    if options.approval in ("approve", "reject"):
        decision = "Approved" if options.approval == "approve" else "Rejected"
    elif recorded in ("Approved", "Rejected"):
        return str(recorded)
    else:
        verdict = options.ask(out) if options.ask is not None else None
        if verdict is None:
            return "Pending"
        decision = "Approved" if verdict else "Rejected"
    if recorded != decision:
        state.gate = {**(state.gate or {}), "approval": decision}
        state.save()
    return decision


def _served_revision(item: specs.RunItem, out: Outcome, method: str, start: str | None) -> ServedRevision:
    """This run's revision as the promotion rule sees it: its weights, digest and when its gate passed."""
    arts = out.artifacts
    if method == "lora":
        return ServedRevision(revision=item.name, model=arts.get("baseModel") or start or "",
                              adapter=arts.get("adapter") or str(out.directory / "adapter"), digest=out.digest,
                              passed_at=out.passed_at)
    return ServedRevision(revision=item.name, model=arts.get("model") or str(out.directory / "model"),
                          digest=out.digest, passed_at=out.passed_at)


def _promote(item: specs.RunItem, model_state: ModelState, this: ServedRevision, method: str) -> None:
    if method == "lora":
        if not this.model:
            raise RunFailed(f"FineTuneJob {item.name}: a LoRA adapter needs a loadable base model to be served")
        model_state.promote(item.name, this.adapter or "", "lora", this.model, this.digest, this.passed_at)
    else:
        model_state.promote(item.name, this.model, digest=this.digest, passed_at=this.passed_at)


def _why_not(out: Outcome, current: ServedRevision | None) -> str:
    """Why the rule kept a passed run from being served: the pin, promote: false, or a revision that passed later."""
    if out.pinned:
        return f"GPTModel {out.model} pins revision {out.pinned}"
    if not out.promote:
        return "evaluation.promote is false"
    served = current.revision if current else "its source"
    return (f"GPTModel {out.model} serves {served}, which comes later in the promotion order (passed its gate "
            f"{current.passed_at if current else '-'})")


def _is_pipeline_error(e: Exception) -> bool:
    from gptops.pipeline import PipelineError

    return isinstance(e, PipelineError)


def quiet_libraries() -> None:
    """Our progress display replaces the libraries' bars and warnings; nothing may reach for a model hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    with contextlib.suppress(ImportError):
        import datasets

        datasets.disable_progress_bars()
    with contextlib.suppress(ImportError):
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()


def _run_stage(stage: str, config: Any, progress: Callable[[str, dict[str, Any]], None], log_path: Path,
               threads: int) -> dict[str, Any]:
    import gptops.pipeline as pipeline

    fn = {"prepare": pipeline.run_prepare, "train": pipeline.run_train, "evaluate": pipeline.run_evaluate}[stage]
    quiet_libraries()
    if threads:
        import torch

        if not torch.cuda.is_available():
            torch.set_num_threads(threads)
    with _capture(log_path):
        log.info("Running stage stage=%s", stage)
        return _stage_result(fn(config, progress))


def run_file(path: Path, options: Options, progress: Progress) -> list[Outcome]:
    """Every FineTuneJob of the file in order; stops at the first one that fails or is rejected."""
    items = specs.load(path)
    for item in items:
        validate(item)
    outcomes = []
    for item in items:
        out = run_one(item, options, progress)
        outcomes.append(out)
        if out.decision in ("Failed", "Rejected", "Stopped"):
            break
    return outcomes


def serving_target(outcomes: list[Outcome], runs_dir: Path) -> tuple[ModelState | None, str]:
    """What to serve after a run, and why (or why nothing): the GPTModel's revision when the last run got there."""
    if not outcomes:
        return None, "nothing ran"
    last = outcomes[-1]
    if last.decision == "Failed":
        return None, f"not serving: FineTuneJob {last.name} failed"
    if last.decision == "Stopped":
        return None, f"not serving: stopped after {list(last.stages)[-1] if last.stages else 'nothing'}"
    if last.decision == "Rejected":
        return None, f"not serving: FineTuneJob {last.name} did not pass its gate ({last.gate.message})"
    if not last.promoted:
        why = last.not_promoted or "evaluation.promote is false"
        return None, f"not serving: FineTuneJob {last.name} passed, but {why}, so GPTModel {last.model} was not changed"
    model_state = ModelState.load(runs_dir, last.model)
    return model_state, f"serving GPTModel {last.model} revision {model_state.serving_revision}"
