"""Events back to profiles and rules, through the same catalog, rules and resolved addresses the
policies were rendered from."""

from __future__ import annotations

import pytest

from agentdetect.api import catalog
from agentdetect.detection.events import Event
from agentdetect.detection.match import Match, Matcher
from agentdetect.policy.board import ProfileKey, ProfileState
from agentdetect.policy.profiles import parse_profile
from agentdetect.policy.render import Profile, Target, policy_name
from tests.unit.detect_helpers import event, example, make_profile, policy_of, state_of, static_hosts

LLM = ("AgentDetectionProfile", "support", "llm-egress")


def _matcher(*states: ProfileState) -> Matcher:
    return Matcher(states)


def _llm() -> tuple[Profile, Matcher]:
    profile = example("llm-egress.yaml")
    return profile, _matcher(state_of(profile))


def _net(profile: Profile, address: str, port: int, namespace: str | None = None) -> Event:
    ns = namespace if namespace is not None else (profile.namespace or "default")
    return event(
        policy=policy_of(profile, "tcp_connect"), hook="tcp_connect", namespace=ns, target=address, port=port
    )


def _rule(matcher: Matcher, ev: Event) -> str | None:
    found = matcher.match(ev)
    return None if found is None else found.rule


# ---- network ---------------------------------------------------------------------------------


def test_provider_addresses_map_back_to_the_provider() -> None:
    profile, matcher = _llm()
    cat = catalog.load()
    hosts = static_hosts()
    net = profile.spec.network
    assert net is not None
    checked = 0
    for provider in net.providers:
        for hostname in cat.providers[provider].hostnames:
            for address in hosts[hostname]:
                found = matcher.match(_net(profile, address, 443))
                assert found == Match(LLM, provider), (provider, hostname, address)
                checked += 1
    assert checked >= 15  # every provider of the example, bedrock's seven regions included


def test_destinations_by_hostname_map_back_to_their_name() -> None:
    profile, matcher = _llm()
    assert _rule(matcher, _net(profile, "10.8.0.10", 443)) == "llm-gateway"
    # A provider destination takes the provider's ports (azure-openai: 443).
    assert _rule(matcher, _net(profile, "20.119.28.1", 443)) == "azure-openai-prod"


@pytest.mark.parametrize("address", ["10.42.0.0", "10.42.0.1", "10.42.17.3", "10.42.255.255"])
def test_cidr_destination_maps_every_address_inside(address: str) -> None:
    profile, matcher = _llm()
    assert matcher.match(_net(profile, address, 8000)) == Match(LLM, "in-cluster-vllm")


@pytest.mark.parametrize("address", ["10.41.255.255", "10.43.0.0", "10.4.2.1", "110.42.0.1", "1.1.1.1"])
def test_cidr_destination_does_not_map_addresses_outside(address: str) -> None:
    profile, matcher = _llm()
    assert matcher.match(_net(profile, address, 8000)) is None


@pytest.mark.parametrize(
    ("address", "port"),
    [
        ("104.18.6.192", 80),  # openai on 443 only
        ("104.18.6.192", 8443),
        ("10.8.0.10", 80),  # llm-gateway: ports [443]
        ("20.119.28.1", 8080),  # azure-openai-prod: the provider's 443
        ("10.42.1.1", 443),  # in-cluster-vllm: 8000 only
        ("10.42.1.1", 8001),
    ],
)
def test_port_restrictions_are_honoured(address: str, port: int) -> None:
    profile, matcher = _llm()
    assert matcher.match(_net(profile, address, port)) is None


def test_unknown_address_is_unmatched() -> None:
    profile, matcher = _llm()
    for address in ("1.1.1.1", "8.8.8.8", "2001:db8::1", "not-an-address", ""):
        assert matcher.match(_net(profile, address, 443)) is None
    assert matcher.unmatched == 5


