"""The profile API (``agentdetect.io/v1alpha1``): the single source of truth.

The CRDs in ``crds/`` are generated from these models (``agentdetect crds``), so every
constraint lives here twice over on purpose: as a pydantic check (used offline by
``agentdetect validate`` and by the operator before rendering) and, through
``json_schema_extra``, as OpenAPI/CEL that the API server enforces at admission.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from agentdetect.api import catalog

GROUP = "agentdetect.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

_CATALOG = catalog.load()


def _cel(rule: str, message: str, field_path: str | None = None, reason: str | None = None) -> dict[str, str]:
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    if reason:
        out["reason"] = reason
    return out


def _extra(*rules: dict[str, str], **more: Any) -> dict[str, Any]:
    extra: dict[str, Any] = dict(more)
    if rules:
        extra["x-kubernetes-validations"] = list(rules)
    return extra


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_enum_values=True)

    def dump(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase, no unset/None fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# ---- scalar types --------------------------------------------------------------------------

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# "[.]" rather than "\." so the same pattern is valid in Python, RE2 and a CEL string literal.
_HOSTNAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?([.][a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
_LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
#: No control characters (C0, DEL, C1): Tetragon refuses C1 controls when it reads a policy as
#: YAML ("control characters are not allowed", tetra and --tracing-policy-dir; found by tpjudge).
_NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f]+$"


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ValueError(
            f"{value!r} is not a CIDR; write an address as 10.0.0.1/32 or 2001:db8::1/128"
        ) from None


def _in(names: list[str], what: str) -> AfterValidator:
    def check(value: str) -> str:
        if value not in names:
            raise ValueError(f"unknown {what} {value!r}; known: {', '.join(names)}")
        return value

    return AfterValidator(check)


def _label_key(value: str) -> str:
    if len(value) > 317 or not re.match(_LABEL_KEY, value):
        raise ValueError(f"{value!r} is not a valid label key")
    return value


DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=_DNS_LABEL)]
Hostname = Annotated[
    str,
    Field(
        min_length=1,
        max_length=253,
        pattern=_HOSTNAME,
        description="A DNS name, lower case, resolved by the operator (no wildcards).",
    ),
]
Cidr = Annotated[
    str,
    AfterValidator(_cidr),
    Field(
        max_length=64,
        description="An IPv4 or IPv6 network in CIDR form; a single address is /32 or /128.",
        json_schema_extra=_extra(_cel("isCIDR(self)", "must be a CIDR such as 10.0.0.0/8 or 2001:db8::/32")),
    ),
]
Port = Annotated[int, Field(ge=1, le=65535)]
LabelValue = Annotated[str, Field(max_length=63, pattern=_LABEL_VALUE)]


# ---- Tetragon's limits ---------------------------------------------------------------------
# What the agent refuses, enforced here so the API server refuses it first, with a field path.
# Tetragon counts bytes (pkg/selectors/kernel.go: ArgSelectorValue, ArgStringSelectorValue
# take len([]byte(v))), so the limits are on UTF-8 bytes; CEL's size() counts characters,
# hence size(bytes(self)).
#: Postfix: "string is longer than 127 characters" at >= StringPostfixMaxLength (128 bytes),
#: pkg/selectors/selectors.go and writePostfix in pkg/selectors/kernel.go (v1.6.0, v1.7.0).
TETRAGON_POSTFIX_MAX_BYTES = 127
#: Prefix: refused above StringPrefixMaxLength (256 bytes), writePrefix, same files.
TETRAGON_PREFIX_MAX_BYTES = 256
#: Equal on strings: at most 4096 bytes on kernels >= 5.11, 510 on 5.4 to 5.10 and 144 before
#: (ArgStringSelectorValue). 255 fits every kernel from 5.4 on, where matchArgs may hold more
#: than one filter anyway (ParseMatchArgs: one filter without large programs, before 5.3).
PATH_MAX_BYTES = 255


def _bytes_at_most(limit: int, what: str) -> AfterValidator:
    def check(value: str) -> str:
        size = len(value.encode())
        if size > limit:
            raise ValueError(f"{what} is {size} bytes of UTF-8; Tetragon allows at most {limit}")
        return value

    return AfterValidator(check)


def _bytes_rule(limit: int, what: str) -> dict[str, str]:
    return _cel(
        f"size(bytes(self)) <= {limit}",
        f"{what} must be at most {limit} bytes of UTF-8 (Tetragon's limit)",
        reason="FieldValueInvalid",
    )


PathValue = Annotated[
    str,
    _bytes_at_most(PATH_MAX_BYTES, "a path"),
    Field(
        min_length=1,
        max_length=PATH_MAX_BYTES,
        pattern=_NO_CONTROL,
        json_schema_extra=_extra(_bytes_rule(PATH_MAX_BYTES, "a path")),
    ),
]
#: Tetragon's prefix limit (256 bytes) is above the path limit, so a prefix is any path.
PrefixValue = PathValue
PostfixValue = Annotated[
    str,
    _bytes_at_most(TETRAGON_POSTFIX_MAX_BYTES, "a postfix"),
    Field(
        min_length=1,
        max_length=TETRAGON_POSTFIX_MAX_BYTES,
        pattern=_NO_CONTROL,
        json_schema_extra=_extra(_bytes_rule(TETRAGON_POSTFIX_MAX_BYTES, "a postfix")),
    ),
]
ProviderName = Annotated[
    str,
    _in(list(_CATALOG.providers), "provider"),
    Field(json_schema_extra={"enum": list(_CATALOG.providers)}),
]
#: Providers with only per-customer endpoints (no catalog hostnames): listed bare they would
#: detect nothing, so they are only accepted as a destination that names the endpoint.
TENANT_ONLY = [n for n, p in _CATALOG.providers.items() if not p.hostnames and not p.any_address]
_LISTABLE = [n for n in _CATALOG.providers if n not in TENANT_ONLY]


def _listable(value: str) -> str:
    if value in TENANT_ONLY:
        raise ValueError(
            f"{value} has per-customer endpoints: name yours under network.destinations "
            f"with provider: {value} and hostnames"
        )
    return value


ListableProviderName = Annotated[
    str,
    _in(list(_CATALOG.providers), "provider"),
    AfterValidator(_listable),
    Field(json_schema_extra={"enum": _LISTABLE}),
]
FilePresetName = Annotated[
    str,
    _in(list(_CATALOG.file_presets), "file preset"),
    Field(json_schema_extra={"enum": list(_CATALOG.file_presets)}),
]
ProcessPresetName = Annotated[
    str,
    _in(list(_CATALOG.process_presets), "process preset"),
    Field(json_schema_extra={"enum": list(_CATALOG.process_presets)}),
]


class Mode(StrEnum):
    MONITOR = "Monitor"
    ENFORCE = "Enforce"


# ---- selectors -----------------------------------------------------------------------------


class LabelSelectorRequirement(_Model):
    """A label key, an operator and values, as in any Kubernetes label selector."""

    key: Annotated[str, AfterValidator(_label_key), Field(min_length=1, max_length=317)] = Field(
        description="The label key."
    )
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="In and NotIn compare with values; Exists and DoesNotExist test the key only."
    )
    values: Annotated[list[LabelValue], Field(max_length=64)] = Field(
        default_factory=list, description="Values for In and NotIn; empty for Exists and DoesNotExist."
    )

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs values")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self


_SELECTOR_RULES = (
    _cel(
        "!has(self.matchLabels) || self.matchLabels.all(k, size(k) <= 317 && k.matches('"
        + _LABEL_KEY
        + "'))",
        "matchLabels keys must be valid label keys",
        reason="FieldValueInvalid",
    ),
    _cel(
        "!has(self.matchExpressions) || self.matchExpressions.all(e, "
        "(e.operator in ['In', 'NotIn']) == (has(e.values) && size(e.values) > 0))",
        "In and NotIn need values; Exists and DoesNotExist take none",
        reason="FieldValueInvalid",
    ),
)


class LabelSelector(_Model):
    """A Kubernetes label selector; an empty selector selects everything."""

    model_config = ConfigDict(json_schema_extra=_extra(*_SELECTOR_RULES))

    match_labels: Annotated[
        dict[Annotated[str, AfterValidator(_label_key)], LabelValue],
        Field(max_length=32, json_schema_extra={"maxProperties": 32}),
    ] = Field(
        default_factory=dict,
        alias="matchLabels",
        description="Labels that must all be present with these values.",
    )
    match_expressions: Annotated[list[LabelSelectorRequirement], Field(max_length=16)] = Field(
        default_factory=list, alias="matchExpressions", description="Requirements that must all hold."
    )

    def selects_all(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: dict[str, str]) -> bool:
        for key, value in self.match_labels.items():
            if labels.get(key) != value:
                return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "In" and (not present or labels[req.key] not in req.values):
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
        return True


# ---- rules ---------------------------------------------------------------------------------

_ENFORCE = Field(
    False,
    description="Kill the process (Sigkill) when this rule matches. Takes effect only with "
    "spec.mode Enforce and an operator started with enforcement allowed.",
)


class Destination(_Model):
    """A network destination: a catalog provider (for its tenant endpoints), addresses, or names."""

    model_config = ConfigDict(
        json_schema_extra=_extra(
            _cel(
                "has(self.provider) || (has(self.cidrs) && size(self.cidrs) > 0) || "
                "(has(self.hostnames) && size(self.hostnames) > 0)",
                "give a provider, cidrs or hostnames",
                reason="FieldValueRequired",
            ),
            _cel(
                "!has(self.provider) || !(self.provider in " + str(TENANT_ONLY) + ") || "
                "(has(self.hostnames) && size(self.hostnames) > 0) || "
                "(has(self.cidrs) && size(self.cidrs) > 0)",
                "this provider has per-customer endpoints: give your hostnames (or cidrs)",
                reason="FieldValueRequired",
            ),
        )
    )

    name: DnsLabel = Field(description="Names the destination in status and in detections.")
    provider: ProviderName | None = Field(
        None,
        description="A catalog provider. Its hostnames and ports are used unless hostnames or ports "
        "are given here; providers with per-customer endpoints (azure-openai, pinecone, ...) take "
        "your endpoint in hostnames.",
    )
    cidrs: Annotated[list[Cidr], Field(max_length=64)] = Field(
        default_factory=list,
        description="IPv4 or IPv6 addresses or ranges, e.g. 10.8.0.0/16 or 2001:db8::/32.",
    )
    hostnames: Annotated[list[Hostname], Field(max_length=32)] = Field(
        default_factory=list,
        description="DNS names; the operator resolves them and re-resolves them every resolve interval "
        "(status.resolved says to what).",
    )
    ports: Annotated[list[Port], Field(max_length=16)] = Field(
        default_factory=list, description="Destination ports; empty means any port."
    )
    enforce: bool = _ENFORCE

    @model_validator(mode="after")
    def _has_target(self) -> Destination:
        if self.provider is None and not self.cidrs and not self.hostnames:
            raise ValueError("give a provider, cidrs or hostnames")
        if self.provider in TENANT_ONLY and not self.hostnames and not self.cidrs:
            raise ValueError(f"{self.provider} has per-customer endpoints: give your hostnames (or cidrs)")
        if self.provider is not None and self.hostnames:
            provider = _CATALOG.providers[self.provider]
            suffixes = provider.tenant_suffixes
            bad = [
                h
                for h in self.hostnames
                if suffixes and h not in provider.hostnames and not h.endswith(suffixes)
            ]
            if bad:
                raise ValueError(
                    f"hostnames {bad} are not {self.provider} endpoints (they end in {', '.join(suffixes)})"
                )
        return self


class Network(_Model):
    """Outbound TCP connections (Tetragon hook tcp_connect)."""

    providers: Annotated[
        list[ListableProviderName], Field(max_length=32, json_schema_extra={"x-kubernetes-list-type": "set"})
    ] = Field(default_factory=list, description="Catalog providers to detect (observe only).")
    destinations: Annotated[
        list[Destination],
        Field(
            max_length=32,
            json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        ),
    ] = Field(
        default_factory=list,
        description="Your own destinations: a provider, addresses or names, each with a name that "
        "detections report.",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> Network:
        names = [d.name for d in self.destinations]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"destination names must be unique: {dupes}")
        clash = sorted(set(names) & set(self.providers))
        if clash:
            raise ValueError(f"destination names {clash} clash with providers of the same name")
        return self


_RULE_ONE_OF = _cel(
    "[has(self.equal), has(self.prefix), has(self.postfix)].filter(x, x).size() == 1",
    "give exactly one of equal, prefix, postfix",
    reason="FieldValueInvalid",
)


class PathRule(_Model):
    """A file path match, on the path of the file a process opens."""

    model_config = ConfigDict(
        json_schema_extra=_extra(
            _RULE_ONE_OF,
            _cel(
                "(!has(self.equal) || self.equal.startsWith('/')) && "
                "(!has(self.prefix) || self.prefix.startsWith('/'))",
                "equal and prefix paths must be absolute",
                reason="FieldValueInvalid",
            ),
        )
    )

    equal: PathValue | None = Field(None, description="The whole path, e.g. /etc/shadow.")
    prefix: PrefixValue | None = Field(None, description="The path starts with this, e.g. /etc/ssl/private/.")
    postfix: PostfixValue | None = Field(None, description="The path ends with this, e.g. /.ssh/id_rsa.")
    enforce: bool = _ENFORCE

    @model_validator(mode="after")
    def _one_absolute(self) -> PathRule:
        if sum(v is not None for v in (self.equal, self.prefix, self.postfix)) != 1:
            raise ValueError("give exactly one of equal, prefix, postfix")
        for v in (self.equal, self.prefix):
            if v is not None and not v.startswith("/"):
                raise ValueError("equal and prefix paths must be absolute")
        return self

    def match(self) -> catalog.MatchRule:
        return catalog.MatchRule(equal=self.equal, prefix=self.prefix, postfix=self.postfix)


class BinaryRule(PathRule):
    """An executable, matched on the file name given to execve."""

    equal: PathValue | None = Field(None, description="The whole executable path, e.g. /usr/bin/curl.")
    prefix: PrefixValue | None = Field(None, description="The path starts with this, e.g. /tmp/.")
    postfix: PostfixValue | None = Field(None, description="The path ends with this, e.g. /curl.")


class Files(_Model):
    """Files opened by processes (Tetragon hook fd_install)."""

    presets: Annotated[
        list[FilePresetName], Field(max_length=16, json_schema_extra={"x-kubernetes-list-type": "set"})
    ] = Field(default_factory=list, description="Catalog file presets (observe only).")
    paths: Annotated[list[PathRule], Field(max_length=64)] = Field(
        default_factory=list, description="Your own paths: each an equal, prefix or postfix match."
    )


class Processes(_Model):
    """Programs executed (Tetragon hook sys_execve)."""

    presets: Annotated[
        list[ProcessPresetName], Field(max_length=16, json_schema_extra={"x-kubernetes-list-type": "set"})
    ] = Field(default_factory=list, description="Catalog process presets (observe only).")
    binaries: Annotated[list[BinaryRule], Field(max_length=64)] = Field(
        default_factory=list, description="Your own executables: each an equal, prefix or postfix match."
    )


# ---- spec ----------------------------------------------------------------------------------

_NON_EMPTY = _cel(
    "(has(self.network) && ((has(self.network.providers) && size(self.network.providers) > 0) || "
    "(has(self.network.destinations) && size(self.network.destinations) > 0))) || "
    "(has(self.files) && ((has(self.files.presets) && size(self.files.presets) > 0) || "
    "(has(self.files.paths) && size(self.files.paths) > 0))) || "
    "(has(self.processes) && ((has(self.processes.presets) && size(self.processes.presets) > 0) || "
    "(has(self.processes.binaries) && size(self.processes.binaries) > 0)))",
    "a profile must detect something: give network.providers, network.destinations, files.presets, "
    "files.paths, processes.presets or processes.binaries",
    reason="FieldValueRequired",
)


class ProfileSpec(_Model):
    """What to detect, in which pods."""

    model_config = ConfigDict(json_schema_extra=_extra(_NON_EMPTY))

    mode: Mode = Field(
        Mode.MONITOR,
        description="Monitor observes only. Enforce also kills processes on rules marked enforce: true, "
        "if the operator allows enforcement.",
    )
    selector: LabelSelector | None = Field(
        None, description="Pods to watch, by label (Tetragon podSelector). Absent: every pod in scope."
    )
    container_selector: LabelSelector | None = Field(
        None,
        alias="containerSelector",
        description="Containers to watch within those pods, by container field (key: name).",
    )
    network: Network | None = None
    files: Files | None = None
    processes: Processes | None = None

    @model_validator(mode="after")
    def _detects_something(self) -> ProfileSpec:
        if not self.hooks():
            raise ValueError(_NON_EMPTY["message"])
        return self

    def hooks(self) -> list[str]:
        hooks = []
        if self.network and (self.network.providers or self.network.destinations):
            hooks.append("tcp_connect")
        if self.files and (self.files.presets or self.files.paths):
            hooks.append("fd_install")
        if self.processes and (self.processes.presets or self.processes.binaries):
            hooks.append("execve")
        return hooks

    def enforcing_rules(self) -> list[str]:
        """Rules that ask for enforcement, by field path."""
        found = []
        for i, d in enumerate(self.network.destinations if self.network else []):
            if d.enforce:
                found.append(f"spec.network.destinations[{i}]")
        for i, p in enumerate(self.files.paths if self.files else []):
            if p.enforce:
                found.append(f"spec.files.paths[{i}]")
        for i, b in enumerate(self.processes.binaries if self.processes else []):
            if b.enforce:
                found.append(f"spec.processes.binaries[{i}]")
        return found


_HOST_PROCESSES = _cel(
    "!has(self.hostProcesses) || !self.hostProcesses || (self.mode != 'Enforce' && "
    "!has(self.selector) && !has(self.containerSelector) && !has(self.namespaceSelector))",
    "hostProcesses watches every process on every node: it cannot be combined with mode Enforce, "
    "selector, containerSelector or namespaceSelector",
    field_path=".hostProcesses",
    reason="FieldValueForbidden",
)


class ClusterProfileSpec(ProfileSpec):
    """A profile for many namespaces."""

    model_config = ConfigDict(json_schema_extra=_extra(_NON_EMPTY, _HOST_PROCESSES))

    namespace_selector: LabelSelector | None = Field(
        None,
        alias="namespaceSelector",
        description="Namespaces to watch. Absent or empty: every namespace. Rendered as one cluster-wide "
        "TracingPolicy per hook whose pod selector names the selected namespaces, kept current as "
        "namespaces come, go or change labels.",
    )
    host_processes: bool = Field(
        False,
        alias="hostProcesses",
        description="Also watch processes outside any pod (kubelet, the container runtime, node agents). "
        "Off by default: every policy then carries a pod selector, which Tetragon applies to pod "
        "processes only. Observe only: not with mode Enforce, selector, containerSelector or "
        "namespaceSelector.",
    )

    @model_validator(mode="after")
    def _host_processes_alone(self) -> ClusterProfileSpec:
        if not self.host_processes:
            return self
        if self.mode == Mode.ENFORCE:
            raise ValueError("hostProcesses cannot be combined with mode Enforce")
        given = [
            name
            for name, value in (
                ("selector", self.selector),
                ("containerSelector", self.container_selector),
                ("namespaceSelector", self.namespace_selector),
            )
            if value is not None
        ]
        if given:
            raise ValueError(f"hostProcesses cannot be combined with {', '.join(given)}")
        return self


# ---- detections ----------------------------------------------------------------------------


class RuleDetection(_Model):
    rule: str = Field(
        description="The provider, destination or preset name; for a path or binary rule, its value."
    )
    hook: Literal["tcp_connect", "fd_install", "execve"] = Field(
        description="The Tetragon hook that saw it: tcp_connect, fd_install or execve."
    )
    count: int = Field(ge=0, description="How many events matched this rule, from firstSeen to lastSeen.")
    first_seen: str = Field(alias="firstSeen", description="Tetragon's time of the first matching event.")
    last_seen: str = Field(alias="lastSeen", description="Tetragon's time of the latest matching event.")
    action: Literal["Observed", "Killed"] = Field(
        description="Killed when an enforcing rule killed the process."
    )
    example: str = Field(
        description="One occurrence: the binary and what it connected to, opened or executed."
    )


class DetectionSummary(_Model):
    """The record at a glance: what kubectl get agentdetections shows."""

    rules: int = Field(0, description="How many rules fired.")
    targets: str = Field("", description="The rules that fired, comma-separated, e.g. 'openai, pinecone'.")
    events: int = Field(0, description="Matched events in all: the sum of the rules' counts.")
    last_seen: str | None = Field(None, alias="lastSeen", description="Tetragon's time of the latest one.")
    action: Literal["Observed", "Killed"] = Field(
        "Observed", description="Killed when an enforcing rule killed a process of this pod."
    )


class ObjectRef(_Model):
    """A reference to a Kubernetes object."""

    kind: str | None = Field(None, description="Its kind.")
    namespace: str | None = Field(None, description="Its namespace; empty for a cluster-scoped object.")
    name: str = Field(description="Its name.")


class PodDetectionSummary(_Model):
    """One pod's detections for this profile, in brief (the AgentDetection has the detail)."""

    pod: str = Field(description="The pod's name.")
    namespace: str = Field(description="The pod's namespace.")
    workload: str = Field(
        "", description="The pod's workload (Deployment, StatefulSet, ...), as Tetragon reports it."
    )
    targets: str = Field("", description="The rules that fired, most frequent first, comma-separated.")
    events: int = Field(0, description="Matched events.")
    last_seen: str | None = Field(None, alias="lastSeen", description="Tetragon's time of the latest one.")


