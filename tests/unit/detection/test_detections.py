"""Aggregates out to Kubernetes: AgentDetection names and content, the profile status summary,
and the coalescing writer (against a recording fake of the cluster)."""

from __future__ import annotations

import contextlib
import itertools
import re
from typing import Any

import orjson
import pytest
from kubernetes.client.exceptions import ApiException

from agentdetect.api.models import AgentDetection, ProfileDetections
from agentdetect.cluster.kube import Cluster
from agentdetect.detection.aggregate import Aggregator, PodDetections, PodKey, RuleStats
from agentdetect.detection.match import Match
from agentdetect.detection.pipeline import Pipeline
from agentdetect.detection.records import detection_name, detection_object, profile_detections, record_of
from agentdetect.detection.writer import DetectionWriter
from agentdetect.policy.board import ProfileBoard, ProfileKey
from agentdetect.policy.profiles import parse_profile
from tests.unit.detect_helpers import event, example, line, policy_of, state_of, ts

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
ADP: ProfileKey = ("AgentDetectionProfile", "support", "llm-egress")
CADP: ProfileKey = ("ClusterAgentDetectionProfile", None, "credential-access")


def _valid_name(name: str) -> bool:
    return len(name) <= 253 and DNS_SUBDOMAIN.match(name) is not None


def _rule(
    hook: str,
    count: int,
    first: str,
    last: str,
    killed: int = 0,
    binary: str = "/usr/bin/python3",
    target: str = "104.18.6.192",
) -> RuleStats:
    return RuleStats(hook, count, first, last, killed, binary, target)


def _pod(rules: dict[str, RuleStats], workload: str = "bot") -> PodDetections:
    pod = PodDetections(workload, rules)
    pod.events = sum(r.count for r in rules.values())
    pod.last = max(r.last for r in rules.values())
    return pod


# ---- names -----------------------------------------------------------------------------------


def test_detection_name_is_readable_and_valid() -> None:
    name = detection_name((ADP, "support", "bot-6f7c9-abcde"))
    assert name.startswith("bot-6f7c9-abcde.adp-llm-egress-")
    assert re.fullmatch(r"bot-6f7c9-abcde\.adp-llm-egress-[0-9a-f]{6}", name)
    assert _valid_name(name)
    cname = detection_name((CADP, "team-a", "bot-6f7c9-abcde"))
    assert re.fullmatch(r"bot-6f7c9-abcde\.cadp-credential-access-[0-9a-f]{6}", cname)


def test_detection_name_is_stable() -> None:
    key: PodKey = (ADP, "support", "bot-1")
    assert detection_name(key) == detection_name(((ADP[0], ADP[1], ADP[2]), "support", "bot-1"))


def test_detection_name_unique_per_identity() -> None:
    kinds_and_namespaces: list[tuple[str, str | None]] = [
        ("AgentDetectionProfile", "team-a"),
        ("AgentDetectionProfile", "team-b"),
        ("ClusterAgentDetectionProfile", None),
    ]
    profile_names = ["p", "p2", "llm-egress", "b.adp-c", "c"]
    pod_namespaces = ["team-a", "team-b"]
    pods = ["a", "a.adp-b", "bot-1", "bot-2", "x" * 253, "x" * 252 + "y"]
    keys: list[PodKey] = [
        ((kind, pns, pname), podns, pod)
        for (kind, pns), pname, podns, pod in itertools.product(
            kinds_and_namespaces, profile_names, pod_namespaces, pods
        )
    ]
    names = [detection_name(k) for k in keys]
    assert len(set(names)) == len(keys)
    # Readable parts that coincide ("a" + "b.adp-c" and "a.adp-b" + "c") still differ.
    one = detection_name((("AgentDetectionProfile", "t", "b.adp-c"), "t", "a"))
    two = detection_name((("AgentDetectionProfile", "t", "c"), "t", "a.adp-b"))
    assert one != two


