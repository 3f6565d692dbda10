"""The profile schema: what parses, and that every rejection names the offending field."""

from __future__ import annotations

from typing import Any

import pytest

from agentdetect.api import catalog
from agentdetect.api.models import (
    BinaryRule,
    ClusterProfileSpec,
    LabelSelector,
    Mode,
    PathRule,
    ProfileSpec,
)
from agentdetect.controller.reconcile import describe_invalid
from agentdetect.policy.profiles import parse_profile
from agentdetect.policy.render import Profile

FILES_ONLY: dict[str, Any] = {"files": {"presets": ["credentials"]}}


def _body(
    spec: dict[str, Any],
    name: str = "llm-egress",
    namespace: str | None = "team-a",
    kind: str = "AgentDetectionProfile",
) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def _invalid(body: dict[str, Any]) -> str:
    """The message the operator and `agentdetect validate` would show for ``body``."""
    with pytest.raises(ValueError) as info:
        parse_profile(body)
    return describe_invalid(info.value)


def _dest(**fields: Any) -> dict[str, Any]:
    return {"network": {"destinations": [{"name": "d", **fields}]}}


# ---- rejections name the field path ----------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "path", "words"),
    [
        pytest.param(
            _dest(cidrs=["10.0.0.0/8", "10.0.0.0/33"]),
            "spec.network.destinations[0].cidrs[1]",
            "is not a CIDR",
            id="bad-cidr",
        ),
        pytest.param(
            _dest(cidrs=["not-an-address"]),
            "spec.network.destinations[0].cidrs[0]",
            "'not-an-address' is not a CIDR",
            id="garbage-cidr",
        ),
        pytest.param(
            _dest(cidrs=["10.0.0.0/8"], ports=[0]),
            "spec.network.destinations[0].ports[0]",
            "greater than or equal to 1",
            id="port-0",
        ),
        pytest.param(
            _dest(cidrs=["10.0.0.0/8"], ports=[443, 70000]),
            "spec.network.destinations[0].ports[1]",
            "less than or equal to 65535",
            id="port-70000",
        ),
        pytest.param({}, "spec", "a profile must detect something", id="empty-spec"),
        pytest.param(
            {"network": {"providers": []}, "files": {"paths": []}, "processes": {}},
            "spec",
            "a profile must detect something",
            id="empty-rule-lists",
        ),
        pytest.param(
            {"network": {"providers": ["openai", "skynet"]}},
            "spec.network.providers[1]",
            "unknown provider 'skynet'",
            id="unknown-provider",
        ),
        pytest.param(
            {"files": {"presets": ["credentials", "passwords"]}},
            "spec.files.presets[1]",
            "unknown file preset 'passwords'",
            id="unknown-file-preset",
        ),
        pytest.param(
            {"processes": {"presets": ["shells", "hacking"]}},
            "spec.processes.presets[1]",
            "unknown process preset 'hacking'",
            id="unknown-process-preset",
        ),
        pytest.param(
            {"files": {"paths": [{"equal": "/etc/shadow"}, {"equal": "/a", "prefix": "/b"}]}},
            "spec.files.paths[1]",
            "give exactly one of equal, prefix, postfix",
            id="path-two-operators",
        ),
        pytest.param(
            {"files": {"paths": [{"enforce": True}]}},
            "spec.files.paths[0]",
            "give exactly one of equal, prefix, postfix",
            id="path-no-operator",
        ),
        pytest.param(
            {"processes": {"binaries": [{"equal": "/usr/bin/curl", "postfix": "/curl"}]}},
            "spec.processes.binaries[0]",
            "give exactly one of equal, prefix, postfix",
            id="binary-two-operators",
        ),
        pytest.param(
            {"files": {"paths": [{"prefix": "etc/ssl/"}]}},
            "spec.files.paths[0]",
            "must be absolute",
            id="relative-prefix",
        ),
        pytest.param(
            {"processes": {"binaries": [{"equal": "bin/sh"}]}},
            "spec.processes.binaries[0]",
            "must be absolute",
            id="relative-equal-binary",
        ),
        pytest.param(
            _dest(ports=[443]),
            "spec.network.destinations[0]",
            "give a provider, cidrs or hostnames",
            id="destination-without-target",
        ),
        pytest.param(
            {
                "network": {
                    "destinations": [
                        {"name": "gw", "cidrs": ["10.0.0.0/8"]},
                        {"name": "other", "cidrs": ["10.1.0.0/16"]},
                        {"name": "gw", "hostnames": ["gw.example.com"]},
                    ]
                }
            },
            "spec.network",
            "destination names must be unique: ['gw']",
            id="duplicate-destination-names",
        ),
        pytest.param(
            {
                "network": {
                    "providers": ["openai"],
                    "destinations": [{"name": "openai", "cidrs": ["10.0.0.0/8"]}],
                }
            },
            "spec.network",
            "clash with providers",
            id="destination-named-like-provider",
        ),
        pytest.param(
            _dest(provider="azure-openai", hostnames=["evil.example.com"]),
            "spec.network.destinations[0]",
            "hostnames ['evil.example.com'] are not azure-openai endpoints",
            id="hostname-outside-tenant-suffixes",
        ),
        pytest.param(
            {**FILES_ONLY, "selector": {"matchExpressions": [{"key": "app", "operator": "In"}]}},
            "spec.selector.matchExpressions[0]",
            "operator In needs values",
            id="selector-in-without-values",
        ),
        pytest.param(
            {**FILES_ONLY, "containerSelector": {"matchExpressions": [{"key": "name", "operator": "NotIn"}]}},
            "spec.containerSelector.matchExpressions[0]",
            "operator NotIn needs values",
            id="container-selector-notin-without-values",
        ),
        pytest.param(
            {
                **FILES_ONLY,
                "selector": {"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]},
            },
            "spec.selector.matchExpressions[0]",
            "operator Exists takes no values",
            id="selector-exists-with-values",
        ),
        pytest.param(
            _dest(hostnames=["API.example.com"]),
            "spec.network.destinations[0].hostnames[0]",
            "should match pattern",
            id="uppercase-hostname",
        ),
        pytest.param(
            _dest(hostnames=["*.example.com"]),
            "spec.network.destinations[0].hostnames[0]",
            "should match pattern",
            id="wildcard-hostname",
        ),
        pytest.param(
            {"files": {"paths": [{"equal": "/etc/\nshadow"}]}},
            "spec.files.paths[0].equal",
            "should match pattern",
            id="control-character-in-path",
        ),
        pytest.param(
            {**FILES_ONLY, "mode": "Kill"},
            "spec.mode",
            "'Monitor' or 'Enforce'",
            id="unknown-mode",
        ),
        pytest.param(
            {"files": {"presets": ["credentials"], "pathz": []}},
            "spec.files.pathz",
            "Extra inputs are not permitted",
            id="unknown-field",
        ),
    ],
)
def test_invalid_spec_names_the_field(spec: dict[str, Any], path: str, words: str) -> None:
    message = _invalid(_body(spec))
    assert message.startswith(f"{path}: "), message
    assert words in message


