"""Fixtures of the operator's cluster tests: the CRDs installed once, a namespace with the examples' volume, and the
operator running in this process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from operator_kit import Cluster, artifacts_volume, running_operator


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
