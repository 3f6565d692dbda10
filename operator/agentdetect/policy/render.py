"""Profile -> Tetragon policies. Pure: no Kubernetes access, so ``agentdetect render`` and the
operator produce byte-identical policies.

The templates only lay out YAML; every value enters through the ``json`` filter, and the
output is parsed and checked against :class:`RenderedPolicy` (closed: no unknown keys)
before anyone may apply it.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import ipaddress
import json
import re
import secrets
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jinja2
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentdetect.api import catalog
from agentdetect.api.models import ClusterProfileSpec, Destination, LabelSelector, Mode, ProfileSpec
from agentdetect.policy.resolve import Resolution, as_cidr

BUILTIN_TEMPLATES = Path(__file__).with_name("templates")
HOOKS = ("tcp_connect", "fd_install", "execve")
_HOOK_SHORT = {"tcp_connect": "net", "fd_install": "file", "execve": "exec"}
#: Selectors per kprobe: Tetragon refuses more ("no more than 5 selectors supported",
#: MaxSelectors in pkg/selectors/selectors.go, MAX_SELECTORS in bpf/process/types/basic.h).
#: A hook that needs more is split across policies, never across kprobes of one policy: with
#: kprobe_multi the agent refuses a second kprobe on the same symbol ("can't have multiple
#: instances of same symbol", pkg/sensors/tracing/generickprobe.go).
MAX_SELECTORS = 5
#: The label Tetragon gives every pod in its policy filter, whatever the pod's own labels
#: (labels.K8sPodNamespace, added in policy.podMatches, pkg/policyfilter/state.go, v1.6.0 and
#: v1.7.0). ``Exists`` on it selects every pod and no host process on both releases, where an
#: empty podSelector does not: v1.6.0 treats ``{}`` as no filter at all, host processes
#: included (updatePolicyFilter in pkg/sensors/handler.go), v1.7.0 as all pods
#: (pkg/sensors/k8s.go).
POD_NAMESPACE_LABEL = "k8s:io.kubernetes.pod.namespace"
MANAGED_BY = "agentdetect"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PROFILE_KIND = "agentdetect.io/profile-kind"
LABEL_PROFILE_NAME = "agentdetect.io/profile-name"
LABEL_PROFILE_NAMESPACE = "agentdetect.io/profile-namespace"
LABEL_HOOK = "agentdetect.io/hook"
ANNOTATION_HASH = "agentdetect.io/spec-hash"
ACTION_OBSERVE = "Post"
ACTION_ENFORCE = "Sigkill"

ProfileKind = Literal["AgentDetectionProfile", "ClusterAgentDetectionProfile"]
PolicyKind = Literal["TracingPolicy", "TracingPolicyNamespaced"]


#: libyaml's safe loader parses the rendered YAML ~10x faster than PyYAML's pure-Python one;
#: both are safe loaders (no object construction), so results are identical.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR, _MAP, _SEQ = "tag:yaml.org,2002:str", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"


class RenderError(Exception):
    """A template produced something that is not a valid policy of ours."""


# ---- the shape we allow out of a template --------------------------------------------------


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Arg(_Closed):
    index: int = Field(ge=0, le=5)
    type: Literal["sock", "int", "file", "string"]


class _MatchArg(_Closed):
    index: int = Field(ge=0, le=5)
    operator: Literal["DAddr", "DPort", "Equal", "Prefix", "Postfix"]
    values: list[str] = Field(min_length=1)


class _Action(_Closed):
    action: Literal["Post", "Sigkill"]


class _Selector(_Closed):
    match_args: list[_MatchArg] = Field(alias="matchArgs")
    match_actions: list[_Action] = Field(alias="matchActions", min_length=1, max_length=1)


class _Kprobe(_Closed):
    call: Literal["tcp_connect", "fd_install", "sys_execve"]
    syscall: bool
    args: list[_Arg] = Field(min_length=1)
    selectors: list[_Selector] = Field(min_length=1, max_length=MAX_SELECTORS)


class _Requirement(_Closed):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None


class _PodSelector(_Closed):
    match_labels: dict[str, str] | None = Field(None, alias="matchLabels")
    match_expressions: list[_Requirement] | None = Field(None, alias="matchExpressions")


class _Metadata(_Closed):
    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    namespace: str | None = None
    labels: dict[str, str]
    annotations: dict[str, str]


class _Spec(_Closed):
    pod_selector: _PodSelector | None = Field(None, alias="podSelector")
    container_selector: dict[str, Any] | None = Field(None, alias="containerSelector")
    #: One kprobe per policy: see MAX_SELECTORS.
    kprobes: list[_Kprobe] = Field(min_length=1, max_length=1)


class RenderedPolicy(_Closed):
    api_version: Literal["cilium.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["TracingPolicy", "TracingPolicyNamespaced"]
    metadata: _Metadata
    spec: _Spec


# ---- contexts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where a policy goes: a namespace, or cluster-wide; a cluster-wide policy of a profile with
    a namespaceSelector names the namespaces it selects (``namespaces``), which Tetragon's
    policy filter enforces through the pod selector. They are not part of the policy's name:
    the policy stays the same object as namespaces come and go."""

    kind: PolicyKind
    namespace: str | None
    namespaces: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Profile:
    kind: ProfileKind
    name: str
    namespace: str | None
    spec: ProfileSpec


