"""Events back to profiles and rules: which profile's policy fired, and for what.

The policy name says which profile and hook (names are unique cluster-wide by
construction); the address, path or file name says which rule, through the same
catalog, rules and resolved addresses the policy was rendered from.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agentdetect.api import catalog
from agentdetect.detection.events import Event
from agentdetect.policy.board import ProfileKey, ProfileState
from agentdetect.policy.render import Profile, network_targets, policy_names
from agentdetect.policy.resolve import Resolution

_CACHE_LIMIT = 65536


@dataclass(frozen=True, slots=True)
class Match:
    profile: ProfileKey
    rule: str  # provider, destination or preset name; for a user path or binary rule, its value


@dataclass
class _StringRules:
    equal: dict[str, str] = field(default_factory=dict)
    prefix: list[tuple[str, str]] = field(default_factory=list)
    postfix: list[tuple[str, str]] = field(default_factory=list)

    def add(self, rule: catalog.MatchRule, name: str) -> None:
        if rule.equal is not None:
            self.equal.setdefault(rule.equal, name)
        elif rule.prefix is not None:
            self.prefix.append((rule.prefix, name))
        elif rule.postfix is not None:
            self.postfix.append((rule.postfix, name))

    def freeze(self) -> None:
        # Most specific first: the longest prefix or postfix names the rule.
        self.prefix.sort(key=lambda p: -len(p[0]))
        self.postfix.sort(key=lambda p: -len(p[0]))

    def lookup(self, value: str) -> str | None:
        hit = self.equal.get(value)
        if hit is not None:
            return hit
        for prefix, name in self.prefix:
            if value.startswith(prefix):
                return name
        for postfix, name in self.postfix:
            if value.endswith(postfix):
                return name
        return None


@dataclass
class _NetworkRules:
    exact: dict[str, list[tuple[str, frozenset[int]]]] = field(default_factory=dict)
    networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str, frozenset[int]]] = field(
        default_factory=list
    )
    any_address: list[tuple[str, frozenset[int]]] = field(default_factory=list)

    def lookup(self, address: str, port: int) -> str | None:
        if address.startswith(_MAPPED):
            # A dual-stack socket's IPv4 destination, as Tetragon prints it (netip's String of
            # an AF_INET6 address, pkg/reader/network/network.go); rendered as the IPv4 rule's
            # twin (render.ipv4_mapped), so it belongs to that rule, or else to an IPv6 rule
            # whose range holds it as written (``::ffff:0:0/96``, or ``::/0``).
            unmapped = _unmapped(address)
            if unmapped != address:
                return self._lookup(unmapped, port) or self._lookup(address, port)
        return self._lookup(address, port)

    def _lookup(self, address: str, port: int) -> str | None:
        for name, ports in self.exact.get(address, ()):
            if not ports or port in ports:
                return name
        if self.networks:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                return None
            for net, name, ports in self.networks:
                if ip in net and (not ports or port in ports):
                    return name
        for name, ports in self.any_address:
            if port in ports:
                return name
        return None


_MAPPED = "::ffff:"


def _unmapped(address: str) -> str:
    try:
        mapped = ipaddress.IPv6Address(address).ipv4_mapped
    except ValueError:
        return address
    return address if mapped is None else str(mapped)


@dataclass
class _ProfileRules:
    key: ProfileKey
    network: _NetworkRules
    files: _StringRules
    processes: _StringRules


def _rules_for(profile: Profile, resolved: Mapping[str, Resolution]) -> _ProfileRules:
    cat = catalog.load()
    spec = profile.spec
    net = _NetworkRules()
    for t in network_targets(spec, resolved):
        ports = frozenset(t.ports)
        if t.any_address:
            net.any_address.append((t.name, ports))
        for cidr in sorted(t.cidrs):
            network = ipaddress.ip_network(cidr, strict=False)
            if network.num_addresses == 1:
                net.exact.setdefault(str(network.network_address), []).append((t.name, ports))
            else:
                net.networks.append((network, t.name, ports))
    net.networks.sort(key=lambda n: -n[0].prefixlen)
    files, procs = _StringRules(), _StringRules()
    if spec.files:
        for name in spec.files.presets:
            for rule in cat.file_presets[name].rules:
                files.add(rule, name)
        for p in spec.files.paths:
            files.add(p.match(), p.match().value)
    if spec.processes:
        for name in spec.processes.presets:
            for rule in cat.process_presets[name].rules:
                procs.add(rule, name)
        for b in spec.processes.binaries:
            procs.add(b.match(), b.match().value)
    files.freeze()
    procs.freeze()
    return _ProfileRules((profile.kind, profile.namespace, profile.name), net, files, procs)


class Matcher:
    def __init__(self, states: Iterable[ProfileState]) -> None:
        #: policy name -> (rules, hook, the namespaces its events may come from, None for any)
        self._by_policy: dict[str, tuple[_ProfileRules, str, frozenset[str] | None]] = {}
        for state in states:
            rules = _rules_for(state.profile, state.resolved)
            for target in state.targets:
                if target.namespaces is not None:
                    allowed: frozenset[str] | None = frozenset(target.namespaces)
                else:
                    allowed = None if target.namespace is None else frozenset([target.namespace])
                for name, hook in policy_names(state.profile, target, state.resolved):
                    self._by_policy[name] = (rules, hook, allowed)
        # Answers, Match objects included, are cached per everything they depend on (policy,
        # hook, pod namespace, target, port): a stream repeats the same few destinations, paths
        # and binaries, so most events take one dict lookup, and no object is built per event.
        self._cache: dict[tuple[str, str, str, str, int], Match | None] = {}
        self.unmatched = 0

    def policies(self) -> set[str]:
        return set(self._by_policy)

    def _answer(self, event: Event) -> Match | None:
        entry = self._by_policy.get(event.policy)
        if entry is None or entry[1] != event.hook:
            return None
        rules, hook, allowed = entry
        if allowed is not None and event.namespace not in allowed:
            return None  # the policy's pod selector never lets such an event through
        if hook == "tcp_connect":
            rule = rules.network.lookup(event.target, event.port)
        elif hook == "fd_install":
            rule = rules.files.lookup(event.target)
        else:
            rule = rules.processes.lookup(event.target)
        return None if rule is None else Match(rules.key, rule)

    def match(self, event: Event) -> Match | None:
        """The event's match, or None (counted in ``unmatched``)."""
        key = (event.policy, event.hook, event.namespace, event.target, event.port)
        try:
            found = self._cache[key]
        except KeyError:
            found = self._answer(event)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = found
        if found is None:
            self.unmatched += 1
        return found
