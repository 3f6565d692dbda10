"""Profiles rendered into Tetragon policies: content, actions, names, determinism, and that no
string in a profile (or a bad template) can change a policy's structure."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest

from agentdetect.api import catalog
from agentdetect.api.models import (
    BinaryRule,
    Destination,
    Files,
    LabelSelector,
    LabelSelectorRequirement,
    Network,
    PathRule,
    Processes,
    ProfileSpec,
)
from agentdetect.controller.reconcile import describe_invalid, targets_for
from agentdetect.policy.profiles import parse_profile
from agentdetect.policy.render import (
    ACTION_ENFORCE,
    ACTION_OBSERVE,
    ANNOTATION_HASH,
    BUILTIN_TEMPLATES,
    HOOKS,
    LABEL_HOOK,
    LABEL_MANAGED_BY,
    LABEL_PROFILE_KIND,
    LABEL_PROFILE_NAME,
    LABEL_PROFILE_NAMESPACE,
    MAX_SELECTORS,
    POD_NAMESPACE_LABEL,
    PolicyKind,
    Profile,
    ProfileKind,
    RenderError,
    Target,
    hostnames_of,
    ipv4_mapped,
    network_targets,
    policy_name,
    render,
    spec_hash,
)
from agentdetect.policy.resolve import Resolution, StaticResolver, resolve_all

NOW = "2025-01-01T00:00:00Z"
CATALOG = catalog.load()
ADP: ProfileKind = "AgentDetectionProfile"
CADP: ProfileKind = "ClusterAgentDetectionProfile"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _profile(
    spec: dict[str, Any], name: str = "llm-egress", namespace: str | None = "team-a", kind: str = ADP
) -> Profile:
    return parse_profile({"kind": kind, "metadata": {"name": name, "namespace": namespace}, "spec": spec})


def _resolve(profile: Profile, table: dict[str, list[str]]) -> dict[str, Resolution]:
    return resolve_all(hostnames_of(profile.spec), StaticResolver(table), {}, NOW)


def _render(profile: Profile, table: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    return render(profile, targets_for(profile, []), _resolve(profile, table or {}))


def _by_hook(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {d["metadata"]["labels"][LABEL_HOOK]: d for d in docs}
    assert len(out) == len(docs), "one policy per hook per target"
    return out


def _selectors(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for k in doc["spec"]["kprobes"] for s in k["selectors"]]


def _match_values(doc: dict[str, Any], operator: str) -> list[str]:
    """The values of ``operator``; for DAddr without the IPv4-mapped twins, after checking that
    every IPv4 network of each selector has exactly its twin there (render.ipv4_mapped)."""
    out = []
    for s in _selectors(doc):
        for a in s["matchArgs"]:
            if a["operator"] != operator:
                continue
            values = a["values"]
            if operator == "DAddr":
                twins = {v for v in values if v.startswith("::ffff:")}
                plain = [v for v in values if v not in twins]
                assert twins == {ipv4_mapped(v) for v in plain} - {None}
                values = plain
            out.extend(values)
    return out


def _rules(doc: dict[str, Any], action: str | None = None) -> set[tuple[str, str]]:
    """(operator, value) of every string match in a fd_install or execve policy."""
    return {
        (a["operator"], v)
        for s in _selectors(doc)
        if action is None or s["matchActions"] == [{"action": action}]
        for a in s["matchArgs"]
        for v in a["values"]
    }


# ---- every catalog entry renders ------------------------------------------------------------

ALL_HOSTNAMES = sorted({h for p in CATALOG.providers.values() for h in p.hostnames})
#: Each hostname answers with its own IPv4 and IPv6 address.
HOST_TABLE = {
    h: [f"10.0.{i // 250}.{i % 250 + 1}", f"2001:db8::{i + 1:x}"] for i, h in enumerate(ALL_HOSTNAMES)
}


def _cidrs_of(hostnames: tuple[str, ...] | list[str]) -> set[str]:
    return {f"{a}/{ipaddress.ip_address(a).max_prefixlen}" for h in hostnames for a in HOST_TABLE[h]}


LISTABLE = [n for n, p in CATALOG.providers.items() if p.hostnames or p.any_address]
TENANT_ONLY = [n for n in CATALOG.providers if n not in LISTABLE]


@pytest.mark.parametrize("name", TENANT_ONLY)
def test_a_provider_without_catalog_hostnames_cannot_be_listed_bare(name: str) -> None:
    """Listed bare it would render nothing while reporting Ready: refused, with the way out."""
    with pytest.raises(ValueError) as err:
        _profile({"network": {"providers": [name]}})
    assert f"name yours under network.destinations with provider: {name}" in describe_invalid(err.value)
    with pytest.raises(ValueError) as err:
        _profile({"network": {"destinations": [{"name": "mine", "provider": name}]}})
    assert "give your hostnames" in describe_invalid(err.value)


@pytest.mark.parametrize("name", LISTABLE)
def test_every_provider_renders_its_addresses_and_ports(name: str) -> None:
    provider = CATALOG.providers[name]
    profile = _profile({"network": {"providers": [name]}})
    docs = _render(profile, HOST_TABLE)
    assert docs, f"network.providers [{name}] is accepted by validation but renders no policy at all"
    (doc,) = docs
    assert doc["metadata"]["labels"][LABEL_HOOK] == "tcp_connect"
    (kprobe,) = doc["spec"]["kprobes"]
    assert kprobe["call"] == "tcp_connect" and kprobe["syscall"] is False
    assert kprobe["args"] == [{"index": 0, "type": "sock"}]
    assert sorted(_match_values(doc, "DPort")) == sorted(str(p) for p in provider.ports)
    if provider.any_address:
        assert _match_values(doc, "DAddr") == []
        assert all([a["operator"] for a in s["matchArgs"]] == ["DPort"] for s in _selectors(doc))
    else:
        assert set(_match_values(doc, "DAddr")) == _cidrs_of(provider.hostnames)
        # Address AND port, in one selector.
        assert all([a["operator"] for a in s["matchArgs"]] == ["DAddr", "DPort"] for s in _selectors(doc))
    assert all(s["matchActions"] == [{"action": ACTION_OBSERVE}] for s in _selectors(doc))


@pytest.mark.parametrize(
    ("name", "hostname"),
    [(n, "tenant" + s) for n, p in CATALOG.providers.items() for s in p.tenant_suffixes],
)
def test_tenant_endpoints_render_with_the_providers_ports(name: str, hostname: str) -> None:
    profile = _profile(
        {"network": {"destinations": [{"name": "mine", "provider": name, "hostnames": [hostname]}]}}
    )
    (doc,) = _render(profile, {hostname: ["192.0.2.7"]})
    assert _match_values(doc, "DAddr") == ["192.0.2.7/32"]
    assert sorted(_match_values(doc, "DPort")) == sorted(str(p) for p in CATALOG.providers[name].ports)


def test_destination_ports_override_the_providers() -> None:
    profile = _profile(
        {"network": {"destinations": [{"name": "oai", "provider": "openai", "ports": [8443, 443]}]}}
    )
    (doc,) = _render(profile, HOST_TABLE)
    assert set(_match_values(doc, "DAddr")) == _cidrs_of(CATALOG.providers["openai"].hostnames)
    assert _match_values(doc, "DPort") == ["443", "8443"]


def test_cidr_destination_without_ports_matches_any_port() -> None:
    profile = _profile(
        {"network": {"destinations": [{"name": "net", "cidrs": ["10.9.0.0/16", "2001:db8::/48"]}]}}
    )
    (doc,) = _render(profile)
    (sel,) = _selectors(doc)
    values = ["10.9.0.0/16", "2001:db8::/48", "::ffff:10.9.0.0/112"]
    assert sel["matchArgs"] == [{"index": 0, "operator": "DAddr", "values": values}]


@pytest.mark.parametrize(
    ("cidr", "twin"),
    [
        ("10.9.0.0/16", "::ffff:10.9.0.0/112"),
        ("203.0.113.7/32", "::ffff:203.0.113.7/128"),
        ("0.0.0.0/0", "::ffff:0.0.0.0/96"),
        ("2001:db8::/48", None),
        ("not-a-cidr", None),
    ],
)
def test_ipv4_networks_have_ipv4_mapped_twins(cidr: str, twin: str | None) -> None:
    """A dual-stack socket's IPv4 destination is ::ffff:a.b.c.d and is looked up among a DAddr
    filter's IPv6 entries only (filter_addr_map, bpf/process/types/basic.h)."""
    assert ipv4_mapped(cidr) == twin
    if twin is not None:
        v4, v6 = ipaddress.IPv4Network(cidr), ipaddress.IPv6Network(twin)
        assert v6.num_addresses == v4.num_addresses
        first = v6.network_address.ipv4_mapped
        assert first is not None and first == v4.network_address


