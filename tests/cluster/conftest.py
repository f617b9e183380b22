"""Fixtures of the operator's cluster tests: the CRDs installed once, a namespace with the examples' volume, and the
operator running in this process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from operator_kit import Cluster, Operator, artifacts_volume, running_operator


@pytest.fixture(scope="session")
def crds(control_plane) -> None:
    """The CRDs, installed once and Established."""
    control_plane.install_crds()


@pytest.fixture
def k(control_plane, crds, namespace) -> Cluster:
    cluster = Cluster(control_plane, namespace)
    for doc in artifacts_volume(namespace):
        control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    return cluster


@pytest.fixture
def operator(control_plane, k: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The operator as cluster admin."""
    with running_operator(k, control_plane.kubeconfig, monkeypatch) as runner:
        yield runner


@pytest.fixture
def operators(control_plane, k: Cluster, tmp_path: Path) -> Iterator[Any]:
    """Start operators with `operators()`; at the end every one still running is stopped, and must exit cleanly."""
    started: list[Operator] = []

    def start() -> Operator:
        started.append(Operator(control_plane, k.ns, tmp_path / f"operator-{len(started)}.log"))
        return started[-1]

    yield start
    try:
        k.kubectl("delete", "finetunejobs,gptmodels", "--all", "--timeout=30s")
    finally:
        codes = [(op.proc.poll(), op) for op in started]
        for code, op in codes:
            if code is None:  # still running: a graceful stop must succeed
                assert op.stop() == 0, op.output[-4000:]
        k.cp.kubectl("delete", "pv", f"{k.ns}-artifacts", "--wait=false", check=False)
