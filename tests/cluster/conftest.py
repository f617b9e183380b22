"""Fixtures of the operator's cluster tests: the CRDs installed once, and a namespace with the examples' volume."""

from __future__ import annotations

import pytest
import yaml

from operator_kit import Cluster, artifacts_volume


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