@pytest.mark.parametrize("name", list(CATALOG.file_presets))
def test_every_file_preset_renders_its_rules(name: str) -> None:
    (doc,) = _render(_profile({"files": {"presets": [name]}}))
    assert doc["metadata"]["labels"][LABEL_HOOK] == "fd_install"
    for kprobe in doc["spec"]["kprobes"]:
        assert kprobe["call"] == "fd_install" and kprobe["syscall"] is False
        assert kprobe["args"] == [{"index": 0, "type": "int"}, {"index": 1, "type": "file"}]
        assert all(a["index"] == 1 for s in kprobe["selectors"] for a in s["matchArgs"])
    assert _rules(doc) == {(r.operator, r.value) for r in CATALOG.file_presets[name].rules}
    assert _rules(doc) == _rules(doc, ACTION_OBSERVE)


@pytest.mark.parametrize("name", list(CATALOG.process_presets))
def test_every_process_preset_renders_its_rules(name: str) -> None:
    (doc,) = _render(_profile({"processes": {"presets": [name]}}))
    assert doc["metadata"]["labels"][LABEL_HOOK] == "execve"
    for kprobe in doc["spec"]["kprobes"]:
        assert kprobe["call"] == "sys_execve" and kprobe["syscall"] is True
        assert kprobe["args"] == [{"index": 0, "type": "string"}]
        assert all(a["index"] == 0 for s in kprobe["selectors"] for a in s["matchArgs"])
    assert _rules(doc) == {(r.operator, r.value) for r in CATALOG.process_presets[name].rules}
    assert _rules(doc) == _rules(doc, ACTION_OBSERVE)


