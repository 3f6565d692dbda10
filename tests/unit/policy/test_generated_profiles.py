"""Generated profiles, every field up to its limit: each one renders into policies within
Tetragon's limits, and (through tests/test_tetragon_judge.py, which judges every policy this
run rendered) that Tetragon's own code accepts.

The limits come from the pydantic models (the single source of the profile schema), so a
limit raised there is exercised here without editing this file.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
from typing import Any

import annotated_types
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from agentdetect.api import catalog
from agentdetect.api.models import (
    PATH_MAX_BYTES,
    TENANT_ONLY,
    TETRAGON_POSTFIX_MAX_BYTES,
    TETRAGON_PREFIX_MAX_BYTES,
    ClusterProfileSpec,
    Destination,
    Files,
    LabelSelector,
    LabelSelectorRequirement,
    Network,
    Processes,
)
from agentdetect.controller.reconcile import targets_for
from agentdetect.policy.profiles import parse_profile
from agentdetect.policy.render import (
    MAX_SELECTORS,
    POD_NAMESPACE_LABEL,
    Profile,
    hostnames_of,
    ipv4_mapped,
    render,
)
from agentdetect.policy.resolve import ResolutionError, resolve_all

CATALOG = catalog.load()
NOW = "2026-01-01T00:00:00Z"
#: How many valid profiles the property test must have rendered (issue: at least 1,000).
EXAMPLES = 1100


def limit(model: type[BaseModel], name: str) -> int:
    """A field's max_length, as the model declares it."""
    for meta in model.model_fields[name].metadata:
        if isinstance(meta, annotated_types.MaxLen):
            return int(meta.max_length)
    raise AssertionError(f"{model.__name__}.{name} has no max_length")


class HashResolver:
    """Every hostname resolves to addresses derived from its name, IPv4, IPv6 or both; a name
    with 'unresolvable' in it fails, as a name without DNS records would."""

    def resolve(self, hostname: str) -> list[str]:
        if "unresolvable" in hostname:
            raise ResolutionError(f"{hostname}: no such host")
        h = hashlib.sha256(hostname.encode()).digest()
        v4, v6 = f"198.51.{h[0]}.{h[1]}", f"2001:db8::{h[2]:x}:{h[3]:x}"
        return [[v4], [v6], [v4, v6]][h[4] % 3]


# ---- generators: each bounded by the model's own limits ----------------------------------------
# Hypothesis draws the structure (which hooks, selectors, modes, how many of each, up to every
# limit) and a seed; the many leaf values (addresses, names, paths) come from a Random with that
# seed. Drawing each of thousands of leaves through Hypothesis cost minutes for a thousand
# profiles; this way they take seconds and stay reproducible.

#: Characters of every UTF-8 width, and ones that mean something to YAML, JSON or a shell.
_CHARS = (
    "abcxyz0189-_./"
    + "\u00e9\u00df\u0416"  # two bytes
    + "\u4e2d\u2028\u2029\ufeff"  # three bytes, YAML line breaks, BOM
    + "\U0001f511\U0001f916"  # four bytes
    + " '\":#{}[],&*!|>%@`\\"
)
_LABEL_CHARS = "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789-_."


def _fit(text: str, max_bytes: int) -> str:
    return text.encode()[:max_bytes].decode("utf-8", "ignore")