def _long_pod_names() -> list[str]:
    """Valid 253-character pod names with dots and dashes at every place near where a name is cut."""
    names = ["a" * 253, "0" * 253, ".".join(["b" * 63] * 3) + "." + "b" * 61]
    for pos in range(236, 252):
        body = list("c" * 253)
        body[pos] = "."
        names.append("".join(body))
        body[pos] = "-"
        names.append("".join(body))
        if pos < 251:
            body[pos : pos + 2] = ["-", "-"]
            names.append("".join(body))
    return names


@pytest.mark.parametrize("profile", [ADP, CADP, ("AgentDetectionProfile", "n" * 63, "p" * 63)])
def test_detection_name_valid_for_253_character_pods(profile: ProfileKey) -> None:
    names = set()
    for pod in _long_pod_names():
        assert len(pod) == 253 and DNS_SUBDOMAIN.match(pod), pod
        name = detection_name((profile, "team-a", pod))
        assert _valid_name(name), name
        names.add(name)
    assert len(names) == len(_long_pod_names())


def test_detection_name_valid_for_all_name_lengths() -> None:
    for length in range(1, 254):
        pod = ("p-" * 127)[:length].rstrip("-") or "p"
        for profile in (ADP, CADP, ("AgentDetectionProfile", "ns", "q" * 63)):
            name = detection_name((profile, "ns", pod))
            assert _valid_name(name), (length, name)


# ---- one AgentDetection ------------------------------------------------------------------------


def test_detection_object_fields_and_summary() -> None:
    pod = _pod(
        {
            "openai": _rule("tcp_connect", 5, ts(1), ts(9)),
            "anthropic": _rule("tcp_connect", 2, ts(3), ts(4), target="160.79.104.10"),
            "in-cluster-vllm": _rule(
                "tcp_connect", 5, ts(2), ts(5), binary="/app/server", target="10.42.0.7"
            ),
            "azure-openai-prod": _rule("tcp_connect", 1, ts(6), ts(6)),
        },
        workload="support-bot",
    )
    key: PodKey = (ADP, "support", "support-bot-6f7c9-abcde")
    obj = detection_object(key, pod)
    assert isinstance(obj, AgentDetection)
    doc = obj.dump()
    assert doc["apiVersion"] == "agentdetect.io/v1alpha1" and doc["kind"] == "AgentDetection"
    assert doc["metadata"] == {
        "name": detection_name(key),
        "namespace": "support",
        "labels": {
            "app.kubernetes.io/managed-by": "agentdetect",
            "agentdetect.io/profile-kind": "AgentDetectionProfile",
            "agentdetect.io/profile-name": "llm-egress",
            "agentdetect.io/profile-namespace": "support",
            "agentdetect.io/pod": "support-bot-6f7c9-abcde",
        },
    }
    assert doc["pod"] == {"kind": "Pod", "namespace": "support", "name": "support-bot-6f7c9-abcde"}
    assert doc["profile"] == {"kind": "AgentDetectionProfile", "namespace": "support", "name": "llm-egress"}
    assert doc["workload"] == "support-bot"
    # By count, most first; ties by name.
    assert doc["summary"] == {
        "rules": 4,
        "targets": "in-cluster-vllm, openai, anthropic, azure-openai-prod",
        "events": 13,
        "lastSeen": ts(9),
        "action": "Observed",
    }
    assert [d["rule"] for d in doc["detections"]] == [
        "in-cluster-vllm",
        "openai",
        "anthropic",
        "azure-openai-prod",
    ]
    assert doc["detections"][0] == {
        "rule": "in-cluster-vllm",
        "hook": "tcp_connect",
        "count": 5,
        "firstSeen": ts(2),
        "lastSeen": ts(5),
        "action": "Observed",
        "example": "/app/server connected to 10.42.0.7",
    }