def test_own_paths_and_binaries_keep_their_operator() -> None:
    profile = _profile(
        {
            "files": {
                "paths": [{"equal": "/etc/passwd"}, {"prefix": "/etc/ssl/private/"}, {"postfix": "/id_rsa"}]
            },
            "processes": {"binaries": [{"equal": "/usr/bin/curl"}, {"prefix": "/tmp/"}, {"postfix": "/nc"}]},
        }
    )
    docs = _by_hook(_render(profile))
    assert _rules(docs["fd_install"]) == {
        ("Equal", "/etc/passwd"),
        ("Prefix", "/etc/ssl/private/"),
        ("Postfix", "/id_rsa"),
    }
    assert _rules(docs["execve"]) == {("Equal", "/usr/bin/curl"), ("Prefix", "/tmp/"), ("Postfix", "/nc")}


def test_one_selector_per_operator_and_action() -> None:
    (doc,) = _render(_profile({"files": {"presets": ["credentials", "ssh-keys"]}}))
    ops = [a["operator"] for s in _selectors(doc) for a in s["matchArgs"]]
    assert ops == ["Equal", "Postfix", "Prefix"]
    assert all(len(s["matchArgs"]) == 1 for s in _selectors(doc))


def test_selectors_beyond_the_limit_spill_into_further_policies_never_kprobes() -> None:
    """Under kprobe_multi the agent refuses two kprobes on one symbol in a policy ("can't have
    multiple instances of same symbol", pkg/sensors/tracing/generickprobe.go)."""
    count = 2 * MAX_SELECTORS + 1
    destinations = [{"name": f"d{i}", "cidrs": [f"10.{i}.0.0/16"], "ports": [1000 + i]} for i in range(count)]
    profile = _profile({"network": {"destinations": destinations}})
    docs = _render(profile)
    assert [len(d["spec"]["kprobes"]) for d in docs] == [1, 1, 1]
    assert [len(_selectors(d)) for d in docs] == [MAX_SELECTORS, MAX_SELECTORS, 1]
    assert all(d["spec"]["kprobes"][0]["call"] == "tcp_connect" for d in docs)
    assert sorted(v for d in docs for v in _match_values(d, "DPort")) == sorted(
        str(1000 + i) for i in range(count)
    )
    target = Target("TracingPolicyNamespaced", "team-a")
    names = [d["metadata"]["name"] for d in docs]
    assert names == [policy_name(profile, target, "tcp_connect", part) for part in range(3)]
    assert names[0].startswith("llm-egress-net-") and names[1].startswith("llm-egress-net2-")
    assert len(set(names)) == 3


def test_targets_sharing_ports_and_action_share_one_selector() -> None:
    """The kernel only has to tell ports and actions apart: which destination an address
    belongs to is worked out from the event afterwards (match.py)."""
    destinations = [{"name": f"d{i}", "cidrs": [f"10.{i}.0.0/16"], "ports": [443]} for i in range(20)]
    spec = {"network": {"providers": ["openai", "anthropic", "ollama"], "destinations": destinations}}
    (doc,) = _render(_profile(spec), HOST_TABLE)
    assert len(_selectors(doc)) == 2  # 443 with addresses; 11434 on any address (ollama)


def test_a_target_on_any_address_makes_its_group_port_only() -> None:
    spec = {
        "network": {
            "providers": ["ollama"],
            "destinations": [{"name": "gpu-box", "cidrs": ["10.5.0.0/16"], "ports": [11434]}],
        }
    }
    (doc,) = _render(_profile(spec))
    (sel,) = _selectors(doc)
    assert sel["matchArgs"] == [{"index": 0, "operator": "DPort", "values": ["11434"]}]


# ---- actions ---------------------------------------------------------------------------------

ENFORCING_SPEC: dict[str, Any] = {
    "network": {
        "providers": ["openai"],
        "destinations": [
            {"name": "gw", "cidrs": ["10.1.0.0/16"], "ports": [443], "enforce": True},
            {"name": "watch", "cidrs": ["10.2.0.0/16"], "ports": [443]},
        ],
    },
    "files": {"presets": ["ssh-keys"], "paths": [{"postfix": "/.ssh/id_rsa", "enforce": True}]},
    "processes": {"presets": ["shells"], "binaries": [{"equal": "/usr/bin/curl", "enforce": True}]},
}


