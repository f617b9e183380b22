"""The evaluation gate: thresholds against metrics, as both `gptops run` and the operator decide it."""

from __future__ import annotations

import pytest

from gptops.api.conditions import Reason
from gptops.reconcile.gate import decide

NO_THRESHOLDS, THRESHOLDS_MET, THRESHOLDS_NOT_MET = (Reason.NO_THRESHOLDS, Reason.THRESHOLDS_MET,
                                                     Reason.THRESHOLDS_NOT_MET)

METRICS = {"perplexity": 40.0, "baselinePerplexity": 100.0, "bleu": 12.0, "baselineBleu": 10.0}


@pytest.mark.parametrize(("thresholds", "passed", "reason"), [
    ({}, True, NO_THRESHOLDS),
    (None, True, NO_THRESHOLDS),
    ({"maxPerplexity": 50}, True, THRESHOLDS_MET),
    ({"maxPerplexity": 40}, True, THRESHOLDS_MET),          # the bound itself passes
    ({"maxPerplexity": 39.9}, False, THRESHOLDS_NOT_MET),
    ({"minPerplexityImprovement": 0.6}, True, THRESHOLDS_MET),
    ({"minPerplexityImprovement": 0.61}, False, THRESHOLDS_NOT_MET),
    ({"minBleu": 12}, True, THRESHOLDS_MET),
    ({"minBleu": 12.5}, False, THRESHOLDS_NOT_MET),
    ({"minBleuImprovement": 2}, True, THRESHOLDS_MET),
    ({"minBleuImprovement": 2.5}, False, THRESHOLDS_NOT_MET),
    ({"maxPerplexity": 50, "minBleu": 20}, False, THRESHOLDS_NOT_MET),  # every threshold must hold
    ({"maxPerplexity": None}, True, NO_THRESHOLDS),        # an unset threshold is no threshold
])
def test_thresholds_against_metrics(thresholds, passed, reason):
    decision = decide(thresholds, METRICS)
    assert (decision.passed, decision.reason) == (passed, reason)


def test_a_metric_that_was_not_measured_fails_its_threshold():
    decision = decide({"minBleu": 1, "minPerplexityImprovement": 0.1}, {"perplexity": 10.0})
    assert not decision.passed
    assert "minBleu: BLEU was not measured" in decision.message
    assert "perplexity improvement was not measured" in decision.message


def test_the_message_shows_the_numbers():
    decision = decide({"maxPerplexity": 30, "minPerplexityImprovement": 0.5}, METRICS)
    assert decision.message.startswith("maxPerplexity: perplexity 40.00, needs <= 30.00: not met")
    # The check that held is still listed, so a person sees how close the rest came.
    assert [c.passed for c in decision.checks] == [False, True]
    assert decision.checks[1].value == pytest.approx(0.6)