def test_detection_object_killed_and_examples_per_hook() -> None:
    pod = _pod(
        {
            "/usr/bin/curl": _rule(
                "execve", 2, ts(1), ts(2), killed=1, binary="/bin/sh", target="/usr/bin/curl"
            ),
            "ssh-keys": _rule(
                "fd_install", 1, ts(3), ts(3), binary="/usr/bin/cat", target="/root/.ssh/id_rsa"
            ),
        }
    )
    doc = detection_object((CADP, "agents", "sandbox-1"), pod).dump()
    assert doc["summary"]["action"] == "Killed"
    by_rule = {d["rule"]: d for d in doc["detections"]}
    assert by_rule["/usr/bin/curl"]["action"] == "Killed"
    assert by_rule["/usr/bin/curl"]["example"] == "/bin/sh executed /usr/bin/curl"
    assert by_rule["ssh-keys"]["action"] == "Observed"
    assert by_rule["ssh-keys"]["example"] == "/usr/bin/cat opened /root/.ssh/id_rsa"
    # A cluster profile has no namespace: none in the reference, no namespace label.
    assert doc["profile"] == {"kind": "ClusterAgentDetectionProfile", "name": "credential-access"}
    assert "agentdetect.io/profile-namespace" not in doc["metadata"]["labels"]
    assert doc["metadata"]["namespace"] == "agents"


def test_detection_object_long_values_are_bounded() -> None:
    pod_name = "a" * 62 + "-" + "b" * 190
    rules = {
        f"/very/long/rule/{i:03d}/" + "x" * 40: _rule("fd_install", 1, ts(1), ts(1), target="/" + "y" * 600)
        for i in range(40)
    }
    doc = detection_object((ADP, "support", pod_name), _pod(rules)).dump()
    label = doc["metadata"]["labels"]["agentdetect.io/pod"]
    assert len(label) <= 63 and LABEL_VALUE.match(label) and label == "a" * 62
    assert len(doc["summary"]["targets"]) <= 1024
    assert all(len(d["example"]) <= 512 for d in doc["detections"])
    assert _valid_name(doc["metadata"]["name"])
    assert doc["summary"]["rules"] == 40


# ---- the profile summary -----------------------------------------------------------------------


def _pods(n: int, profile: ProfileKey = ADP) -> list[tuple[PodKey, PodDetections]]:
    out = []
    for i in range(n):
        pod = _pod(
            {
                "openai": _rule("tcp_connect", i + 1, ts(0), ts(i * 7 % n)),
                "anthropic": _rule("tcp_connect", 1, ts(0), ts(0)),
            }
        )
        out.append(((profile, "support", f"bot-{i}"), pod))
    return out


def test_profile_detections_caps_by_pod_at_the_most_recent() -> None:
    pods = _pods(5)
    summary = profile_detections(pods, cap=2)
    assert isinstance(summary, ProfileDetections)
    recent = sorted(pods, key=lambda kp: kp[1].last, reverse=True)
    assert summary.pods == 5
    assert summary.events == sum(p.events for _, p in pods)
    assert summary.last_detection == max(p.last for _, p in pods)
    assert [b.pod for b in summary.by_pod] == [k[2] for k, _ in recent[:2]]
    assert summary.truncated is True
    first = summary.by_pod[0]
    # Most frequent first, as in the AgentDetection's own summary (openai 3 events, anthropic 1).
    assert (first.namespace, first.workload, first.targets) == ("support", "bot", "openai, anthropic")


def test_profile_detections_read_each_pod_as_its_last_flush_wrote_it() -> None:
    """A profile's status is built at each flush for every pod of the profile, under the
    pipeline's lock: it reads each pod's summary as take_dirty left it (the records that
    flush writes), not its rules. A pod changed since is in the dirty set, so the next flush
    takes it and writes the status again; a restored pod reads as its record says."""
    profile: ProfileKey = ("AgentDetectionProfile", "support", "agents")
    agg = Aggregator()
    agg.add(event(pod="bot-1", namespace="support", time=ts(1)), Match(profile, "openai"))
    assert profile_detections(list(agg.pods.items()), cap=5).events == 1  # not flushed yet
    keys = agg.take_dirty()
    agg.add(event(pod="bot-1", namespace="support", time=ts(2)), Match(profile, "openai"))
    status = profile_detections(list(agg.pods.items()), cap=5)
    assert (status.events, status.last_detection) == (1, ts(1))  # as this flush's record
    assert agg.take_dirty() == keys
    status = profile_detections(list(agg.pods.items()), cap=5)
    assert (status.events, status.last_detection) == (2, ts(2))
    record = record_of(detection_object(keys[0], agg.pods[keys[0]]).dump())
    assert record is not None
    again = Aggregator()
    again.restore(*record)
    status = profile_detections(list(again.pods.items()), cap=5)
    assert (status.events, status.last_detection, status.by_pod[0].events) == (2, ts(2), 2)