@dataclass
class NetworkTarget:
    """A provider or destination as rendered: what the event matcher maps addresses back to."""

    name: str
    cidrs: set[str] = field(default_factory=set)
    ports: tuple[int, ...] = ()
    any_address: bool = False
    enforce: bool = False
    unresolved: list[str] = field(default_factory=list)


def network_targets(spec: ProfileSpec, resolved: Mapping[str, Resolution]) -> list[NetworkTarget]:
    cat = catalog.load()
    net = spec.network
    if net is None:
        return []
    targets: list[NetworkTarget] = []

    def add(
        name: str,
        hostnames: Iterable[str],
        cidrs: Iterable[str],
        ports: Iterable[int],
        any_address: bool,
        enforce: bool,
    ) -> None:
        t = NetworkTarget(name, set(cidrs), tuple(sorted(set(ports))), any_address, enforce)
        for host in hostnames:
            res = resolved.get(host)
            if res and res.addresses:
                t.cidrs.update(as_cidr(a) for a in res.addresses)
            else:
                t.unresolved.append(host)
        targets.append(t)

    for name in net.providers:
        p = cat.providers[name]
        add(name, p.hostnames, (), p.ports, p.any_address, False)
    for d in net.destinations:
        add(d.name, *_destination_parts(d, cat))
    return targets


def _destination_parts(
    d: Destination, cat: catalog.Catalog
) -> tuple[tuple[str, ...], list[str], tuple[int, ...], bool, bool]:
    p = cat.providers[d.provider] if d.provider else None
    hostnames = tuple(d.hostnames) or (p.hostnames if p and not d.cidrs else ())
    ports = tuple(d.ports) or (p.ports if p else ())
    any_address = bool(p and p.any_address and not d.cidrs and not d.hostnames)
    return hostnames, list(d.cidrs), ports, any_address, d.enforce


def hostnames_of(spec: ProfileSpec) -> list[str]:
    """Every hostname the profile needs resolved."""
    cat = catalog.load()
    net = spec.network
    if net is None:
        return []
    hosts = [h for name in net.providers for h in cat.providers[name].hostnames]
    for d in net.destinations:
        hosts.extend(_destination_parts(d, cat)[0])
    return sorted(set(hosts))


def _action(enforce: bool, mode: str) -> str:
    return ACTION_ENFORCE if enforce and mode == Mode.ENFORCE else ACTION_OBSERVE


@functools.lru_cache(maxsize=65536)
def ipv4_mapped(cidr: str) -> str | None:
    """The IPv4-mapped IPv6 twin of an IPv4 network (``::ffff:a.b.c.d/96+n``), else None.

    A dual-stack socket (AF_INET6, the JVM's default) that connects to an IPv4 address carries
    ``::ffff:a.b.c.d``, and the kernel looks such a destination up among a DAddr filter's IPv6
    entries only (filter_addr_map, bpf/process/types/basic.h), so every IPv4 entry needs its
    twin."""
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return None  # not ours to judge here: the models refuse it before anything renders
    if net.version != 4:
        return None
    return f"::ffff:{net.network_address}/{96 + net.prefixlen}"


