"""The pipeline stages that run in the trainer image and in `gptops run`: prepare, train, evaluate.

Importing this package is cheap (no torch): the stage modules are imported when a stage runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gptops.pipeline.config import EvalConfig, PrepareConfig, StageConfigs, TrainConfig, configs_from_spec
from gptops.pipeline.errors import PipelineError
from gptops.pipeline.result import StageResult

if TYPE_CHECKING:
    from gptops.pipeline.data import PrepareReport, ProgressFn
    from gptops.pipeline.evaluate import EvalReport
    from gptops.pipeline.train import TrainReport

__all__ = [
    "EvalConfig", "PipelineError", "PrepareConfig", "StageConfigs", "StageResult", "TrainConfig",
    "configs_from_spec", "run_evaluate", "run_prepare", "run_train",
]


def run_prepare(config: PrepareConfig, progress: ProgressFn | None = None) -> PrepareReport:
    """Load, clean, tokenize, pack and split the dataset; see gptops.pipeline.data."""
    from gptops.pipeline import data

    return data.run(config, progress)


def run_train(config: TrainConfig, progress: ProgressFn | None = None, callbacks: list | None = None) -> TrainReport:
    """Train (or resume) and save model/ or adapter/; see gptops.pipeline.train. `callbacks` are TrainerCallbacks."""
    from gptops.pipeline import train

    return train.run(config, progress, callbacks)


def run_evaluate(config: EvalConfig, progress: ProgressFn | None = None) -> EvalReport:
    """Perplexity and BLEU of the new and the starting model; see gptops.pipeline.evaluate."""
    from gptops.pipeline import evaluate

    return evaluate.run(config, progress)