@pytest.mark.parametrize("cap", [5, 6, 50])
def test_profile_detections_not_truncated_when_all_fit(cap: int) -> None:
    summary = profile_detections(_pods(5), cap=cap)
    assert len(summary.by_pod) == 5 and summary.truncated is False


def test_profile_detections_empty() -> None:
    summary = profile_detections([], cap=3)
    assert summary.dump() == {"pods": 0, "events": 0, "byPod": [], "truncated": False}


# ---- the writer ------------------------------------------------------------------------------


class FakeCluster(Cluster):
    """Records the writes; pods exist unless listed in ``gone``."""

    def __init__(self) -> None:  # no API client: nothing here talks to a server
        self.applied: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.statuses: list[tuple[str, str, str | None, dict[str, Any]]] = []
        self.uid_lookups: list[tuple[str, str]] = []
        self.gone: set[tuple[str, str]] = set()
        self.fail_apply: set[str] = set()  # pod names whose AgentDetection write fails
        self.fail_uid = 0  # the next n uid lookups fail
        self.fail_status = 0  # the next n status patches fail

    def apply_detection(self, doc: dict[str, Any], owner: dict[str, Any]) -> None:
        if doc["pod"]["name"] in self.fail_apply:
            raise ApiException(status=500, reason="Internal Server Error")
        self.applied.append((doc, owner))

    def pod_uid(self, namespace: str, name: str) -> str | None:
        self.uid_lookups.append((namespace, name))
        if self.fail_uid:
            self.fail_uid -= 1
            raise ApiException(status=503, reason="Service Unavailable")
        return None if (namespace, name) in self.gone else f"uid-{namespace}-{name}"

    def patch_status(self, kind: str, name: str, namespace: str | None, status: dict[str, Any]) -> None:
        if self.fail_status:
            self.fail_status -= 1
            raise ApiException(status=500, reason="Internal Server Error")
        self.statuses.append((kind, name, namespace, status))

    def applied_names(self) -> list[str]:
        return [doc["metadata"]["name"] for doc, _ in self.applied]


class Setup:
    def __init__(self) -> None:
        self.llm = example("llm-egress.yaml")
        self.creds = example("credential-access.yaml")
        board = ProfileBoard()
        board.publish(state_of(self.llm))
        board.publish(state_of(self.creds))
        self.pipeline = Pipeline(board, Aggregator())
        self.cluster = FakeCluster()
        self.writer = DetectionWriter(self.cluster, self.pipeline)
        self._clock = itertools.count()

    def connect(self, pod: str, target: str = "104.18.6.192", port: int = 443) -> None:
        self.pipeline.feed(
            line(
                hook="tcp_connect",
                policy=policy_of(self.llm, "tcp_connect"),
                namespace="support",
                pod=pod,
                target=target,
                port=port,
                time=ts(next(self._clock) % 3600),
            )
        )

    def open(self, pod: str, path: str = "/etc/shadow", namespace: str = "support") -> None:
        self.pipeline.feed(
            line(
                hook="fd_install",
                policy=policy_of(self.creds, "fd_install"),
                namespace=namespace,
                pod=pod,
                target=path,
                time=ts(next(self._clock) % 3600),
            )
        )


@pytest.fixture
def setup() -> Setup:
    return Setup()