class StreamPosition(_Model):
    """How far into one Tetragon export stream this record goes: a kubelet timestamp (the
    operator following export-stdout logs) or a position in the export file (a node agent)."""

    stream: str = Field(
        description="The Tetragon pod whose export-stdout log was read, as namespace/name; or node/NAME "
        "for the export file a node agent reads."
    )
    through: str | None = Field(
        None,
        description="The kubelet timestamp (RFC 3339, nanoseconds) of the last line of that stream "
        "counted here: after a restart, failover or reconnect, lines at or before it are not counted again.",
    )
    file: str | None = Field(
        None,
        max_length=64,
        description="Node agents: the export file the last counted line is in, named by a hash of its "
        "first line (the same after Tetragon renames or compresses it).",
    )
    offset: int | None = Field(
        None, ge=0, description="Node agents: the byte just after the last counted line in that file."
    )
    lines_at_through: int = Field(
        1, alias="linesAtThrough", description="How many counted lines carry exactly that timestamp."
    )


class HostProcessDetections(_Model):
    """Matches from processes outside any pod (hostProcesses, or an older policy without a pod
    selector): no Pod to own an AgentDetection, so they are summed here."""

    events: int = Field(0, description="Matched events from host processes.")
    first_seen: str | None = Field(None, alias="firstSeen", description="The earliest such event.")
    last_seen: str | None = Field(None, alias="lastSeen", description="The latest such event.")
    targets: str = Field("", description="The rules that fired, most frequent first, comma-separated.")
    example: str = Field("", description="The latest occurrence: node, binary and what it did.")
    streams: list[StreamPosition] | None = Field(
        None,
        max_length=8,
        description="How far into each Tetragon export stream these counts go, as in an AgentDetection.",
    )