def test_destination_without_ports_matches_any_port() -> None:
    profile = make_profile({"network": {"destinations": [{"name": "corp", "cidrs": ["192.168.0.0/16"]}]}})
    matcher = _matcher(state_of(profile))
    for port in (1, 22, 443, 65535):
        assert _rule(matcher, _net(profile, "192.168.3.4", port)) == "corp"
    assert _rule(matcher, _net(profile, "192.169.0.1", 443)) is None


def test_ipv6_destinations() -> None:
    profile = make_profile(
        {
            "network": {
                "destinations": [
                    {"name": "v6-net", "cidrs": ["2001:db8::/32"], "ports": [443]},
                    {"name": "v6-host", "hostnames": ["gw.example.com"], "ports": [443]},
                ]
            }
        }
    )
    matcher = _matcher(state_of(profile, hosts={"gw.example.com": ["10.8.0.10", "2001:db9::10"]}))
    assert _rule(matcher, _net(profile, "2001:db8::1", 443)) == "v6-net"
    assert _rule(matcher, _net(profile, "2001:db8:ffff::1", 443)) == "v6-net"
    assert _rule(matcher, _net(profile, "2001:db9::10", 443)) == "v6-host"
    assert _rule(matcher, _net(profile, "10.8.0.10", 443)) == "v6-host"
    assert _rule(matcher, _net(profile, "2001:db9::11", 443)) is None
    assert _rule(matcher, _net(profile, "2001:db8::1", 80)) is None


@pytest.mark.parametrize(("provider", "port"), [("ollama", 11434), ("vllm", 8000)])
def test_any_address_providers_match_any_address_on_their_port(provider: str, port: int) -> None:
    profile = make_profile({"network": {"providers": [provider]}})
    matcher = _matcher(state_of(profile))
    key = (profile.kind, profile.namespace, profile.name)
    for address in ("127.0.0.1", "10.0.0.9", "104.18.6.192", "::1", "2001:db8::5"):
        assert matcher.match(_net(profile, address, port)) == Match(key, provider)
        assert matcher.match(_net(profile, address, 443)) is None
        assert matcher.match(_net(profile, address, port + 1)) is None


def test_specific_destination_beats_any_address_provider() -> None:
    profile = make_profile(
        {
            "network": {
                "providers": ["ollama"],
                "destinations": [{"name": "gpu-box", "cidrs": ["10.9.0.0/16"], "ports": [11434]}],
            }
        }
    )
    matcher = _matcher(state_of(profile))
    assert _rule(matcher, _net(profile, "10.9.1.1", 11434)) == "gpu-box"
    assert _rule(matcher, _net(profile, "10.10.1.1", 11434)) == "ollama"


def test_longest_network_prefix_wins() -> None:
    profile = make_profile(
        {
            "network": {
                "destinations": [
                    {"name": "wide", "cidrs": ["10.0.0.0/8"]},
                    {"name": "narrow", "cidrs": ["10.1.0.0/16"]},
                    {"name": "narrower", "cidrs": ["10.1.2.0/24"]},
                    {"name": "host", "cidrs": ["10.1.2.3/32"]},
                ]
            }
        }
    )
    matcher = _matcher(state_of(profile))
    assert _rule(matcher, _net(profile, "10.1.2.3", 443)) == "host"
    assert _rule(matcher, _net(profile, "10.1.2.4", 443)) == "narrower"
    assert _rule(matcher, _net(profile, "10.1.9.9", 443)) == "narrow"
    assert _rule(matcher, _net(profile, "10.9.9.9", 443)) == "wide"
    assert _rule(matcher, _net(profile, "11.0.0.1", 443)) is None


def test_same_address_different_ports_name_different_destinations() -> None:
    profile = make_profile(
        {
            "network": {
                "destinations": [
                    {"name": "tls", "cidrs": ["10.0.0.1/32"], "ports": [443]},
                    {"name": "admin", "cidrs": ["10.0.0.1/32"], "ports": [8080, 9090]},
                ]
            }
        }
    )
    matcher = _matcher(state_of(profile))
    assert _rule(matcher, _net(profile, "10.0.0.1", 443)) == "tls"
    assert _rule(matcher, _net(profile, "10.0.0.1", 8080)) == "admin"
    assert _rule(matcher, _net(profile, "10.0.0.1", 9090)) == "admin"
    assert _rule(matcher, _net(profile, "10.0.0.1", 22)) is None