class Leaves:
    """Leaf values for one generated profile."""

    def __init__(self, seed: int) -> None:
        self.rnd = random.Random(seed)

    def count(self, most: int) -> int:
        """A few, or exactly the limit."""
        return self.rnd.choice(sorted({0, 1, 2, most}))

    def label_name(self) -> str:
        n = self.rnd.choice([1, 2, 9, 63])
        if n == 1:
            return self.rnd.choice("abcXYZ019")
        middle = "".join(self.rnd.choice(_LABEL_CHARS) for _ in range(n - 2))
        return self.rnd.choice("aZ0") + middle + self.rnd.choice("bY9")

    def label_key(self) -> str:
        prefix = self.rnd.choice(["", "example.com/", "app.kubernetes.io/", "a.b-c.d/"])
        return prefix + self.label_name()

    def label_value(self) -> str:
        return "" if self.rnd.random() < 0.1 else self.label_name()

    def selector(self) -> dict[str, Any]:
        expressions = []
        for _ in range(self.count(limit(LabelSelector, "match_expressions"))):
            op = self.rnd.choice(["In", "NotIn", "Exists", "DoesNotExist"])
            expr: dict[str, Any] = {"key": self.label_key(), "operator": op}
            if op in ("In", "NotIn"):
                most = limit(LabelSelectorRequirement, "values")
                expr["values"] = [self.label_value() for _ in range(max(1, self.count(most)))]
            expressions.append(expr)
        labels = {
            self.label_key(): self.label_value()
            for _ in range(self.count(limit(LabelSelector, "match_labels")))
        }
        return {"matchLabels": labels, "matchExpressions": expressions}

    def text(self, max_bytes: int, absolute: bool) -> str:
        """Up to ``max_bytes`` of UTF-8, half the time filled to the limit."""
        size = max_bytes if self.rnd.random() < 0.5 else self.rnd.randint(1, max_bytes)
        body = "".join(self.rnd.choice(_CHARS) for _ in range(size))
        return _fit(("/" if absolute else "") + body, size) or "/"

    def path_rule(self) -> dict[str, Any]:
        op = self.rnd.choice(["equal", "prefix", "postfix"])
        most = {"equal": PATH_MAX_BYTES, "prefix": min(PATH_MAX_BYTES, TETRAGON_PREFIX_MAX_BYTES)}
        value = self.text(most.get(op, TETRAGON_POSTFIX_MAX_BYTES), absolute=op != "postfix")
        return {op: value, "enforce": self.rnd.random() < 0.3}

    def cidr(self) -> str:
        if self.rnd.random() < 0.6:
            address = ipaddress.IPv4Address(self.rnd.getrandbits(32))
            return f"{address}/{self.rnd.choice([0, 1, 8, 16, 24, 31, 32, self.rnd.randint(0, 32)])}"
        address6 = ipaddress.IPv6Address(self.rnd.getrandbits(128))
        return f"{address6}/{self.rnd.choice([0, 32, 48, 64, 96, 127, 128, self.rnd.randint(0, 128)])}"

    def dns_label(self, most: int = 63) -> str:
        n = min(most, self.rnd.choice([1, 5, 63]))
        inner = "".join(self.rnd.choice("abcxyz0189-") for _ in range(n - 2)) if n > 2 else ""
        return (self.rnd.choice("az09") + inner + self.rnd.choice("bz19"))[:n]

    def hostname(self) -> str:
        domain = "unresolvable.test" if self.rnd.random() < 0.1 else "example.com"
        return ".".join([*(self.dns_label() for _ in range(self.rnd.randint(1, 3))), domain])

    def ports(self) -> list[int]:
        return sorted({self.rnd.randint(1, 65535) for _ in range(self.count(limit(Destination, "ports")))})

    def destination(self, index: int) -> dict[str, Any]:
        d: dict[str, Any] = {"name": f"d{index}", "enforce": self.rnd.random() < 0.3}
        kind = self.rnd.choice(["addresses", "provider", "tenant"])
        if kind == "addresses":
            d["cidrs"] = [self.cidr() for _ in range(self.count(limit(Destination, "cidrs")))]
            d["hostnames"] = [self.hostname() for _ in range(self.count(limit(Destination, "hostnames")))]
            if not d["cidrs"] and not d["hostnames"]:
                d["cidrs"] = [self.cidr()]
        elif kind == "provider":
            d["provider"] = self.rnd.choice(LISTABLE)
        else:
            d["provider"] = name = self.rnd.choice(SUFFIXED)
            d["hostnames"] = [
                self.dns_label(40) + suffix for suffix in CATALOG.providers[name].tenant_suffixes
            ]
        d["ports"] = self.ports()
        return d


LISTABLE = [n for n in CATALOG.providers if n not in TENANT_ONLY]
SUFFIXED = [n for n, p in CATALOG.providers.items() if p.tenant_suffixes]


