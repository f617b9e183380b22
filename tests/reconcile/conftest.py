"""Fixtures of the planner tests."""

import copy

import pytest

from reconcile_world import FINETUNEJOB, GPTMODEL, World


@pytest.fixture
def world() -> World:
    return World(model=copy.deepcopy(GPTMODEL), ftj=copy.deepcopy(FINETUNEJOB))