def test_enforce_mode_kills_on_enforcing_rules_only() -> None:
    docs = _by_hook(_render(_profile({**ENFORCING_SPEC, "mode": "Enforce"}), HOST_TABLE))
    net = docs["tcp_connect"]
    kill = [s for s in _selectors(net) if s["matchActions"] == [{"action": ACTION_ENFORCE}]]
    assert [a["values"] for s in kill for a in s["matchArgs"]] == [
        ["10.1.0.0/16", "::ffff:10.1.0.0/112"],
        ["443"],
    ]
    observed = {v for s in _selectors(net) if s not in kill for a in s["matchArgs"] for v in a["values"]}
    assert "10.2.0.0/16" in observed and _cidrs_of(CATALOG.providers["openai"].hostnames) <= observed
    assert "10.1.0.0/16" not in observed
    # A rule may be enforced while a preset entry with the same value is only observed.
    assert _rules(docs["fd_install"], ACTION_ENFORCE) == {("Postfix", "/.ssh/id_rsa")}
    assert ("Postfix", "/.ssh/id_rsa") in _rules(docs["fd_install"], ACTION_OBSERVE)
    assert _rules(docs["execve"], ACTION_ENFORCE) == {("Equal", "/usr/bin/curl")}
    assert ("Postfix", "/bash") in _rules(docs["execve"], ACTION_OBSERVE)


def test_monitor_mode_only_observes_the_same_rules() -> None:
    docs = _render(_profile({**ENFORCING_SPEC, "mode": "Monitor"}), HOST_TABLE)
    assert len(docs) == 3
    actions = {a["action"] for d in docs for s in _selectors(d) for a in s["matchActions"]}
    assert actions == {ACTION_OBSERVE}
    (sel,) = [s for s in _selectors(_by_hook(docs)["execve"]) if ("Equal", "/usr/bin/curl") in _pairs(s)]
    assert sel["matchActions"] == [{"action": "Post"}]


def _pairs(selector: dict[str, Any]) -> set[tuple[str, str]]:
    return {(a["operator"], v) for a in selector["matchArgs"] for v in a["values"]}


# ---- resolution ------------------------------------------------------------------------------


def test_unresolved_hostnames_are_left_out_not_rendered_empty() -> None:
    spec = {
        "network": {
            "providers": ["openai", "anthropic"],
            "destinations": [{"name": "gw", "hostnames": ["gw.example.com"], "ports": [443]}],
        }
    }
    profile = _profile(spec)
    resolved = _resolve(profile, {"api.openai.com": ["203.0.113.1"]})
    assert resolved["api.anthropic.com"].error and resolved["api.anthropic.com"].addresses == ()
    (doc,) = render(profile, targets_for(profile, None), resolved)
    for sel in _selectors(doc):
        assert all(a["values"] for a in sel["matchArgs"])
    assert _match_values(doc, "DAddr") == ["203.0.113.1/32"]
    targets = {t.name: t for t in network_targets(profile.spec, resolved)}
    assert targets["anthropic"].unresolved == ["api.anthropic.com"] and not targets["anthropic"].cidrs
    assert targets["gw"].unresolved == ["gw.example.com"]
    assert targets["openai"].unresolved == []


def test_nothing_resolved_renders_no_network_policy() -> None:
    profile = _profile({"network": {"providers": ["openai"]}, "files": {"presets": ["credentials"]}})
    docs = _render(profile, {})
    assert [d["metadata"]["labels"][LABEL_HOOK] for d in docs] == ["fd_install"]


def test_addresses_kept_from_a_failed_lookup_are_rendered() -> None:
    profile = _profile({"network": {"providers": ["anthropic"]}})
    previous = {"api.anthropic.com": Resolution(("160.79.104.10",), "2024-12-31T00:00:00Z")}
    resolved = resolve_all(hostnames_of(profile.spec), StaticResolver({}), previous, NOW)
    (doc,) = render(profile, targets_for(profile, None), resolved)
    assert _match_values(doc, "DAddr") == ["160.79.104.10/32"]


# ---- metadata, names -----------------------------------------------------------------------


def test_metadata_labels_and_hash() -> None:
    profile = _profile({"files": {"presets": ["credentials"]}}, name="creds", namespace="prod")
    (doc,) = _render(profile)
    assert doc["apiVersion"] == "cilium.io/v1alpha1"
    assert doc["kind"] == "TracingPolicyNamespaced"
    meta = doc["metadata"]
    assert meta["namespace"] == "prod"
    assert meta["name"] == policy_name(profile, Target("TracingPolicyNamespaced", "prod"), "fd_install")
    assert meta["name"].startswith("creds-file-")
    assert meta["labels"] == {
        LABEL_MANAGED_BY: "agentdetect",
        LABEL_PROFILE_KIND: "AgentDetectionProfile",
        LABEL_PROFILE_NAME: "creds",
        LABEL_PROFILE_NAMESPACE: "prod",
        LABEL_HOOK: "fd_install",
    }
    assert meta["annotations"] == {ANNOTATION_HASH: spec_hash(meta["labels"], doc["spec"])}


def test_cluster_profile_renders_a_cluster_wide_policy() -> None:
    profile = _profile({"files": {"presets": ["credentials"]}}, name="creds", namespace=None, kind=CADP)
    (doc,) = _render(profile)
    assert doc["kind"] == "TracingPolicy"
    assert "namespace" not in doc["metadata"]
    assert LABEL_PROFILE_NAMESPACE not in doc["metadata"]["labels"]