def network_selectors(spec: ProfileSpec, targets: list[NetworkTarget]) -> list[dict[str, Any]]:
    """One selector per (ports, action): what the kernel must tell apart. Which provider or
    destination an address belongs to is worked out afterwards from the event (match.py), so
    targets that share ports and action share a selector, DAddr AND DPort. A target that
    matches any address on its ports makes its group's selector port-only."""
    groups: dict[tuple[tuple[int, ...], str], tuple[set[str], list[bool]]] = {}
    for t in targets:
        if not t.cidrs and not t.any_address:
            continue  # nothing resolved yet; reported in status, rendered once it resolves
        cidrs, any_address = groups.setdefault((t.ports, _action(t.enforce, spec.mode)), (set(), []))
        cidrs.update(t.cidrs)
        any_address.append(t.any_address)
    out = []
    for (ports, action), (cidrs, any_address) in sorted(groups.items()):
        addresses: list[str] = []
        if not any(any_address):
            addresses = sorted(cidrs | {twin for c in cidrs if (twin := ipv4_mapped(c)) is not None})
        out.append({"addresses": addresses, "ports": [str(p) for p in ports], "action": action})
    return out


def _string_selectors(rules: Iterable[tuple[catalog.MatchRule, bool]], mode: str) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], set[str]] = defaultdict(set)
    for rule, enforce in rules:
        groups[(_action(enforce, mode), rule.operator)].add(rule.value)
    return [
        {"operator": op, "values": sorted(values), "action": action}
        for (action, op), values in sorted(groups.items())
    ]


def file_selectors(spec: ProfileSpec) -> list[dict[str, Any]]:
    cat = catalog.load()
    files = spec.files
    if files is None:
        return []
    rules = [(r, False) for name in files.presets for r in cat.file_presets[name].rules]
    rules += [(p.match(), p.enforce) for p in files.paths]
    return _string_selectors(rules, spec.mode)


def process_selectors(spec: ProfileSpec) -> list[dict[str, Any]]:
    cat = catalog.load()
    procs = spec.processes
    if procs is None:
        return []
    rules = [(r, False) for name in procs.presets for r in cat.process_presets[name].rules]
    rules += [(b.match(), b.enforce) for b in procs.binaries]
    return _string_selectors(rules, spec.mode)


# ---- names and labels ----------------------------------------------------------------------


def policy_name(profile: Profile, target: Target, hook: str, part: int = 0) -> str:
    """Unique across namespaces and both Tetragon kinds (cilium/tetragon#2299, #2440): the hash
    covers every part of the policy's identity, the readable part is for people. ``part`` > 0
    names the further policies of a hook that needs more selectors than one kprobe holds."""
    parts = [profile.kind, profile.namespace or "", profile.name, target.kind, target.namespace or "", hook]
    short = _HOOK_SHORT[hook]
    if part:
        parts.append(str(part))
        short = f"{short}{part + 1}"
    digest = hashlib.sha256("/".join(parts).encode()).hexdigest()[:8]
    readable = profile.name.replace(".", "-")  # a DNS-subdomain profile name may have dots
    if target.namespace and target.namespace != profile.namespace:
        readable = f"{readable}-{target.namespace}"
    suffix = f"-{short}-{digest}"
    return readable[: 63 - len(suffix)].rstrip("-.") + suffix


def target_in(profile: Profile) -> Target:
    """Where ``profile``'s policies go, as far as their names are concerned: its own namespace
    for a namespaced profile, cluster-wide for a cluster profile."""
    if profile.kind == "AgentDetectionProfile":
        return Target("TracingPolicyNamespaced", profile.namespace)
    return Target("TracingPolicy", None)


def hook_selectors(spec: ProfileSpec, resolved: Mapping[str, Resolution]) -> dict[str, list[dict[str, Any]]]:
    """Each hook's selectors, in order; a hook without any renders no policy."""
    return {
        "tcp_connect": network_selectors(spec, network_targets(spec, resolved)),
        "fd_install": file_selectors(spec),
        "execve": process_selectors(spec),
    }