def test_unresolved_hostname_matches_nothing() -> None:
    profile = make_profile({"network": {"destinations": [{"name": "gw", "hostnames": ["gw.example.com"]}]}})
    matcher = _matcher(state_of(profile, hosts={}))
    assert _rule(matcher, _net(profile, "10.8.0.10", 443)) is None


# ---- files and processes ---------------------------------------------------------------------


def _file(profile: Profile, path: str, namespace: str = "anywhere") -> Event:
    return event(
        policy=policy_of(profile, "fd_install"), hook="fd_install", namespace=namespace, target=path, port=0
    )


def _exec(profile: Profile, path: str, namespace: str | None = None) -> Event:
    ns = namespace or profile.namespace or "anywhere"
    policy = policy_of(profile, "execve")
    return event(policy=policy, hook="execve", namespace=ns, target=path, port=0)


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        ("/etc/shadow", "credentials"),
        ("/root/.aws/credentials", "credentials"),
        ("/home/app/.kube/config", "credentials"),
        ("/home/app/.ssh/id_ed25519", "ssh-keys"),
        ("/etc/ssh/ssh_host_rsa_key", "ssh-keys"),
        ("/var/run/secrets/kubernetes.io/serviceaccount/token", "serviceaccount-token"),
        ("/run/secrets/kubernetes.io/serviceaccount/ca.crt", "serviceaccount-token"),
        # user path rules are named by their value
        ("/etc/ssl/private/server.key", "/etc/ssl/private/"),
        ("/home/app/.vault-token", "/.vault-token"),
        # nothing
        ("/etc/hosts", None),
        ("/etc/shadow.bak", None),
        ("/etc/ssl/private", None),
    ],
)
def test_file_presets_by_name_and_paths_by_value(path: str, rule: str | None) -> None:
    profile = example("credential-access.yaml")
    matcher = _matcher(state_of(profile))
    found = matcher.match(_file(profile, path))
    if rule is None:
        assert found is None
    else:
        assert found == Match(("ClusterAgentDetectionProfile", None, "credential-access"), rule)


def test_longest_prefix_and_postfix_win_and_equal_beats_both() -> None:
    profile = make_profile(
        {
            "files": {
                "paths": [
                    {"prefix": "/etc/"},
                    {"prefix": "/etc/ssl/private/"},
                    {"prefix": "/etc/ssl/"},
                    {"equal": "/etc/ssl/private/server.key"},
                    {"postfix": "/id_rsa"},
                    {"postfix": "/.ssh/id_rsa"},
                    {"postfix": "rsa"},
                ]
            }
        }
    )
    matcher = _matcher(state_of(profile))

    def rule(path: str) -> str | None:
        return _rule(matcher, _file(profile, path, "team-a"))

    assert rule("/etc/ssl/private/server.key") == "/etc/ssl/private/server.key"
    assert rule("/etc/ssl/private/other.key") == "/etc/ssl/private/"
    assert rule("/etc/ssl/certs/ca.pem") == "/etc/ssl/"
    assert rule("/etc/passwd") == "/etc/"
    assert rule("/home/a/.ssh/id_rsa") == "/.ssh/id_rsa"
    assert rule("/backup/id_rsa") == "/id_rsa"
    assert rule("/keys/ca_rsa") == "rsa"
    assert rule("/home/a/.ssh/id_ed25519") is None