def test_profile_name_longer_than_63_is_refused() -> None:
    message = _invalid(_body(FILES_ONLY, name="a" * 64))
    assert message.startswith("metadata.name: ")
    assert "at most 63 characters" in message
    assert parse_profile(_body(FILES_ONLY, name="a" * 63)).name == "a" * 63


def test_cluster_profile_name_longer_than_63_is_refused() -> None:
    body = _body(FILES_ONLY, name="c" * 64, namespace=None, kind="ClusterAgentDetectionProfile")
    assert _invalid(body).startswith("metadata.name: ")


def test_namespaced_profile_needs_a_namespace() -> None:
    assert _invalid(_body(FILES_ONLY, namespace=None)) == "an AgentDetectionProfile needs metadata.namespace"


def test_every_error_is_reported_not_just_the_first() -> None:
    spec = {
        "network": {"destinations": [{"name": "d", "cidrs": ["300.0.0.0/8"], "ports": [0]}]},
        "files": {"presets": ["nope"]},
    }
    message = _invalid(_body(spec))
    for path in (
        "spec.network.destinations[0].cidrs[0]: '300.0.0.0/8' is not a CIDR",
        "; spec.network.destinations[0].ports[0]: ",
        "; spec.files.presets[0]: unknown file preset 'nope'",
    ):
        assert path in message