class ProfileDetections(_Model):
    """What pods matched by this profile were seen doing (the per-pod detail is in AgentDetections)."""

    pods: int = Field(0, description="Pods with at least one detection.")
    events: int = Field(0, description="Matched events, all pods together.")
    last_detection: str | None = Field(
        None, alias="lastDetection", description="Tetragon's time of the latest matched event."
    )
    by_pod: list[PodDetectionSummary] = Field(
        default_factory=list, alias="byPod", description="The most recently active pods, at most 50."
    )
    truncated: bool = Field(False, description="byPod lists only the most recently active pods.")
    host_processes: HostProcessDetections | None = Field(
        None, alias="hostProcesses", description="Matches from processes outside any pod."
    )


# ---- status --------------------------------------------------------------------------------


class Condition(_Model):
    """A condition, as metav1.Condition."""

    type: str = Field(
        description="Ready (the policies are applied), PolicyFilterBudget (within Tetragon's policy "
        "filter budget) or Detecting (Tetragon's events are read)."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="Why, in one CamelCase word, e.g. Applied, InvalidSpec, NoTetragonPods.")
    message: str = Field("", description="Why, for a person: what is wrong and what to do.")
    last_transition_time: str = Field(alias="lastTransitionTime", description="When status last changed.")
    observed_generation: int | None = Field(
        None, alias="observedGeneration", description="The metadata.generation this condition is about."
    )