def test_cluster_profile_renders_one_policy_naming_the_selected_namespaces() -> None:
    """One policy-filter entry however many namespaces match (Tetragon holds 128 per agent,
    POLICY_FILTER_MAX_POLICIES in bpf/process/policy_filter.h)."""
    profile = _profile(
        {
            "files": {"presets": ["credentials"]},
            "selector": {"matchLabels": {"app": "bot"}},
            "namespaceSelector": {"matchLabels": {"tier": "rag"}},
        },
        name="creds",
        namespace=None,
        kind=CADP,
    )
    namespaces = [("b", {"tier": "rag"}), ("a", {"tier": "rag"}), ("c", {"tier": "web"})]
    (doc,) = render(profile, targets_for(profile, namespaces), {})
    assert doc["kind"] == "TracingPolicy" and "namespace" not in doc["metadata"]
    assert doc["spec"]["podSelector"] == {
        "matchLabels": {"app": "bot"},
        "matchExpressions": [{"key": POD_NAMESPACE_LABEL, "operator": "In", "values": ["a", "b"]}],
    }
    # The name does not depend on the namespaces: the policy is updated as they change.
    (again,) = render(profile, targets_for(profile, [("z", {"tier": "rag"})]), {})
    assert again["metadata"]["name"] == doc["metadata"]["name"]
    assert again["spec"]["podSelector"]["matchExpressions"][0]["values"] == ["z"]
    assert render(profile, targets_for(profile, [("c", {"tier": "web"})]), {}) == []


def test_pod_and_container_selectors_are_passed_through() -> None:
    spec = {
        "files": {"presets": ["credentials"]},
        "selector": {"matchLabels": {"app": "bot"}},
        "containerSelector": {
            "matchExpressions": [{"key": "name", "operator": "NotIn", "values": ["sidecar"]}]
        },
    }
    (doc,) = _render(_profile(spec))
    assert doc["spec"]["podSelector"] == {"matchLabels": {"app": "bot"}}
    assert doc["spec"]["containerSelector"] == {
        "matchExpressions": [{"key": "name", "operator": "NotIn", "values": ["sidecar"]}]
    }


PODS_ONLY = {"matchExpressions": [{"key": POD_NAMESPACE_LABEL, "operator": "Exists"}]}


@pytest.mark.parametrize("kind", [ADP, CADP])
def test_without_a_selector_every_pod_and_no_host_process_is_watched(kind: str) -> None:
    """An empty podSelector would watch host processes too on Tetragon v1.6.0 (no filter at
    all: updatePolicyFilter in pkg/sensors/handler.go); Exists on the namespace label Tetragon
    gives every pod (pkg/policyfilter/state.go podMatches) selects all pods on v1.6 and v1.7."""
    spec = {"files": {"presets": ["credentials"]}, "selector": {}, "containerSelector": {}}
    (doc,) = _render(_profile(spec, namespace=None if kind == CADP else "team-a", kind=kind))
    assert doc["spec"] == {"podSelector": PODS_ONLY, "kprobes": doc["spec"]["kprobes"]}


def test_match_expressions_alone_keep_the_users_selector() -> None:
    expr = [{"key": "tier", "operator": "NotIn", "values": ["batch"]}]
    spec = {"files": {"presets": ["credentials"]}, "selector": {"matchExpressions": expr}}
    (doc,) = _render(_profile(spec))
    assert doc["spec"]["podSelector"] == {"matchExpressions": expr}


def test_host_processes_only_when_asked() -> None:
    spec = {"files": {"presets": ["credentials"]}, "hostProcesses": True}
    (doc,) = _render(_profile(spec, namespace=None, kind=CADP))
    assert "podSelector" not in doc["spec"] and "containerSelector" not in doc["spec"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"mode": "Enforce"}, "hostProcesses cannot be combined with mode Enforce"),
        ({"selector": {"matchLabels": {"a": "b"}}}, "cannot be combined with selector"),
        ({"namespaceSelector": {}}, "cannot be combined with namespaceSelector"),
        ({"containerSelector": {}}, "cannot be combined with containerSelector"),
    ],
)
def test_host_processes_stand_alone_and_never_enforce(extra: dict[str, Any], message: str) -> None:
    spec = {"files": {"presets": ["credentials"]}, "hostProcesses": True, **extra}
    with pytest.raises(ValueError) as err:
        _profile(spec, namespace=None, kind=CADP)
    assert message in describe_invalid(err.value)


def test_host_processes_is_a_cluster_profile_field() -> None:
    with pytest.raises(ValueError) as err:
        _profile({"files": {"presets": ["credentials"]}, "hostProcesses": True})
    assert "spec.hostProcesses" in describe_invalid(err.value)


_IDENTITIES: list[tuple[ProfileKind, str | None, PolicyKind, str | None, str]] = [
    (pk, pns, tk, tns, hook)
    for pk in (ADP, CADP)
    for pns in (None, "a", "b", "n" * 63)
    for tk in ("TracingPolicy", "TracingPolicyNamespaced")
    for tns in (None, "a", "b", "n" * 63)
    for hook in HOOKS
]