def test_namespace_selector_is_cluster_only() -> None:
    spec = {**FILES_ONLY, "namespaceSelector": {"matchLabels": {"team": "a"}}}
    assert _invalid(_body(spec)).startswith("spec.namespaceSelector: Extra inputs are not permitted")
    cluster = parse_profile(_body(spec, namespace=None, kind="ClusterAgentDetectionProfile"))
    assert isinstance(cluster.spec, ClusterProfileSpec)
    assert cluster.spec.namespace_selector == LabelSelector(match_labels={"team": "a"})


# ---- what parses ---------------------------------------------------------------------------

FULL_SPEC: dict[str, Any] = {
    "mode": "Enforce",
    "selector": {
        "matchLabels": {"app.kubernetes.io/name": "chatbot"},
        "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["debug"]}],
    },
    "containerSelector": {"matchExpressions": [{"key": "name", "operator": "In", "values": ["app"]}]},
    "network": {
        "providers": ["openai", "anthropic", "ollama"],
        "destinations": [
            {"name": "internal-vllm", "cidrs": ["10.20.0.0/16", "2001:db8::/32"], "ports": [8000]},
            {"name": "llm-gateway", "hostnames": ["llm.example.com"], "ports": [443], "enforce": True},
            {"name": "aoai", "provider": "azure-openai", "hostnames": ["contoso.openai.azure.com"]},
        ],
    },
    "files": {
        "presets": ["credentials", "ssh-keys", "serviceaccount-token", "ai-sdks"],
        "paths": [{"prefix": "/etc/ssl/private/"}, {"postfix": "/.ssh/id_rsa", "enforce": True}],
    },
    "processes": {
        "presets": ["shells", "agent-clis", "network-tools"],
        "binaries": [{"equal": "/usr/bin/curl", "enforce": True}],
    },
}


def test_full_profile_parses() -> None:
    profile = parse_profile(_body(FULL_SPEC, name="chatbot", namespace="prod"))
    assert (profile.kind, profile.name, profile.namespace) == ("AgentDetectionProfile", "chatbot", "prod")
    spec = profile.spec
    assert spec.mode == Mode.ENFORCE
    assert spec.selector is not None and spec.selector.match_labels == {"app.kubernetes.io/name": "chatbot"}
    assert spec.network is not None and [d.name for d in spec.network.destinations] == [
        "internal-vllm",
        "llm-gateway",
        "aoai",
    ]
    assert spec.files is not None and spec.files.paths[1] == PathRule(postfix="/.ssh/id_rsa", enforce=True)
    assert spec.processes is not None and spec.processes.binaries == [
        BinaryRule(equal="/usr/bin/curl", enforce=True)
    ]
    # What the API server would store parses back to the same spec.
    assert ProfileSpec.model_validate(spec.dump()) == spec
    assert spec.dump()["containerSelector"]["matchExpressions"] == [
        {"key": "name", "operator": "In", "values": ["app"]}
    ]


def test_mode_defaults_to_monitor() -> None:
    assert parse_profile(_body(FILES_ONLY)).spec.mode == Mode.MONITOR


def test_cidr_host_bits_are_normalised() -> None:
    spec = _dest(cidrs=["10.20.1.5/16", "2001:db8::1/32", "192.168.1.7"])
    profile = parse_profile(_body(spec))
    assert profile.spec.network is not None
    assert profile.spec.network.destinations[0].cidrs == ["10.20.0.0/16", "2001:db8::/32", "192.168.1.7/32"]


def test_tenant_hostnames_inside_the_suffixes_are_accepted() -> None:
    spec = _dest(provider="azure-openai", hostnames=["contoso.openai.azure.com", "x.services.ai.azure.com"])
    profile = parse_profile(_body(spec))
    assert profile.spec.network is not None
    assert profile.spec.network.destinations[0].hostnames == [
        "contoso.openai.azure.com",
        "x.services.ai.azure.com",
    ]


def test_providers_without_tenant_suffixes_take_any_hostname() -> None:
    profile = parse_profile(_body(_dest(provider="openai", hostnames=["openai-proxy.example.com"])))
    assert profile.spec.network is not None
    assert profile.spec.network.destinations[0].hostnames == ["openai-proxy.example.com"]


def test_a_providers_own_catalog_hostnames_are_its_endpoints() -> None:
    """A destination may narrow a provider to some of its catalog hostnames (to enforce on them,
    say); the tenant-suffix check must not call the catalog's own hostnames foreign."""
    refused = []
    for name, provider in catalog.load().providers.items():
        for host in provider.hostnames:
            try:
                parse_profile(_body(_dest(provider=name, hostnames=[host], enforce=True)))
            except ValueError as exc:
                refused.append(f"{name}: {describe_invalid(exc)}")
    assert refused == []