def test_first_flush_writes_each_detection_and_each_status_once(setup: Setup) -> None:
    setup.connect("bot-1")
    setup.connect("bot-1", "10.42.0.7", 8000)
    setup.connect("bot-2")
    setup.open("bot-1")
    result = setup.writer.flush()
    assert (result.detections_written, result.statuses_written, result.pods_gone) == (3, 2, 0)
    assert result.writes == 5 == setup.writer.total_writes
    docs = {(d["profile"]["name"], d["pod"]["name"]): d for d, _ in setup.cluster.applied}
    assert set(docs) == {("llm-egress", "bot-1"), ("llm-egress", "bot-2"), ("credential-access", "bot-1")}
    assert docs["llm-egress", "bot-1"]["summary"]["targets"] in (
        "in-cluster-vllm, openai",
        "openai, in-cluster-vllm",
    )
    for doc, owner in setup.cluster.applied:
        assert owner == {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": doc["pod"]["name"],
            "uid": f"uid-support-{doc['pod']['name']}",
        }
        AgentDetection.model_validate(doc)
    statuses = {(kind, name, ns): status for kind, name, ns, status in setup.cluster.statuses}
    assert set(statuses) == {
        ("AgentDetectionProfile", "llm-egress", "support"),
        ("ClusterAgentDetectionProfile", "credential-access", None),
    }
    llm_status = statuses["AgentDetectionProfile", "llm-egress", "support"]["detections"]
    assert (llm_status["pods"], llm_status["events"], llm_status["truncated"]) == (2, 3, False)
    assert sorted(p["pod"] for p in llm_status["byPod"]) == ["bot-1", "bot-2"]


def test_second_flush_without_events_writes_nothing(setup: Setup) -> None:
    setup.connect("bot-1")
    setup.open("bot-2")
    assert setup.writer.flush().writes == 4
    again = setup.writer.flush()
    assert (again.detections_written, again.statuses_written, again.writes) == (0, 0, 0)
    assert len(setup.cluster.applied) == 2 and len(setup.cluster.statuses) == 2
    assert setup.writer.total_writes == 4


def test_only_changed_detections_are_rewritten(setup: Setup) -> None:
    for pod in ("bot-1", "bot-2", "bot-3"):
        setup.connect(pod)
    setup.open("bot-1")
    setup.writer.flush()
    setup.cluster.applied.clear()
    setup.cluster.statuses.clear()
    setup.connect("bot-2")
    setup.connect("bot-2", "160.79.104.10")
    result = setup.writer.flush()
    assert (result.detections_written, result.statuses_written) == (1, 1)
    ((doc, _),) = setup.cluster.applied
    assert (doc["pod"]["name"], doc["profile"]["name"]) == ("bot-2", "llm-egress")
    assert doc["summary"]["events"] == 3 and doc["summary"]["targets"] == "openai, anthropic"
    assert [s[1] for s in setup.cluster.statuses] == ["llm-egress"]


def test_one_status_patch_per_affected_profile_per_flush(setup: Setup) -> None:
    for i in range(200):
        setup.connect(f"bot-{i % 20}")
        setup.open(f"bot-{i % 13}", namespace="support" if i % 2 else "other")
    result = setup.writer.flush()
    assert result.statuses_written == 2
    assert sorted(s[1] for s in setup.cluster.statuses) == ["credential-access", "llm-egress"]
    assert result.detections_written == len(setup.pipeline.aggregator.pods) == 20 + 26
    creds = next(s for s in setup.cluster.statuses if s[1] == "credential-access")[3]["detections"]
    assert creds["pods"] == 26 and creds["events"] == 200
    assert len(creds["byPod"]) == 26 and creds["truncated"] is False


def test_status_by_pod_is_capped() -> None:
    setup = Setup()
    setup.writer = DetectionWriter(setup.cluster, setup.pipeline, max_status_pods=3)
    for i in range(10):
        setup.connect(f"bot-{i}")
    setup.writer.flush()
    ((_, _, _, status),) = setup.cluster.statuses
    detections = status["detections"]
    assert detections["pods"] == 10 and detections["truncated"] is True
    assert [p["pod"] for p in detections["byPod"]] == ["bot-9", "bot-8", "bot-7"]


def _writes_for(events: int) -> tuple[int, int]:
    setup = Setup()
    for i in range(events):
        setup.connect(
            f"bot-{i % 5}", ("104.18.6.192", "160.79.104.10", "10.42.0.9")[i % 3], 8000 if i % 3 == 2 else 443
        )
    result = setup.writer.flush()
    return result.detections_written, result.statuses_written


def test_writes_do_not_depend_on_the_number_of_events() -> None:
    assert _writes_for(10) == _writes_for(10_000) == (5, 1)