def split(selectors: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Selectors in policies of at most MAX_SELECTORS each."""
    return [selectors[i : i + MAX_SELECTORS] for i in range(0, len(selectors), MAX_SELECTORS)]


def policy_names(
    profile: Profile, target: Target, resolved: Mapping[str, Resolution]
) -> list[tuple[str, str]]:
    """(policy name, hook) of every policy ``render`` makes for ``profile`` at ``target``."""
    return [
        (policy_name(profile, target, hook, part), hook)
        for hook, selectors in hook_selectors(profile.spec, resolved).items()
        for part in range(len(split(selectors)))
    ]


def owner_labels(profile: Profile) -> dict[str, str]:
    labels = {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_PROFILE_KIND: profile.kind,
        LABEL_PROFILE_NAME: profile.name,
    }
    if profile.namespace:
        labels[LABEL_PROFILE_NAMESPACE] = profile.namespace
    return labels


def spec_hash(labels: Mapping[str, str], spec: Mapping[str, Any]) -> str:
    canonical = json.dumps({"labels": labels, "spec": spec}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ---- the renderer --------------------------------------------------------------------------


#: Characters YAML would not read back verbatim inside a double-quoted scalar: C1 controls and
#: DEL (not printable in YAML), NEL/LS/PS (YAML line breaks, folded), BOM, non-characters and
#: lone surrogates. JSON itself already escapes quotes, backslashes and C0 controls.
_YAML_UNSAFE = re.compile("[\u007f-\u009f\u2028\u2029\ufeff\ufffe\uffff\ud800-\udfff]")


def yaml_json(value: Any) -> str:
    """JSON is YAML, so a value emitted this way can never act as YAML syntax. Unicode stays as
    is (a \\u-escaped astral character would come back as two lone surrogates); only the
    characters YAML would alter are escaped."""
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return _YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


#: Tokens carry a random per-process part: neither a template nor a profile can produce one.
_NONCE = secrets.token_hex(8)


@dataclass
class _Values:
    """Every value a template passes through the ``json`` filter, kept out of the YAML text:
    the filter writes a token in its place and the parsed document gets the value back. The
    text that remains is the policy's skeleton, the same for every policy of the same shape,
    so its parse is cached (``_skeleton``); parsing it on every render was most of the render
    time. Values still never act as YAML syntax (they are not in the YAML at all), and the
    whole document is still checked against the closed policy model."""

    values: dict[str, Any] = field(default_factory=dict)

    def stash(self, value: Any) -> str:
        token = f"agentdetect:{_NONCE}:{len(self.values)}"
        self.values[token] = value
        return token

    def restore(self, node: Any) -> Any:
        """A new document: the cached skeleton is never modified."""
        if type(node) is str:
            return self.values.get(node, node)
        if type(node) is dict:
            return {k: self.restore(v) for k, v in node.items()}
        if type(node) is list:
            return [self.restore(v) for v in node]
        return node


#: The values of the policy being rendered in this thread; a context variable rather than a
#: template variable, so macros imported without context (as the built-in ones are) use it too.
_CURRENT: contextvars.ContextVar[_Values | None] = contextvars.ContextVar("agentdetect_values", default=None)


@jinja2.pass_context  # not for the context: a context filter is never folded at compile time
def _json_filter(_context: jinja2.runtime.Context, value: Any) -> str:
    """Jinja evaluates a filter on a constant (``{{ "Post" | json }}``) once, when it compiles
    the template; a stash token made then would be baked into the template for every later
    render. Filters that take the context are never folded."""
    values = _CURRENT.get()
    return yaml_json(value if values is None else values.stash(value))


@functools.lru_cache(maxsize=4096)
def _skeleton(text: str) -> Any:
    return load_rendered(text)


@functools.cache
def environment(template_dir: Path | None = None) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = []
    if template_dir is not None:
        loaders.append(jinja2.FileSystemLoader(str(template_dir)))
    loaders.append(jinja2.FileSystemLoader(str(BUILTIN_TEMPLATES)))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.filters["json"] = _json_filter
    return env


class _Uncommon(Exception):
    """A node the fast path does not handle (a non-string key, a tag): use PyYAML's own."""


def load_rendered(text: str) -> Any:
    """``yaml.safe_load``, faster on what templates produce. libyaml parses and composes; the
    nodes are then turned into Python objects here, strings directly and other scalars by
    PyYAML's own SafeConstructor, which also takes any document with a node this does not
    expect. PyYAML's generic constructor was most of the render time."""
    loader = _SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None

        def convert(n: yaml.Node) -> Any:
            kind = type(n)
            if kind is yaml.ScalarNode:
                return n.value if n.tag == _STR else loader.construct_object(n, deep=True)
            if kind is yaml.MappingNode and n.tag == _MAP:
                out = {}
                for k, v in n.value:
                    if type(k) is not yaml.ScalarNode or k.tag != _STR:
                        raise _Uncommon
                    out[k.value] = convert(v)
                return out
            if kind is yaml.SequenceNode and n.tag == _SEQ:
                return [convert(v) for v in n.value]
            raise _Uncommon

        try:
            return convert(node)
        except _Uncommon:
            return loader.construct_document(node)
    finally:
        loader.dispose()


def _selector_dict(sel: LabelSelector | None) -> dict[str, Any] | None:
    if sel is None or sel.selects_all():
        return None
    return {k: v for k, v in sel.dump().items() if v}


def pod_selector(spec: ProfileSpec, target: Target) -> dict[str, Any] | None:
    """The policy's podSelector: the profile's, narrowed to the target's namespaces, and never
    empty (see POD_NAMESPACE_LABEL), so the policy watches pod processes only. None, which
    Tetragon applies to every process on the node, only for ``hostProcesses``."""
    if isinstance(spec, ClusterProfileSpec) and spec.host_processes:
        return None
    selector = _selector_dict(spec.selector) or {}
    expressions = list(selector.get("matchExpressions", []))
    if target.namespaces is not None:
        expressions.append({"key": POD_NAMESPACE_LABEL, "operator": "In", "values": list(target.namespaces)})
    if not selector.get("matchLabels") and not expressions:
        expressions.append({"key": POD_NAMESPACE_LABEL, "operator": "Exists"})
    if expressions:
        selector["matchExpressions"] = expressions
    return selector


def render_hook(
    profile: Profile,
    target: Target,
    hook: str,
    selectors: list[dict[str, Any]],
    template_dir: Path | None = None,
    part: int = 0,
) -> dict[str, Any]:
    labels = {**owner_labels(profile), LABEL_HOOK: hook}
    policy = {
        "kind": target.kind,
        "name": policy_name(profile, target, hook, part),
        "namespace": target.namespace,
        "labels": labels,
        "annotations": {},
    }
    values = _Values()
    context = {
        "policy": policy,
        "pod_selector": pod_selector(profile.spec, target),
        "container_selector": _selector_dict(profile.spec.container_selector),
        "selectors": selectors,
    }
    token = _CURRENT.set(values)
    try:
        text = environment(template_dir).get_template(f"{hook}.yaml.j2").render(context)
    except (jinja2.TemplateError, TypeError, ValueError) as exc:
        raise RenderError(f"template {hook}.yaml.j2: {exc}") from exc
    finally:
        _CURRENT.reset(token)
    try:
        doc = values.restore(_skeleton(text))
    except yaml.YAMLError as exc:
        raise RenderError(f"template {hook}.yaml.j2 produced invalid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise RenderError(f"template {hook}.yaml.j2 did not produce one mapping")
    try:
        RenderedPolicy.model_validate(doc)
    except ValidationError as exc:
        raise RenderError(f"template {hook}.yaml.j2 produced an invalid policy: {exc}") from exc
    meta = doc["metadata"]
    # The identity comes from us, not from a (possibly user-supplied) template.
    if (meta["name"], meta.get("namespace"), doc["kind"]) != (policy["name"], target.namespace, target.kind):
        raise RenderError(f"template {hook}.yaml.j2 changed the policy's kind, name or namespace")
    if any(meta["labels"].get(k) != v for k, v in labels.items()):
        raise RenderError(f"template {hook}.yaml.j2 dropped or changed the ownership labels")
    if doc["spec"].get("podSelector") != context["pod_selector"]:
        raise RenderError(f"template {hook}.yaml.j2 dropped or changed the pod selector")
    meta["annotations"][ANNOTATION_HASH] = spec_hash(meta["labels"], doc["spec"])
    return doc


def render(
    profile: Profile,
    targets: Iterable[Target],
    resolved: Mapping[str, Resolution],
    template_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Every policy for ``profile``: per target, one per hook it uses, or more where a hook
    needs more selectors than one kprobe holds."""
    per_hook = hook_selectors(profile.spec, resolved)
    docs = []
    for target in targets:
        for hook in HOOKS:
            for part, selectors in enumerate(split(per_hook[hook])):
                docs.append(render_hook(profile, target, hook, selectors, template_dir, part))
    return docs
