"""End to end on a real cluster (opt-in): `pytest -m e2e` against the cluster in KUBECONFIG,
with Tetragon and agentdetect installed (see the kind recipe in the README).

Never run by accident: a developer's KUBECONFIG may point at production, so these tests run
only when selected with ``-m e2e``, and skip saying why otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config

from tests.integration.helpers import temporary_namespace

REASON_NOT_SELECTED = "end to end on a real cluster is opt-in: run `pytest -m e2e` (see README, kind recipe)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    selected = "e2e" in (config.getoption("-m") or "")
    for item in items:
        if "/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)
            if not selected:
                item.add_marker(pytest.mark.skip(reason=REASON_NOT_SELECTED))


@pytest.fixture(scope="session")
def cluster() -> Any:
    """An API client for the cluster in KUBECONFIG, or a skip naming what is missing."""
    path = os.environ.get("KUBECONFIG")
    if not path:
        pytest.skip("no cluster given: set KUBECONFIG to a cluster running Tetragon and agentdetect")
    try:
        api = config.new_client_from_config(config_file=path)  # type: ignore[no-untyped-call]
        client.VersionApi(api).get_code()
    except Exception as exc:  # any way of not reaching the cluster is a reason to skip
        pytest.skip(f"cluster in KUBECONFIG={path} unreachable: {exc}")
    ext = client.ApiextensionsV1Api(api)
    for crd in ("tracingpoliciesnamespaced.cilium.io", "agentdetectionprofiles.agentdetect.io"):
        try:
            ext.read_custom_resource_definition(crd)
        except client.exceptions.ApiException:
            pytest.skip(f"CRD {crd} not installed: install Tetragon and agentdetect first (README)")
    return api


@pytest.fixture
def e2e_namespace(cluster: Any) -> Iterator[str]:
    with temporary_namespace(cluster, "agentdetect-e2e") as name:
        yield name
