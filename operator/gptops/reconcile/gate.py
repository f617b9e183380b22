"""The evaluation gate as a pure function: a FineTuneJob's thresholds against its measured metrics. No I/O.
Shared by the operator's planner and `gptops run`.

The same rules as the cluster's gate: every threshold that is set must hold; a metric that was not measured fails
its threshold; no thresholds at all passes (reason NoThresholds).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from gptops.api.conditions import Reason


@dataclass
class Check:
    """One threshold against one number."""

    threshold: str
    """The threshold's field name, e.g. maxPerplexity."""
    limit: float
    value: float | None
    """The measured number it is compared with (for improvements: the improvement); None when not measured."""
    passed: bool
    message: str


@dataclass
class GateDecision:
    passed: bool
    reason: str
    message: str
    checks: list[Check] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def perplexity_improvement(metrics: dict[str, Any]) -> float | None:
    """(base - new) / base, or None without both numbers."""
    new, base = metrics.get("perplexity"), metrics.get("baselinePerplexity")
    if new is None or not base:
        return None
    return (base - new) / base


def _check(name: str, limit: float, value: float | None, ok: bool, what: str, fmt: str) -> Check:
    if value is None:
        return Check(name, limit, None, False, f"{name}: {what} was not measured")
    op = "<=" if name.startswith("max") else ">="
    verdict = "met" if ok else "not met"
    return Check(name, limit, value, ok, f"{name}: {what} {value:{fmt}}, needs {op} {limit:{fmt}}: {verdict}")


def decide(thresholds: dict[str, Any] | None, metrics: dict[str, Any]) -> GateDecision:
    """Compare `evaluation.thresholds` (camelCase, as in the spec) with the evaluate stage's metrics."""
    t = {k: float(v) for k, v in (thresholds or {}).items() if v is not None}
    checks: list[Check] = []
    if "maxPerplexity" in t:
        v = metrics.get("perplexity")
        checks.append(_check("maxPerplexity", t["maxPerplexity"], v, v is not None and v <= t["maxPerplexity"],
                             "perplexity", ".2f"))
    if "minBleu" in t:
        v = metrics.get("bleu")
        checks.append(_check("minBleu", t["minBleu"], v, v is not None and v >= t["minBleu"], "BLEU", ".2f"))
    if "minPerplexityImprovement" in t:
        v = perplexity_improvement(metrics)
        checks.append(_check("minPerplexityImprovement", t["minPerplexityImprovement"], v,
                             v is not None and v >= t["minPerplexityImprovement"], "perplexity improvement", ".1%"))
    if "minBleuImprovement" in t:
        new, base = metrics.get("bleu"), metrics.get("baselineBleu")
        v = None if new is None or base is None else new - base
        checks.append(_check("minBleuImprovement", t["minBleuImprovement"], v,
                             v is not None and v >= t["minBleuImprovement"], "BLEU improvement", ".2f"))
    if not checks:
        return GateDecision(True, Reason.NO_THRESHOLDS, "no thresholds set: passed", [])
    failed = [c for c in checks if not c.passed]
    if failed:
        return GateDecision(False, Reason.THRESHOLDS_NOT_MET, "; ".join(c.message for c in failed), checks)
    return GateDecision(True, Reason.THRESHOLDS_MET, "; ".join(c.message for c in checks), checks)