def test_pod_without_uid_is_forgotten_and_not_written(setup: Setup) -> None:
    setup.connect("bot-1")
    setup.connect("gone-1")
    setup.open("gone-1")
    setup.cluster.gone.add(("support", "gone-1"))
    result = setup.writer.flush()
    assert result.pods_gone >= 1
    assert result.detections_written == 1
    assert [d["pod"]["name"] for d, _ in setup.cluster.applied] == ["bot-1"]
    assert all(k[2] != "gone-1" for k in setup.pipeline.aggregator.pods)
    statuses = {s[1]: s[3]["detections"] for s in setup.cluster.statuses}
    assert statuses["llm-egress"]["pods"] == 1
    assert statuses["credential-access"]["pods"] == 0
    # Nothing about it is retried later.
    assert setup.writer.flush().writes == 0


def test_failed_write_is_retried_next_flush(setup: Setup) -> None:
    setup.connect("bot-1")
    setup.connect("bot-2")
    setup.cluster.fail_apply.add("bot-2")
    first = setup.writer.flush()
    assert first.detections_written == 1
    assert [d["pod"]["name"] for d, _ in setup.cluster.applied] == ["bot-1"]
    assert setup.pipeline.aggregator.dirty == {(ADP, "support", "bot-2")}
    setup.cluster.fail_apply.clear()
    second = setup.writer.flush()
    assert second.detections_written == 1
    assert [d["pod"]["name"] for d, _ in setup.cluster.applied] == ["bot-1", "bot-2"]
    assert setup.writer.flush().writes == 0


def test_failed_uid_lookup_is_retried_next_flush(setup: Setup) -> None:
    """A flush that fails half-way (the API server unavailable while looking up a pod) must not
    lose what it had not written: the next flush writes it."""
    setup.connect("bot-1")
    setup.cluster.fail_uid = 1
    with contextlib.suppress(ApiException):
        setup.writer.flush()
    retry = setup.writer.flush()
    assert retry.detections_written == 1
    assert [d["pod"]["name"] for d, _ in setup.cluster.applied] == ["bot-1"]


def test_failed_status_patch_is_retried_next_flush(setup: Setup) -> None:
    setup.connect("bot-1")
    setup.cluster.fail_status = 1
    with contextlib.suppress(ApiException):
        setup.writer.flush()
    assert len(setup.cluster.applied) == 1
    retry = setup.writer.flush()
    assert retry.statuses_written == 1
    assert [s[1] for s in setup.cluster.statuses] == ["llm-egress"]


def test_pod_uid_is_looked_up_once(setup: Setup) -> None:
    for _ in range(3):
        setup.connect("bot-1")
        setup.open("bot-1")
        setup.writer.flush()
    assert setup.cluster.uid_lookups == [("support", "bot-1")]
    assert len(setup.cluster.applied) == 6


def test_forget_pod_drops_the_cached_uid_and_written_state(setup: Setup) -> None:
    raw = line(
        hook="tcp_connect",
        policy=policy_of(setup.llm, "tcp_connect"),
        namespace="support",
        pod="bot-1",
        target="104.18.6.192",
        time=ts(1),
    )
    setup.pipeline.feed(raw)
    setup.writer.flush()
    setup.pipeline.aggregator.forget_pod("support", "bot-1")
    setup.writer.forget_pod("support", "bot-1")
    setup.pipeline.feed(raw)  # a new pod of the same name, doing the same
    result = setup.writer.flush()
    assert result.detections_written == 1
    assert setup.cluster.uid_lookups == [("support", "bot-1")] * 2
    assert setup.cluster.applied[0][0] == setup.cluster.applied[1][0]  # the same content, written again


# ---- processes outside any pod ---------------------------------------------------------------


def _host_line(
    policy: str, second: int, target: str = "/root/.ssh/id_ed25519", node: str = "node-1"
) -> bytes:
    doc = orjson.loads(
        line(hook="fd_install", policy=policy, namespace="x", pod="x", target=target, time=ts(second))
    )
    del doc["process_kprobe"]["process"]["pod"]  # what Tetragon exports for a host process
    doc["node_name"] = node
    return orjson.dumps(doc)