class PolicyRef(_Model):
    """A Tetragon policy this profile rendered and owns."""

    kind: Literal["TracingPolicy", "TracingPolicyNamespaced"] = Field(description="The policy's kind.")
    namespace: str | None = Field(None, description="Its namespace (a TracingPolicyNamespaced).")
    name: str = Field(description="Its name.")
    hook: Literal["tcp_connect", "fd_install", "execve"] = Field(
        description="The kernel hook it attaches to."
    )


class ResolvedDestination(_Model):
    """A hostname and the addresses it resolved to, as rendered into the network policy."""

    name: str = Field(description="The provider or destination name.")
    hostname: str = Field(description="The hostname resolved.")
    addresses: list[str] = Field(default_factory=list, description="Its IPv4 and IPv6 addresses.")
    resolved_at: str = Field(alias="resolvedAt", description="When this set of addresses was first seen.")
    error: str | None = Field(None, description="Why it did not resolve, if it did not.")


class ProfileStatus(_Model):
    observed_generation: int | None = Field(
        None, alias="observedGeneration", description="The metadata.generation last reconciled."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, PolicyFilterBudget and Detecting.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    policies: list[PolicyRef] = Field(default_factory=list, description="The Tetragon policies rendered.")
    policy_count: int = Field(0, alias="policyCount", description="How many: the Policies column.")
    resolved: list[ResolvedDestination] = Field(
        default_factory=list, description="Hostnames resolved into the network policy, with their addresses."
    )
    detections: ProfileDetections | None = None


class AgentDetection(_Model):
    """One pod, one profile: what the pod was seen doing. Owned by the Pod, so it goes with it.
    It is the record: a restarted or newly active operator starts from its counts."""

    api_version: Literal["agentdetect.io/v1alpha1"] = Field("agentdetect.io/v1alpha1", alias="apiVersion")
    kind: Literal["AgentDetection"] = "AgentDetection"
    metadata: dict[str, Any]
    pod: ObjectRef = Field(description="The pod seen (it owns this object).")
    profile: ObjectRef = Field(description="The profile whose rules matched.")
    workload: str = Field(
        "", description="The pod's workload (Deployment, StatefulSet, ...), as Tetragon reports it."
    )
    summary: DetectionSummary = Field(description="The record at a glance.")
    detections: list[RuleDetection] = Field(
        default_factory=list, description="One entry per rule that fired, most frequent first."
    )
    streams: list[StreamPosition] = Field(
        default_factory=list, description="Up to which line of which Tetragon stream the counts go."
    )