@st.composite
def specs(draw: st.DrawFn, cluster: bool) -> tuple[dict[str, Any], list[tuple[str, dict[str, str]]]]:
    leaves = Leaves(draw(st.integers(0, 2**64 - 1)))
    spec: dict[str, Any] = {"mode": draw(st.sampled_from(["Monitor", "Enforce"]))}
    if cluster and spec["mode"] == "Monitor" and draw(st.integers(0, 9)) == 0:
        spec["hostProcesses"] = True
    else:
        if draw(st.booleans()):
            spec["selector"] = leaves.selector()
        if draw(st.integers(0, 3)) == 0:
            spec["containerSelector"] = leaves.selector()
        if cluster and draw(st.booleans()):
            spec["namespaceSelector"] = leaves.selector()
    hooks = draw(st.sets(st.sampled_from(["network", "files", "processes"]), min_size=1))
    if "network" in hooks:
        count = draw(st.sampled_from([0, 1, 2, 5, limit(Network, "destinations")]))
        providers = draw(st.lists(st.sampled_from(LISTABLE), min_size=0 if count else 1, unique=True))
        spec["network"] = {
            "providers": providers,
            "destinations": [leaves.destination(i) for i in range(count)],
        }
    for hook, model, field, presets in (
        ("files", Files, "paths", list(CATALOG.file_presets)),
        ("processes", Processes, "binaries", list(CATALOG.process_presets)),
    ):
        if hook in hooks:
            rules = [leaves.path_rule() for _ in range(draw(st.sampled_from([0, 1, 3, limit(model, field)])))]
            chosen = draw(st.lists(st.sampled_from(presets), min_size=0 if rules else 1, unique=True))
            spec[hook] = {"presets": chosen, field: rules}
    names = {f"ns{i}-{leaves.dns_label(56)}" for i in range(draw(st.sampled_from([0, 1, 3, 40])))}
    ns = [
        (n, {"tier": leaves.rnd.choice(["a", "b"]), leaves.label_key(): leaves.label_value()})
        for n in sorted(names)
    ]
    return spec, ns


# ---- the properties ----------------------------------------------------------------------------


def check(profile: Profile, docs: list[dict[str, Any]]) -> None:
    """What Tetragon requires of each policy, checked without Tetragon (the judge adds its own)."""
    names = [d["metadata"]["name"] for d in docs]
    assert len(set(names)) == len(names), "policy names are unique"
    host = isinstance(profile.spec, ClusterProfileSpec) and profile.spec.host_processes
    for doc in docs:
        assert len(doc["metadata"]["name"]) <= 63
        spec = doc["spec"]
        (kprobe,) = spec["kprobes"]  # one kprobe per policy: no duplicate symbol under kprobe_multi
        assert 1 <= len(kprobe["selectors"]) <= MAX_SELECTORS
        if host:
            assert "podSelector" not in spec and "containerSelector" not in spec
        else:
            selector = spec["podSelector"]  # pods only: never empty, never absent
            assert selector.get("matchLabels") or selector.get("matchExpressions")
        for sel in kprobe["selectors"]:
            assert 1 <= len(sel["matchArgs"]) <= 2 and len(sel["matchActions"]) == 1
            for arg in sel["matchArgs"]:
                size = max(len(v.encode()) for v in arg["values"])
                if arg["operator"] == "Postfix":
                    assert size <= TETRAGON_POSTFIX_MAX_BYTES
                elif arg["operator"] in ("Prefix", "Equal"):
                    assert size <= PATH_MAX_BYTES
                elif arg["operator"] == "DAddr":
                    v4 = [v for v in arg["values"] if ipv4_mapped(v)]
                    assert {ipv4_mapped(v) for v in v4} <= set(arg["values"])
    if profile.spec.mode == "Monitor":
        assert all(
            a["action"] == "Post"
            for d in docs
            for s in d["spec"]["kprobes"][0]["selectors"]
            for a in s["matchActions"]
        )


RENDERED_PROFILES: list[int] = []


def _render_one(profile: Profile, ns: list[tuple[str, dict[str, str]]]) -> list[dict[str, Any]]:
    resolved = resolve_all(hostnames_of(profile.spec), HashResolver(), {}, NOW)
    docs = render(profile, targets_for(profile, ns), resolved)
    check(profile, docs)
    RENDERED_PROFILES.append(len(docs))
    return docs


def _parse(kind: str, spec: dict[str, Any]) -> Profile:
    meta = (
        {"name": "generated"} if kind.startswith("Cluster") else {"name": "generated", "namespace": "team-a"}
    )
    return parse_profile({"kind": kind, "metadata": meta, "spec": spec})