def test_user_equal_rule_that_a_preset_also_has_is_named_by_the_preset() -> None:
    profile = make_profile({"files": {"presets": ["credentials"], "paths": [{"equal": "/etc/shadow"}]}})
    matcher = _matcher(state_of(profile))
    assert _rule(matcher, _file(profile, "/etc/shadow", "team-a")) == "credentials"


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        ("/bin/sh", "shells"),
        ("/usr/bin/bash", "shells"),
        ("/usr/bin/curl", "network-tools"),
        ("/usr/bin/wget", "network-tools"),
        ("/usr/local/bin/claude", "agent-clis"),
        ("/home/dev/.local/bin/aider", "agent-clis"),
        ("/usr/bin/python3", None),
        ("/usr/bin/shx", None),
    ],
)
def test_process_presets_by_name(path: str, rule: str | None) -> None:
    profile = example("shells-in-production.yaml")
    matcher = _matcher(state_of(profile, [("prod", {"environment": "production"})]))
    assert _rule(matcher, _exec(profile, path, "prod")) == rule


def test_process_binaries_by_value() -> None:
    profile = example("enforce-agent-sandbox.yaml")
    matcher = _matcher(state_of(profile))
    key = ("AgentDetectionProfile", "agents", "agent-sandbox")
    assert matcher.match(_exec(profile, "/usr/bin/curl")) == Match(key, "/usr/bin/curl")
    assert matcher.match(_exec(profile, "/bin/sh")) == Match(key, "shells")
    assert matcher.match(_exec(profile, "/usr/local/bin/curl")) is None
    # The same profile's other hooks
    assert _rule(matcher, _file(profile, "/root/.ssh/id_rsa", "agents")) == "/.ssh/id_rsa"
    assert _rule(matcher, _net(profile, "169.254.169.254", 80)) == "cloud-metadata"
    assert _rule(matcher, _net(profile, "160.79.104.10", 443)) == "anthropic"


# ---- which policy, which namespace, which hook -----------------------------------------------


def test_policy_of_no_profile_is_unmatched() -> None:
    _, matcher = _llm()
    other = make_profile({"network": {"providers": ["openai"]}}, name="other", namespace="support")
    assert matcher.match(_net(other, "104.18.6.192", 443)) is None
    assert matcher.match(event(policy="", target="104.18.6.192")) is None
    assert matcher.match(event(policy="some-policy-net-deadbeef", target="104.18.6.192")) is None
    assert matcher.unmatched == 3
    assert policy_of(other, "tcp_connect") not in matcher.policies()


def test_namespaced_policy_event_from_another_namespace_is_unmatched() -> None:
    profile, matcher = _llm()
    assert matcher.match(_net(profile, "104.18.6.192", 443, namespace="support")) == Match(LLM, "openai")
    assert matcher.match(_net(profile, "104.18.6.192", 443, namespace="kube-system")) is None
    assert matcher.unmatched == 1


def test_hook_must_match_the_policy_hook() -> None:
    profile = example("enforce-agent-sandbox.yaml")
    matcher = _matcher(state_of(profile))
    net_policy = policy_of(profile, "tcp_connect")
    file_policy = policy_of(profile, "fd_install")
    # A file event carrying the network policy's name, and the other way round.
    assert (
        matcher.match(
            event(policy=net_policy, hook="fd_install", namespace="agents", target="/root/.ssh/id_rsa")
        )
        is None
    )
    assert (
        matcher.match(
            event(policy=file_policy, hook="tcp_connect", namespace="agents", target="160.79.104.10")
        )
        is None
    )
    assert (
        matcher.match(
            event(policy=file_policy, hook="fd_install", namespace="agents", target="/root/.ssh/id_rsa")
        )
        is not None
    )
    assert matcher.unmatched == 2


def test_policies_cover_every_hook_and_target() -> None:
    profile = example("shells-in-production.yaml")
    namespaces = [
        ("prod-a", {"environment": "production"}),
        ("prod-b", {"environment": "production"}),
        ("dev", {}),
    ]
    state = state_of(profile, namespaces)
    matcher = _matcher(state)
    hooks = profile.spec.hooks()
    assert matcher.policies() == {policy_name(profile, t, hook) for t in state.targets for hook in hooks}
    assert len(matcher.policies()) == len(hooks)  # one cluster-wide policy per hook it uses