# ---- label selectors -----------------------------------------------------------------------


def _selector(**fields: Any) -> LabelSelector:
    return LabelSelector.model_validate(fields)


def test_empty_selector_selects_everything() -> None:
    sel = _selector()
    assert sel.selects_all()
    assert sel.matches({}) and sel.matches({"any": "thing"})


def test_match_labels_need_every_pair() -> None:
    sel = _selector(matchLabels={"app": "bot", "tier": "web"})
    assert not sel.selects_all()
    assert sel.matches({"app": "bot", "tier": "web", "extra": "x"})
    assert not sel.matches({"app": "bot"})
    assert not sel.matches({"app": "bot", "tier": "db"})


def test_operator_in() -> None:
    sel = _selector(matchExpressions=[{"key": "env", "operator": "In", "values": ["prod", "staging"]}])
    assert sel.matches({"env": "prod"}) and sel.matches({"env": "staging"})
    assert not sel.matches({"env": "dev"})
    assert not sel.matches({})


def test_operator_not_in() -> None:
    sel = _selector(matchExpressions=[{"key": "env", "operator": "NotIn", "values": ["prod"]}])
    assert sel.matches({"env": "dev"})
    assert sel.matches({})  # absent key is "not in", as in Kubernetes
    assert not sel.matches({"env": "prod"})


def test_operator_exists() -> None:
    sel = _selector(matchExpressions=[{"key": "team", "operator": "Exists"}])
    assert sel.matches({"team": ""}) and sel.matches({"team": "a"})
    assert not sel.matches({"other": "a"})


def test_operator_does_not_exist() -> None:
    sel = _selector(matchExpressions=[{"key": "team", "operator": "DoesNotExist"}])
    assert sel.matches({}) and sel.matches({"other": "a"})
    assert not sel.matches({"team": "a"})


def test_labels_and_expressions_are_anded() -> None:
    sel = _selector(
        matchLabels={"app": "bot"},
        matchExpressions=[
            {"key": "env", "operator": "In", "values": ["prod"]},
            {"key": "debug", "operator": "DoesNotExist"},
        ],
    )
    assert sel.matches({"app": "bot", "env": "prod"})
    assert not sel.matches({"app": "bot", "env": "prod", "debug": "1"})
    assert not sel.matches({"app": "other", "env": "prod"})
    assert not sel.matches({"app": "bot", "env": "dev"})


# ---- derived views of a spec ---------------------------------------------------------------


def _spec(**fields: Any) -> ProfileSpec:
    return ProfileSpec.model_validate(fields)


def test_hooks_follow_the_sections_used() -> None:
    assert _spec(network={"providers": ["openai"]}).hooks() == ["tcp_connect"]
    assert _spec(files={"paths": [{"equal": "/etc/shadow"}]}).hooks() == ["fd_install"]
    assert _spec(processes={"presets": ["shells"]}).hooks() == ["execve"]
    spec = _spec(**{k: v for k, v in FULL_SPEC.items() if k in ("network", "files", "processes")})
    assert spec.hooks() == ["tcp_connect", "fd_install", "execve"]
    # An empty section does not count as a hook.
    assert _spec(network={}, files={"presets": ["credentials"]}, processes={"binaries": []}).hooks() == [
        "fd_install"
    ]


def test_enforcing_rules_are_listed_by_field_path() -> None:
    assert _spec(**FULL_SPEC).enforcing_rules() == [
        "spec.network.destinations[1]",
        "spec.files.paths[1]",
        "spec.processes.binaries[0]",
    ]


def test_presets_and_providers_never_enforce() -> None:
    spec = _spec(
        mode="Enforce",
        network={"providers": ["openai"]},
        files={"presets": ["credentials"]},
        processes={"presets": ["shells"]},
    )
    assert spec.enforcing_rules() == []


def test_profile_dataclass_carries_the_parsed_spec() -> None:
    profile = parse_profile(_body(FILES_ONLY, kind="ClusterAgentDetectionProfile", namespace=None))
    assert profile == Profile("ClusterAgentDetectionProfile", "llm-egress", None, profile.spec)
    assert isinstance(profile.spec, ClusterProfileSpec)
    assert profile.spec.namespace_selector is None