@pytest.mark.parametrize("name", ["p", "a" * 62 + "b", "x-" * 31 + "x"])
def test_policy_names_are_unique_and_valid(name: str) -> None:
    spec = ProfileSpec.model_validate({"files": {"presets": ["credentials"]}})
    names = [
        policy_name(Profile(pk, name, pns, spec), Target(tk, tns), hook)
        for pk, pns, tk, tns, hook in _IDENTITIES
    ]
    assert len(set(names)) == len(names) == len(_IDENTITIES)
    for n in names:
        assert len(n) <= 63 and _DNS_LABEL.match(n), n


def test_long_names_keep_a_readable_prefix() -> None:
    spec = ProfileSpec.model_validate({"files": {"presets": ["credentials"]}})
    name = policy_name(
        Profile(CADP, "a" * 63, None, spec), Target("TracingPolicyNamespaced", "n" * 63), "execve"
    )
    assert len(name) == 63
    assert re.fullmatch(r"a{49}-exec-[0-9a-f]{8}", name)


def test_profile_names_with_dots_render() -> None:
    """Kubernetes object names are DNS subdomains, so ``team.llm-egress`` is a name the API server
    (and parse_profile) accept; rendering must not then fail on it."""
    profile = _profile({"files": {"presets": ["credentials"]}}, name="team.llm-egress")
    (doc,) = _render(profile)
    assert _DNS_LABEL.match(doc["metadata"]["name"])
    assert doc["metadata"]["labels"][LABEL_PROFILE_NAME] == "team.llm-egress"


# ---- determinism -----------------------------------------------------------------------------


def test_render_is_deterministic() -> None:
    profile = _profile(
        {**ENFORCING_SPEC, "mode": "Enforce", "selector": {"matchLabels": {"b": "1", "a": "2"}}}
    )
    first = _render(profile, HOST_TABLE)
    second = _render(profile, HOST_TABLE)
    assert first == second
    assert [d["metadata"]["annotations"] for d in first] == [d["metadata"]["annotations"] for d in second]
    assert len({d["metadata"]["annotations"][ANNOTATION_HASH] for d in first}) == 3


def test_rule_order_does_not_change_the_output() -> None:
    spec: dict[str, Any] = {
        "network": {"providers": ["openai", "anthropic", "ollama"]},
        "files": {"presets": ["credentials", "ssh-keys"], "paths": [{"equal": "/b"}, {"equal": "/a"}]},
        "processes": {"presets": ["shells", "network-tools"]},
    }
    shuffled: dict[str, Any] = {
        "network": {"providers": ["ollama", "anthropic", "openai"]},
        "files": {"presets": ["ssh-keys", "credentials"], "paths": [{"equal": "/a"}, {"equal": "/b"}]},
        "processes": {"presets": ["network-tools", "shells"]},
    }
    assert _render(_profile(spec), HOST_TABLE) == _render(_profile(shuffled), HOST_TABLE)


def test_spec_hash_follows_the_addresses() -> None:
    profile = _profile({"network": {"providers": ["anthropic"]}})
    (before,) = _render(profile, {"api.anthropic.com": ["160.79.104.10"]})
    (after,) = _render(profile, {"api.anthropic.com": ["160.79.104.11"]})
    assert before["metadata"]["name"] == after["metadata"]["name"]
    assert before["metadata"]["annotations"] != after["metadata"]["annotations"]


# ---- hostile strings -------------------------------------------------------------------------

HOSTILE = [
    '/x"\n  - index: 9',
    "/a: b",
    "/{{ 7*7 }}",
    "/{% raw %}x",
    "/x\u2028y",
    "/x\u0085y",
    "/é",
    "/#comment",
    "/x', 'y",
    '/x", "y',
    "/]}, {",
    "/x\\",
    "/&anchor *alias",
    "/!!python/object/apply:os.system ['id']",
    "/---\n...\n--- !x",
    "/x\ty\bz\fw\rv",
    "/nul\x00",
    "/\ufeffbom",
    " /leading-space",
    "/trailing-space ",
    "/",
]


def _hostile_selector(h: str) -> LabelSelector:
    return LabelSelector.model_construct(
        match_labels={h: h},
        match_expressions=[LabelSelectorRequirement.model_construct(key=h, operator="In", values=[h])],
    )


def _hostile_spec(h: str) -> ProfileSpec:
    """Every string that reaches a template, set to ``h``, past validation."""
    return ProfileSpec.model_construct(
        selector=_hostile_selector(h),
        container_selector=_hostile_selector(h),
        network=Network.model_construct(
            destinations=[Destination.model_construct(name="d", cidrs=[h], ports=[443])]
        ),
        files=Files.model_construct(
            paths=[
                PathRule.model_construct(equal=h),
                PathRule.model_construct(prefix=h),
                PathRule.model_construct(postfix=h),
            ]
        ),
        processes=Processes.model_construct(
            binaries=[
                BinaryRule.model_construct(equal=h),
                BinaryRule.model_construct(prefix=h),
                BinaryRule.model_construct(postfix=h),
            ]
        ),
    )


