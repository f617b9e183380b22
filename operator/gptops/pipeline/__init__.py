"""The pipeline stages that run in the trainer image and in `gptops run`: prepare, train, evaluate.

Importing this package is cheap (no torch): the stage modules are imported when a stage runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gptops.pipeline import revisions
from gptops.pipeline.config import EvalConfig, PrepareConfig, StageConfigs, TrainConfig, configs_from_spec
from gptops.pipeline.errors import PipelineError
from gptops.api.stageresult import StageResult

if TYPE_CHECKING:
    from gptops.pipeline.data import PrepareReport, ProgressFn
    from gptops.pipeline.evaluate import EvalReport
    from gptops.pipeline.train import TrainReport

__all__ = [
    "EvalConfig", "PipelineError", "PrepareConfig", "StageConfigs", "StageResult", "TrainConfig",
    "as_result", "configs_from_spec", "run_evaluate", "run_prepare", "run_train",
]


def as_result(report: Any) -> StageResult:
    """A stage's outcome as the stage result, whichever a stage function returned (a report, or the result)."""
    return report if isinstance(report, StageResult) else report.result()


def run_prepare(config: PrepareConfig, progress: ProgressFn | None = None,
                retain: Sequence[str] | None = None) -> PrepareReport:
    """Load, clean, tokenize, pack and split the dataset; see gptops.pipeline.data. With `retain` (the revision
    keys the GPTModel serves or would roll back to), first remove this FineTuneJob's other revisions' files."""
    from gptops.pipeline import data

    if retain is not None:
        revisions.sweep(config.artifact_root, retain)
    return data.run(config, progress)


def run_train(config: TrainConfig, progress: ProgressFn | None = None,
              callbacks: list | None = None) -> TrainReport | StageResult:
    """Train (or resume) and save model/ or adapter/, sealed with its digest; see gptops.pipeline.train.
    `callbacks` are TrainerCallbacks. Weights are written once: when they are already sealed (a retried Pod),
    they are reported as they are."""
    done = revisions.sealed(config.output_dir)
    if done is not None:
        return StageResult(stage="train", ok=True, message=f"already trained: {config.output_dir} ({done})",
                           artifacts={config.output_dir.name: str(config.output_dir)}, digest=done)
    from gptops.pipeline import train

    report = train.run(config, progress, callbacks)
    if train.is_main():
        report.digest = revisions.seal(report.output_dir)
    return report


def run_evaluate(config: EvalConfig, progress: ProgressFn | None = None) -> EvalReport:
    """Perplexity and BLEU of the new and the starting model, on the weights the train stage sealed (checked);
    see gptops.pipeline.evaluate."""
    from gptops.pipeline import evaluate

    digest = None
    if config.output_dir.exists():  # else evaluate.run says what is missing, the dataset first
        try:
            digest = revisions.verify(config.output_dir)
        except ValueError as e:
            raise PipelineError(str(e)) from e
    report = evaluate.run(config, progress)
    report.digest = digest
    return report