def test_policies_split_over_several_parts_all_match() -> None:
    """A hook with more selectors than one kprobe holds renders several policies: an event from
    any of them belongs to the profile."""
    destinations = [{"name": f"d{i}", "cidrs": [f"10.{i}.0.0/16"], "ports": [1000 + i]} for i in range(12)]
    profile = parse_profile(
        {
            "kind": "AgentDetectionProfile",
            "metadata": {"name": "wide", "namespace": "team"},
            "spec": {"network": {"destinations": destinations}},
        }
    )
    matcher = _matcher(state_of(profile))
    target = Target("TracingPolicyNamespaced", "team")
    key: ProfileKey = ("AgentDetectionProfile", "team", "wide")
    for part, i in ((0, 0), (1, 7), (2, 11)):
        policy = policy_name(profile, target, "tcp_connect", part)
        assert policy in matcher.policies()
        ev = event(policy=policy, hook="tcp_connect", namespace="team", target=f"10.{i}.3.4", port=1000 + i)
        assert matcher.match(ev) == Match(key, f"d{i}")


def test_ipv4_mapped_destinations_match_the_ipv4_rule() -> None:
    """Tetragon prints an AF_INET6 socket's IPv4 destination as ::ffff:a.b.c.d (netip's String,
    pkg/reader/network/network.go); the policy caught it through the rule's twin."""
    profile = parse_profile(
        {
            "kind": "AgentDetectionProfile",
            "metadata": {"name": "jvm", "namespace": "team"},
            "spec": {
                "network": {
                    "providers": ["openai"],
                    "destinations": [{"name": "gw", "cidrs": ["10.8.0.0/16"], "ports": [443]}],
                }
            },
        }
    )
    matcher = _matcher(state_of(profile))
    key: ProfileKey = ("AgentDetectionProfile", "team", "jvm")
    policy = policy_of(profile, "tcp_connect")
    openai = static_hosts()["api.openai.com"][0]
    cases = ((f"::ffff:{openai}", "openai"), ("::ffff:10.8.9.9", "gw"), ("::ffff:10.9.0.1", None))
    for address, rule in cases:
        ev = event(policy=policy, hook="tcp_connect", namespace="team", target=address, port=443)
        assert matcher.match(ev) == (None if rule is None else Match(key, rule))


def test_an_ipv6_range_that_holds_mapped_addresses_matches_them_as_written() -> None:
    """A user's ``::ffff:0:0/96`` (or ``::/0``) holds every mapped address as Tetragon prints it;
    an IPv4 rule's twin still comes first."""
    profile = parse_profile(
        {
            "kind": "AgentDetectionProfile",
            "metadata": {"name": "dual", "namespace": "team"},
            "spec": {
                "network": {
                    "destinations": [
                        {"name": "gw", "cidrs": ["10.8.0.0/16"], "ports": [443]},
                        {"name": "mapped", "cidrs": ["::ffff:0:0/96"], "ports": [443]},
                    ]
                }
            },
        }
    )
    matcher = _matcher(state_of(profile))
    key: ProfileKey = ("AgentDetectionProfile", "team", "dual")
    policy = policy_of(profile, "tcp_connect")
    cases = (
        ("::ffff:10.8.9.9", "gw"),
        ("::ffff:10.9.0.1", "mapped"),
        ("10.9.0.1", None),
        ("2001:db8::1", None),
    )
    for address, rule in cases:
        ev = event(policy=policy, hook="tcp_connect", namespace="team", target=address, port=443)
        assert matcher.match(ev) == (None if rule is None else Match(key, rule)), address


def test_cluster_profile_with_namespace_selector_maps_every_namespace_to_one_profile() -> None:
    profile = example("shells-in-production.yaml")
    namespaces = [
        ("payments", {"environment": "production"}),
        ("search", {"environment": "production", "team": "x"}),
        ("sandbox", {"environment": "dev"}),
    ]
    matcher = _matcher(state_of(profile, namespaces))
    key: ProfileKey = ("ClusterAgentDetectionProfile", None, "shells-in-production")
    assert len(matcher.policies()) == 1  # one cluster-wide policy ...
    for ns in ("payments", "search"):
        found = matcher.match(_exec(profile, "/bin/bash", ns))
        assert found == Match(key, "shells")  # ... for every selected namespace
    # Not selected: the policy's pod selector keeps such events out; none is attributed.
    assert matcher.match(_exec(profile, "/bin/bash", "sandbox")) is None