def test_host_process_matches_are_counted_in_the_profile_status_not_dropped() -> None:
    profile = parse_profile(
        {
            "kind": "ClusterAgentDetectionProfile",
            "metadata": {"name": "node-secrets"},
            "spec": {"hostProcesses": True, "files": {"presets": ["ssh-keys", "credentials"]}},
        }
    )
    board = ProfileBoard()
    board.publish(state_of(profile))
    pipeline = Pipeline(board, Aggregator())
    cluster = FakeCluster()
    writer = DetectionWriter(cluster, pipeline)
    policy = policy_of(profile, "fd_install")
    pipeline.feed_many(
        [
            _host_line(policy, 5),
            _host_line(policy, 1, "/etc/shadow", node="node-2"),
            _host_line(policy, 9, node="node-3"),
            _host_line(policy, 7, "/etc/hostname"),  # the policy's event, but no rule of ours
        ]
    )
    assert pipeline.stats.events == 4 and pipeline.unmatched == 1
    writer.flush()
    assert cluster.applied == []  # no pod to own an AgentDetection
    ((kind, name, namespace, status),) = cluster.statuses
    assert (kind, name, namespace) == ("ClusterAgentDetectionProfile", "node-secrets", None)
    assert status["detections"]["hostProcesses"] == {
        "events": 3,
        "firstSeen": ts(1),
        "lastSeen": ts(9),
        "targets": "ssh-keys, credentials",
        "example": "on node-3: /usr/bin/python3 opened /root/.ssh/id_ed25519",
    }
    assert writer.flush().writes == 0  # nothing new, nothing written
    pipeline.feed(_host_line(policy, 11))
    assert writer.flush().statuses_written == 1


def test_host_events_of_a_namespaced_policy_are_not_attributed() -> None:
    """Tetragon never lets a host process through a TracingPolicyNamespaced; such a line is not
    attributed to the profile."""
    llm = example("credential-access.yaml")
    profile = parse_profile(
        {
            "kind": "AgentDetectionProfile",
            "metadata": {"name": "creds", "namespace": "team"},
            "spec": {"files": {"presets": ["ssh-keys"]}},
        }
    )
    board = ProfileBoard()
    board.publish(state_of(profile))
    board.publish(state_of(llm))
    pipeline = Pipeline(board, Aggregator())
    pipeline.feed(_host_line(policy_of(profile, "fd_install"), 1))
    assert pipeline.unmatched == 1 and pipeline.aggregator.host == {}


def test_an_overtaken_activation_starts_no_second_source() -> None:
    """Standby and active again while the first activation still waits: only the second one
    restores and follows (two sources on one pipeline would count lines twice)."""
    import threading

    from agentdetect.controller.reconcile import Config
    from agentdetect.detection.service import DetectionService
    from agentdetect.policy.resolve import StaticResolver

    release = threading.Event()

    class Waiting(FakeCluster):
        lists = 0

        def list_profiles(self) -> list[dict[str, Any]]:
            return []

        def list_detections(self, label_selector: str = "") -> list[dict[str, Any]]:
            Waiting.lists += 1
            release.wait(10)
            return []

    service = DetectionService(
        Waiting(), ProfileBoard(), Config(resolver=StaticResolver({})), follow_logs=False, settled=set
    )
    service._begin_soon()  # activation 1: blocks reading the records
    service.active = False
    service.active = True
    service._begin_soon()  # activation 2
    release.set()
    assert service.begun.wait(10)
    assert service._activation == 2 and Waiting.lists == 2


def _service_over(profiles: list[dict[str, Any]], settled: Any, settle_timeout: float = 120.0) -> Any:
    """A detection service whose cluster lists ``profiles`` and holds no records yet."""
    from agentdetect.controller.reconcile import Config
    from agentdetect.detection.service import DetectionService
    from agentdetect.policy.resolve import StaticResolver

    class Profiles(FakeCluster):
        def list_profiles(self) -> list[dict[str, Any]]:
            return profiles

        def list_detections(self, label_selector: str = "") -> list[dict[str, Any]]:
            return []

    return DetectionService(
        Profiles(),
        ProfileBoard(),
        Config(resolver=StaticResolver({})),
        follow_logs=False,
        settled=settled,
        settle_timeout=settle_timeout,
    )