def _expected(
    profile: Profile, target: Target, hook: str, kprobe: dict[str, Any], sel: Any
) -> dict[str, Any]:
    assert profile.namespace is not None
    labels = {
        LABEL_MANAGED_BY: "agentdetect",
        LABEL_PROFILE_KIND: profile.kind,
        LABEL_PROFILE_NAME: profile.name,
        LABEL_PROFILE_NAMESPACE: profile.namespace,
        LABEL_HOOK: hook,
    }
    spec = {"podSelector": sel, "containerSelector": sel, "kprobes": [kprobe]}
    return {
        "apiVersion": "cilium.io/v1alpha1",
        "kind": target.kind,
        "metadata": {
            "name": policy_name(profile, target, hook),
            "namespace": target.namespace,
            "labels": labels,
            "annotations": {ANNOTATION_HASH: spec_hash(labels, spec)},
        },
        "spec": spec,
    }


def _string_kprobe(call: str, index: int, h: str) -> dict[str, Any]:
    args = (
        [{"index": 0, "type": "int"}, {"index": 1, "type": "file"}]
        if index
        else [{"index": 0, "type": "string"}]
    )
    return {
        "call": call,
        "syscall": call == "sys_execve",
        "args": args,
        "selectors": [
            {
                "matchArgs": [{"index": index, "operator": op, "values": [h]}],
                "matchActions": [{"action": "Post"}],
            }
            for op in ("Equal", "Postfix", "Prefix")
        ],
    }


@pytest.mark.parametrize("h", HOSTILE, ids=[ascii(h) for h in HOSTILE])
@pytest.mark.unjudged
def test_hostile_strings_cannot_change_the_structure(h: str) -> None:
    profile = Profile(ADP, "p", h, _hostile_spec(h))
    target = Target("TracingPolicyNamespaced", h)
    docs = render(profile, [target], {})
    sel = {"matchLabels": {h: h}, "matchExpressions": [{"key": h, "operator": "In", "values": [h]}]}
    tcp = {
        "call": "tcp_connect",
        "syscall": False,
        "args": [{"index": 0, "type": "sock"}],
        "selectors": [
            {
                "matchArgs": [
                    {"index": 0, "operator": "DAddr", "values": [h]},
                    {"index": 0, "operator": "DPort", "values": ["443"]},
                ],
                "matchActions": [{"action": "Post"}],
            }
        ],
    }
    assert docs == [
        _expected(profile, target, "tcp_connect", tcp, sel),
        _expected(profile, target, "fd_install", _string_kprobe("fd_install", 1, h), sel),
        _expected(profile, target, "execve", _string_kprobe("sys_execve", 0, h), sel),
    ]
    for doc in docs:
        assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
        assert set(doc["metadata"]) == {"name", "namespace", "labels", "annotations"}
        assert set(doc["spec"]) == {"podSelector", "containerSelector", "kprobes"}


@pytest.mark.parametrize("h", HOSTILE, ids=[ascii(h) for h in HOSTILE])
def test_hostile_profile_names_are_refused_not_rendered(h: str) -> None:
    profile = Profile(CADP, h, None, ProfileSpec.model_validate({"files": {"presets": ["credentials"]}}))
    with pytest.raises(RenderError, match="invalid policy"):
        render(profile, [Target("TracingPolicy", None)], {})


def test_non_bmp_characters_in_paths_round_trip() -> None:
    """Valid paths may hold any printable character, including ones outside the Basic
    Multilingual Plane; they must reach the policy unchanged (not as UTF-16 surrogate halves)."""
    key, robot = "/secrets/\U0001f511.pem", "/usr/local/bin/\U0001f916"
    profile = _profile({"files": {"paths": [{"equal": key}]}, "processes": {"binaries": [{"equal": robot}]}})
    docs = _by_hook(_render(profile))
    assert _match_values(docs["fd_install"], "Equal") == [key]
    assert _match_values(docs["execve"], "Equal") == [robot]


# ---- template overrides ----------------------------------------------------------------------

_PROFILE_ALL = {
    "network": {"destinations": [{"name": "gw", "cidrs": ["10.1.0.0/16"], "ports": [443]}]},
    "files": {"presets": ["credentials"]},
}


def _override(tmp_path: Path, name: str, text: str) -> Path:
    directory = tmp_path / "templates"
    directory.mkdir()
    (directory / name).write_text(text)
    return directory


def _builtin(name: str) -> str:
    return (BUILTIN_TEMPLATES / name).read_text()


