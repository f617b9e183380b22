"""The operator's login in a Pod: the API server at the `kubernetes` Service's address from the Pod's environment,
so a cluster without DNS (or with DNS not yet up) still works."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest
from gptops.handlers import settings
from gptops.handlers.settings import in_cluster_server

INFO = kopf.ConnectionInfo(server="https://kubernetes.default.svc", token="t", ca_path="/ca.crt",
                           default_namespace="ml")


def test_the_pod_environment_names_the_api_server():
    info = in_cluster_server(INFO, {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"})
    assert info.server == "https://10.0.0.1:443"
    # Everything else of the ServiceAccount login is kept.
    assert (info.token, info.ca_path, info.default_namespace) == ("t", "/ca.crt", "ml")


def test_an_ipv6_service_address_is_bracketed():
    info = in_cluster_server(INFO, {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"})
    assert info.server == "https://[fd00::1]:6443"


def test_without_the_environment_kopfs_default_stays():
    assert in_cluster_server(INFO, {}).server == "https://kubernetes.default.svc"


def test_kopf_watches_drop_managed_fields_as_soon_as_they_decode_an_object() -> None:
    from kopf._cogs.clients import watching

    async def watch(**_: Any) -> Any:
        yield {"type": None, "object": {"metadata": {"name": "a", "managedFields": [{"manager": "m"}]}, "spec": {}}}
        yield watching.Bookmark.LISTED
        yield {"type": "MODIFIED", "object": {"metadata": {"name": "a", "uid": "u"}, "status": {"phase": "x"}}}

    async def events() -> list[Any]:
        return [e async for e in settings.drop_managed_fields(watch)(resource="r", namespace=None)]

    assert asyncio.run(events()) == [{"type": None, "object": {"metadata": {"name": "a"}, "spec": {}}},
                                     watching.Bookmark.LISTED,
                                     {"type": "MODIFIED", "object": {"metadata": {"name": "a", "uid": "u"},
                                                                     "status": {"phase": "x"}}}]
    settings.install_watch_filter()
    settings.install_watch_filter()  # once per process, however often asked
    assert watching.continuous_watch.drops_managed_fields
    assert watching.continuous_watch.__name__ == "watch_without"


def test_a_setting_from_the_environment_that_is_no_number_names_its_variable(monkeypatch: Any) -> None:
    monkeypatch.setenv("GPTOPS_RESYNC_SECONDS", "ten")
    with pytest.raises(ValueError, match=r"GPTOPS_RESYNC_SECONDS='ten': give a number .* such as 60"):
        settings.env_float("GPTOPS_RESYNC_SECONDS", 60.0)
    monkeypatch.setenv("GPTOPS_RESYNC_SECONDS", "")
    assert settings.env_float("GPTOPS_RESYNC_SECONDS", 60.0) == 60.0
    monkeypatch.setenv("GPTOPS_RESYNC_SECONDS", "2.5")
    assert settings.env_float("GPTOPS_RESYNC_SECONDS", 60.0) == 2.5


def test_the_watch_filter_is_in_place_with_the_pinned_kopf() -> None:
    """The filter wraps a kopf internal: a kopf that moved it would run the operator without it (and say so); this
    fails first, when the pin is raised."""
    assert settings.install_watch_filter() is True