def test_detection_waits_for_the_current_version_of_every_profile() -> None:
    """A replica back from standby reconciled a profile once, but it changed meanwhile: its
    events would be matched against the old rules, so detection waits for this generation."""
    import time

    from agentdetect.cluster.kube import ProfileVersion

    meta = {"name": "p", "namespace": "t", "uid": "u1", "generation": 2}
    settled: set[ProfileVersion] = {("AgentDetectionProfile", "t", "p", "u1", 1)}
    service = _service_over([{"kind": "AgentDetectionProfile", "metadata": meta}], lambda: set(settled))
    service._begin_soon()
    time.sleep(0.6)
    assert not service.begun.is_set()
    settled.add(("AgentDetectionProfile", "t", "p", "u1", 2))
    assert service.begun.wait(5)
    service._stop.set()


def test_detection_does_not_wait_for_a_profile_being_deleted() -> None:
    """A profile being deleted is not reconciled (its policies go first, in a foreground
    deletion), so its version never settles: waiting for it held detection back for the whole
    settle timeout on every start."""
    deleting = {"name": "p", "namespace": "t", "uid": "u1", "generation": 3}
    deleting["deletionTimestamp"] = "2026-11-25T12:00:00Z"
    settled = {"name": "q", "namespace": "t", "uid": "u2", "generation": 1}
    service = _service_over(
        [{"kind": "AgentDetectionProfile", "metadata": m} for m in (deleting, settled)],
        lambda: {("AgentDetectionProfile", "t", "q", "u2", 1)},
        settle_timeout=60.0,
    )
    service._begin_soon()
    try:
        assert service.begun.wait(5)
    finally:
        service._stop.set()


def test_count_refresh_is_an_etcd_write_budget(setup: Setup) -> None:
    """With a count refresh (node mode), a record whose rules, targets and actions did not
    change is rewritten for its counts at most once per refresh; a new rule is written at once;
    nothing is lost: the deferred counts are written when the refresh comes."""
    now = [0.0]
    writer = DetectionWriter(setup.cluster, setup.pipeline, count_refresh=60.0, clock=lambda: now[0])
    setup.connect("bot-1")
    assert writer.flush().detections_written == 1
    for second in range(1, 30):  # events every second, counts only
        now[0] = float(second)
        setup.connect("bot-1")
        result = writer.flush()
        assert (result.detections_written, result.deferred) == (0, 1), second
    now[0] = 31.0
    setup.connect("bot-1", "10.42.0.7", 8000)  # a new rule: written at once
    assert writer.flush().detections_written == 1
    now[0] = 50.0
    setup.connect("bot-1")
    assert writer.flush().deferred == 1
    now[0] = 92.0  # the refresh: the counts go out
    result = writer.flush()
    assert (result.detections_written, result.deferred) == (1, 0)
    doc = setup.cluster.applied[-1][0]
    assert doc["summary"]["events"] == 32  # 30 + the new rule's 1 + 1: none lost
    assert len(setup.cluster.applied) == 3  # in ~90 s of events every second


def test_a_flush_cut_short_by_the_transport_leaves_every_record_owed(setup: Setup) -> None:
    """During an API server outage the client raises urllib3's errors, not ApiException: the
    records taken for that flush stay owed, so a pod that then goes quiet is still written."""
    import urllib3

    setup.connect("bot-1")
    setup.connect("bot-2")

    def refused(doc: dict[str, Any], owner: dict[str, Any]) -> None:
        raise urllib3.exceptions.MaxRetryError(None, "/apis", "connection refused")  # type: ignore[arg-type]

    setup.cluster.apply_detection = refused  # type: ignore[method-assign]
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        setup.writer.flush()
    del setup.cluster.apply_detection  # the API server is back; no new event comes
    assert setup.writer.flush().detections_written == 2
    assert sorted(d["pod"]["name"] for d, _ in setup.cluster.applied) == ["bot-1", "bot-2"]