def test_template_override_is_used(tmp_path: Path) -> None:
    text = _builtin("tcp_connect.yaml.j2")
    assert text.count("{%- if sel.ports %}") == 1
    # An override that still renders a policy Tetragon loads: addresses only, any port.
    directory = _override(
        tmp_path, "tcp_connect.yaml.j2", text.replace("{%- if sel.ports %}", "{%- if false %}")
    )
    profile = _profile(_PROFILE_ALL)
    docs = _by_hook(render(profile, targets_for(profile, None), {}, template_dir=directory))
    assert _match_values(docs["tcp_connect"], "DPort") == []
    assert _match_values(_by_hook(_render(profile))["tcp_connect"], "DPort") != []
    # Hooks without an override still use the built-in templates (and the macros they import).
    assert docs["fd_install"] == _by_hook(_render(profile))["fd_install"]


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        pytest.param(lambda t: t + "\n  evil: [\n", "invalid YAML", id="invalid-yaml"),
        pytest.param(
            lambda t: t.replace("  kprobes:", "  evil: true\n  kprobes:"), "invalid policy", id="spec-evil"
        ),
        pytest.param(lambda t: t + "\nevil: 1\n", "invalid policy", id="top-level-key"),
        pytest.param(
            lambda t: t.replace('operator: "DAddr"', 'operator: "NotDAddr"'),
            "invalid policy",
            id="bad-operator",
        ),
        pytest.param(
            lambda t: t.replace("{{ m.metadata(policy) }}", "{{ m.metadata(dict(policy, name='other')) }}"),
            "changed the policy's kind, name or namespace",
            id="metadata-name",
        ),
        pytest.param(
            lambda t: t.replace(
                "{{ m.metadata(policy) }}", "{{ m.metadata(dict(policy, namespace='kube-system')) }}"
            ),
            "changed the policy's kind, name or namespace",
            id="metadata-namespace",
        ),
        pytest.param(
            lambda t: t.replace("{{ m.metadata(policy) }}", "{{ m.metadata(dict(policy, labels={})) }}"),
            "ownership labels",
            id="labels-dropped",
        ),
        pytest.param(
            lambda t: t.replace("{%- endfor %}", "", 1), "template tcp_connect.yaml.j2", id="jinja-syntax"
        ),
        pytest.param(lambda t: t + "{{ no_such_variable }}", "no_such_variable", id="undefined-variable"),
        pytest.param(lambda t: "- just\n- a list\n", "did not produce one mapping", id="not-a-mapping"),
    ],
)
def test_broken_override_raises_render_error(tmp_path: Path, edit: Any, match: str) -> None:
    text = edit(_builtin("tcp_connect.yaml.j2"))
    assert text != _builtin("tcp_connect.yaml.j2")
    directory = _override(tmp_path, "tcp_connect.yaml.j2", text)
    profile = _profile(_PROFILE_ALL)
    with pytest.raises(RenderError, match=re.escape(match)):
        render(profile, targets_for(profile, None), {}, template_dir=directory)


def test_regional_catalog_lists_name_their_source() -> None:
    """Providers listed region by region say where the list of regions comes from."""
    text = catalog.CATALOG_FILE.read_text()
    for name, provider in CATALOG.providers.items():
        if len(provider.hostnames) > 3:
            found = re.search(rf"\n  {name}:\n((?:    .*\n)*)", text)
            block = found.group(1) if found else ""
            assert "# Source:" in block, f"{name}: {len(provider.hostnames)} hostnames without a source"
    bedrock = CATALOG.providers["bedrock"].hostnames
    assert {"bedrock-runtime.us-east-1.amazonaws.com", "bedrock-runtime.eu-central-2.amazonaws.com"} <= set(
        bedrock
    )
    assert "bedrock-runtime-fips.us-gov-west-1.amazonaws.com" in bedrock
    assert "europe-west12-aiplatform.googleapis.com" in CATALOG.providers["google-vertex-ai"].hostnames


def test_policies_of_one_shape_share_a_parsed_skeleton_but_never_values() -> None:
    """Values are kept out of the YAML text (render._Values), so the text left is the same for
    every policy of a shape and is parsed once; each policy still gets exactly its own values."""
    from agentdetect.policy import render as render_module

    render_module._skeleton.cache_clear()
    a = _render(_profile({"files": {"paths": [{"equal": "/a"}]}}, name="one", namespace="x"))
    b = _render(_profile({"files": {"paths": [{"equal": "/b"}]}}, name="two", namespace="y"))
    info = render_module._skeleton.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    assert _rules(a[0]) == {("Equal", "/a")} and _rules(b[0]) == {("Equal", "/b")}
    assert (a[0]["metadata"]["namespace"], b[0]["metadata"]["namespace"]) == ("x", "y")


def test_a_string_shaped_like_a_token_stays_a_string() -> None:
    fake = "/agentdetect:0000000000000000:0"
    (doc,) = _render(_profile({"files": {"paths": [{"equal": fake}]}}))
    assert _rules(doc) == {("Equal", fake)}


def test_a_template_filtering_a_constant_renders_right_every_time(tmp_path: Path) -> None:
    """Jinja folds a filter on a constant at compile time; a value token made then must not be
    baked into the template for every later render (render._json_filter takes the context)."""
    text = _builtin("execve.yaml.j2").replace('call: "sys_execve"', 'call: {{ "sys_execve" | json }}')
    directory = _override(tmp_path, "execve.yaml.j2", text)
    for name in ("first", "second", "third"):
        profile = _profile({"processes": {"presets": ["shells"]}}, name=name)
        (doc,) = render(profile, targets_for(profile, None), {}, template_dir=directory)
        assert doc["spec"]["kprobes"][0]["call"] == "sys_execve"
        assert doc["metadata"]["name"].startswith(f"{name}-exec-")