@pytest.mark.parametrize(
    "cluster", [False, True], ids=["AgentDetectionProfile", "ClusterAgentDetectionProfile"]
)
def test_generated_profiles_render_within_tetragons_limits(cluster: bool) -> None:
    kind = "ClusterAgentDetectionProfile" if cluster else "AgentDetectionProfile"
    before = len(RENDERED_PROFILES)

    @settings(
        max_examples=EXAMPLES // 2,
        derandomize=True,  # the same profiles however and wherever the suite runs
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(specs(cluster))
    def run(drawn: tuple[dict[str, Any], list[tuple[str, dict[str, str]]]]) -> None:
        spec, ns = drawn
        _render_one(_parse(kind, spec), ns)

    run()
    generated = len(RENDERED_PROFILES) - before
    # Both kinds together: at least 1,000 valid profiles rendered and judged.
    assert generated >= 500, f"only {generated} valid {kind}s generated"


def maximal_spec(cluster: bool, mode: str) -> dict[str, Any]:
    """Every list at its model's limit and every string at its byte limit."""
    wide = "\u00e9"  # two bytes of UTF-8
    spec: dict[str, Any] = {
        "mode": mode,
        "selector": {
            "matchLabels": {
                f"example.com/k{i}": "v" * 63 for i in range(limit(LabelSelector, "match_labels"))
            },
            "matchExpressions": [
                {"key": f"e{i}", "operator": "In", "values": [f"x{j}" for j in range(64)]}
                for i in range(limit(LabelSelector, "match_expressions"))
            ],
        },
        "containerSelector": {
            "matchExpressions": [{"key": "name", "operator": "NotIn", "values": ["istio-proxy"]}]
        },
        "network": {
            "providers": [n for n in CATALOG.providers if n not in TENANT_ONLY][
                : limit(Network, "providers")
            ],
            "destinations": [
                {
                    "name": f"d{i}",
                    "cidrs": [f"10.{i}.{j}.0/24" for j in range(32)]
                    + [f"2001:db8:{i}:{j}::/64" for j in range(32)],
                    "hostnames": [f"h{j}.d{i}.example.com" for j in range(limit(Destination, "hostnames"))],
                    "ports": [1000 * (i + 1) + j for j in range(limit(Destination, "ports"))],
                    "enforce": i % 2 == 0,
                }
                for i in range(limit(Network, "destinations"))
            ],
        },
        "files": {
            "presets": list(CATALOG.file_presets),
            "paths": [
                rule
                for i in range(limit(Files, "paths") // 4)
                for rule in (
                    {"equal": _fit(f"/{i}" + wide * PATH_MAX_BYTES, PATH_MAX_BYTES), "enforce": True},
                    {"prefix": _fit(f"/{i}" + "p" * PATH_MAX_BYTES, PATH_MAX_BYTES)},
                    {"postfix": _fit(f"/{i}" + wide * 200, TETRAGON_POSTFIX_MAX_BYTES)},
                    {
                        "postfix": _fit(f"/{i}" + "\U0001f511" * 64, TETRAGON_POSTFIX_MAX_BYTES),
                        "enforce": True,
                    },
                )
            ],
        },
        "processes": {
            "presets": list(CATALOG.process_presets),
            "binaries": [
                {"postfix": _fit(f"/{i}" + "b" * 200, TETRAGON_POSTFIX_MAX_BYTES), "enforce": i % 3 == 0}
                for i in range(limit(Processes, "binaries"))
            ],
        },
    }
    if cluster:
        spec["namespaceSelector"] = {"matchLabels": {"tier": "ai"}}
    return spec


@pytest.mark.parametrize("mode", ["Monitor", "Enforce"])
@pytest.mark.parametrize(
    "cluster", [False, True], ids=["AgentDetectionProfile", "ClusterAgentDetectionProfile"]
)
def test_a_profile_at_every_limit_renders_within_tetragons_limits(cluster: bool, mode: str) -> None:
    spec = maximal_spec(cluster, mode)
    longest: dict[str, int] = {}
    for rule in spec["files"]["paths"]:
        ((op, value),) = [(k, v) for k, v in rule.items() if k != "enforce"]
        longest[op] = max(longest.get(op, 0), len(value.encode()))
    assert longest == {
        "equal": PATH_MAX_BYTES,
        "prefix": PATH_MAX_BYTES,
        "postfix": TETRAGON_POSTFIX_MAX_BYTES,
    }
    kind = "ClusterAgentDetectionProfile" if cluster else "AgentDetectionProfile"
    meta = {"name": "m" * 63} if cluster else {"name": "m" * 63, "namespace": "n" * 63}
    profile = parse_profile({"kind": kind, "metadata": meta, "spec": spec})
    ns = [(f"ns-{i:03d}-" + "x" * 55, {"tier": "ai"}) for i in range(300)]
    docs = _render_one(profile, ns)
    assert len(docs) > 3  # every hook needed more selectors than one kprobe holds
    if cluster:
        (values,) = [
            e["values"]
            for e in docs[0]["spec"]["podSelector"]["matchExpressions"]
            if e["key"] == POD_NAMESPACE_LABEL
        ]
        assert len(values) == 300