def test_cluster_profile_without_selector_matches_every_namespace() -> None:
    profile = example("credential-access.yaml")
    matcher = _matcher(state_of(profile))
    key = ("ClusterAgentDetectionProfile", None, "credential-access")
    for ns in ("default", "kube-system", "team-a"):
        assert matcher.match(_file(profile, "/etc/shadow", ns)) == Match(key, "credentials")


def test_several_profiles_are_told_apart() -> None:
    llm = example("llm-egress.yaml")
    creds = example("credential-access.yaml")
    sandbox = example("enforce-agent-sandbox.yaml")
    matcher = _matcher(state_of(llm), state_of(creds), state_of(sandbox))
    assert matcher.match(_net(llm, "104.18.6.192", 443)) == Match(LLM, "openai")
    assert matcher.match(_net(sandbox, "104.18.6.192", 443)) == Match(
        ("AgentDetectionProfile", "agents", "agent-sandbox"), "openai"
    )
    assert matcher.match(_file(creds, "/root/.ssh/id_rsa", "agents")) == Match(
        ("ClusterAgentDetectionProfile", None, "credential-access"), "ssh-keys"
    )
    assert matcher.match(_file(sandbox, "/root/.ssh/id_rsa", "agents")) == Match(
        ("AgentDetectionProfile", "agents", "agent-sandbox"), "/.ssh/id_rsa"
    )


def test_no_profiles_match_nothing() -> None:
    matcher = Matcher([])
    assert matcher.policies() == set()
    assert matcher.match(event()) is None
    assert matcher.unmatched == 1


# ---- the cache -------------------------------------------------------------------------------


def test_matching_is_cached_and_stable() -> None:
    profile, matcher = _llm()
    ev = _net(profile, "104.18.7.192", 443)
    first = matcher.match(ev)
    second = matcher.match(ev)
    assert first == second == Match(LLM, "openai")
    assert first is second  # the cached object
    miss = _net(profile, "1.1.1.1", 443)
    assert matcher.match(miss) is None
    assert matcher.match(miss) is None
    assert matcher.unmatched == 2  # a cached miss still counts each time
    # A different port is a different cache entry with its own answer.
    assert matcher.match(_net(profile, "104.18.7.192", 80)) is None
    assert matcher.match(ev) == Match(LLM, "openai")


def test_cache_key_includes_port_and_policy() -> None:
    a = make_profile(
        {"network": {"destinations": [{"name": "x", "cidrs": ["10.0.0.0/8"], "ports": [443]}]}}, name="a"
    )
    b = make_profile(
        {"network": {"destinations": [{"name": "y", "cidrs": ["10.0.0.0/8"], "ports": [80]}]}}, name="b"
    )
    matcher = _matcher(state_of(a), state_of(b))
    for _ in range(2):
        assert _rule(matcher, _net(a, "10.1.1.1", 443)) == "x"
        assert _rule(matcher, _net(a, "10.1.1.1", 80)) is None
        assert _rule(matcher, _net(b, "10.1.1.1", 80)) == "y"
        assert _rule(matcher, _net(b, "10.1.1.1", 443)) is None


def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from agentdetect.detection import match as match_module

    monkeypatch.setattr(match_module, "_CACHE_LIMIT", 10)
    profile, matcher = _llm()
    for i in range(35):
        assert matcher.match(_net(profile, f"10.42.0.{i}", 8000)) == Match(LLM, "in-cluster-vllm")
        assert len(matcher._cache) <= 10
    assert matcher.match(_net(profile, "104.18.6.192", 443)) == Match(LLM, "openai")
