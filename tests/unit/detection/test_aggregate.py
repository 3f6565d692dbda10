"""Per (profile, pod) aggregation: counts, first and last seen, action, examples; the memory caps;
forgetting pods and profiles; dirty tracking. And the pipeline that feeds it."""

from __future__ import annotations

import itertools

import orjson
import pytest

from agentdetect.detection.aggregate import Aggregator, PodKey
from agentdetect.detection.events import Event, ParseStats, parse_line
from agentdetect.detection.match import Match
from agentdetect.detection.pipeline import Pipeline
from agentdetect.local.samples import Scenario, kprobe_event, stream
from agentdetect.policy.board import ProfileBoard, ProfileKey
from tests.unit.detect_helpers import event, line, make_profile, policy_of, small_board, state_of, ts

P1: ProfileKey = ("AgentDetectionProfile", "team-a", "llm")
P2: ProfileKey = ("ClusterAgentDetectionProfile", None, "creds")


def _ev(
    pod: str = "app-1",
    time: str = ts(0),
    namespace: str = "team-a",
    target: str = "104.18.6.192",
    binary: str = "/usr/bin/python3",
    killed: bool = False,
) -> Event:
    return event(pod=pod, time=time, namespace=namespace, target=target, binary=binary, killed=killed)


def _key(profile: ProfileKey = P1, pod: str = "app-1", namespace: str = "team-a") -> PodKey:
    return (profile, namespace, pod)


# ---- counts, times, action, examples ---------------------------------------------------------


def test_counts_per_rule_and_pod() -> None:
    agg = Aggregator()
    for _ in range(3):
        agg.add(_ev(), Match(P1, "openai"))
    agg.add(_ev(target="160.79.104.10"), Match(P1, "anthropic"))
    pod = agg.pods[_key()]
    assert {r: s.count for r, s in pod.rules.items()} == {"openai": 3, "anthropic": 1}
    assert pod.events == 4
    assert pod.workload == "app"
    assert pod.rules["openai"].hook == "tcp_connect"
    assert list(agg.pods) == [_key()]


def test_first_and_last_are_true_min_and_max_whatever_the_order() -> None:
    agg = Aggregator()
    times = [ts(30), ts(10), ts(50), ts(20), ts(40), ts(10, 5), ts(49, 999_999_999)]
    for t in times:
        agg.add(_ev(time=t), Match(P1, "openai"))
    rule = agg.pods[_key()].rules["openai"]
    assert (rule.first, rule.last) == (min(times), max(times)) == (ts(10), ts(50))
    assert agg.pods[_key()].last == ts(50)


def test_first_and_last_with_the_first_event_the_latest() -> None:
    agg = Aggregator()
    for t in (ts(9), ts(1), ts(5)):
        agg.add(_ev(time=t), Match(P1, "openai"))
    rule = agg.pods[_key()].rules["openai"]
    assert (rule.first, rule.last) == (ts(1), ts(9))


def test_first_and_last_across_timestamp_precisions() -> None:
    """Tetragon exports times as protobuf JSON, which writes 0, 3, 6 or 9 fractional digits
    (trailing zero groups dropped): 12:00:01Z is before 12:00:01.500Z. Parsing normalises them,
    so the aggregator's string comparison is time order."""
    agg = Aggregator()
    stats = ParseStats()
    for stamp in ("2026-11-23T12:00:01.5Z", "2026-11-23T12:00:01Z", "2026-11-23T12:00:01.000001Z"):
        event = parse_line(
            orjson.dumps(
                kprobe_event(
                    hook="tcp_connect", policy="p", namespace="ns", pod="pod", target="1.2.3.4", time=stamp
                )
            ),
            stats,
        )
        assert event is not None
        agg.add(event, Match(P1, "openai"))
    rule = agg.pods[(P1, "ns", "pod")].rules["openai"]
    assert (rule.first, rule.last) == ("2026-11-23T12:00:01.000000000Z", "2026-11-23T12:00:01.500000000Z")
    assert agg.pods[(P1, "ns", "pod")].last == "2026-11-23T12:00:01.500000000Z"


def test_action_is_killed_if_any_event_was_killed() -> None:
    agg = Aggregator()
    agg.add(_ev(), Match(P1, "curl"))
    assert agg.pods[_key()].rules["curl"].action == "Observed"
    agg.add(_ev(killed=True), Match(P1, "curl"))
    agg.add(_ev(), Match(P1, "curl"))
    rule = agg.pods[_key()].rules["curl"]
    assert (rule.action, rule.killed, rule.count) == ("Killed", 1, 3)


def test_killed_first_event_counts() -> None:
    agg = Aggregator()
    agg.add(_ev(killed=True), Match(P1, "curl"))
    assert agg.pods[_key()].rules["curl"].killed == 1
    assert agg.pods[_key()].rules["curl"].action == "Killed"


def test_example_is_the_first_event() -> None:
    agg = Aggregator()
    agg.add(_ev(binary="/usr/bin/python3", target="104.18.6.192", time=ts(5)), Match(P1, "openai"))
    agg.add(_ev(binary="/usr/bin/node", target="104.18.7.192", time=ts(1)), Match(P1, "openai"))
    rule = agg.pods[_key()].rules["openai"]
    assert (rule.example_binary, rule.example_target) == ("/usr/bin/python3", "104.18.6.192")


def test_same_pod_under_two_profiles_and_same_name_in_two_namespaces() -> None:
    agg = Aggregator()
    agg.add(_ev(), Match(P1, "openai"))
    agg.add(_ev(), Match(P2, "credentials"))
    agg.add(_ev(namespace="team-b"), Match(P2, "credentials"))
    assert set(agg.pods) == {_key(P1), _key(P2), _key(P2, namespace="team-b")}
    assert list(agg.by_profile()) == [
        (P1, [(_key(P1), agg.pods[_key(P1)])]),
        (
            P2,
            [
                (_key(P2), agg.pods[_key(P2)]),
                (_key(P2, namespace="team-b"), agg.pods[_key(P2, namespace="team-b")]),
            ],
        ),
    ]


# ---- caps --------------------------------------------------------------------------------------


def test_pod_cap_drops_and_counts() -> None:
    agg = Aggregator(max_pods=3)
    for p in range(3):
        agg.add(_ev(pod=f"app-{p}"), Match(P1, "openai"))
    agg.take_dirty()
    agg.add(_ev(pod="app-3"), Match(P1, "openai"))
    agg.add(_ev(pod="app-3"), Match(P1, "anthropic"))
    assert len(agg.pods) == 3
    assert _key(pod="app-3") not in agg.pods
    assert agg.stats.dropped_over_pod_cap == 2
    assert agg.take_dirty() == []  # a dropped event dirties nothing
    # Pods already kept keep counting.
    agg.add(_ev(pod="app-0"), Match(P1, "openai"))
    assert agg.pods[_key(pod="app-0")].rules["openai"].count == 2
    assert agg.stats.dropped_over_pod_cap == 2


def test_pod_cap_counts_profile_pod_pairs() -> None:
    agg = Aggregator(max_pods=2)
    agg.add(_ev(), Match(P1, "openai"))
    agg.add(_ev(), Match(P2, "credentials"))
    agg.add(_ev(pod="app-2"), Match(P1, "openai"))
    assert set(agg.pods) == {_key(P1), _key(P2)}
    assert agg.stats.dropped_over_pod_cap == 1


def test_pod_cap_bound_holds_over_many_pods() -> None:
    agg = Aggregator(max_pods=3)
    for i in range(10_000):
        agg.add(_ev(pod=f"app-{i % 1000:04d}", time=ts(i % 60)), Match(P1, "openai"))
        assert len(agg.pods) <= 3
    kept = sum(p.events for p in agg.pods.values())
    assert set(agg.pods) == {_key(pod=f"app-{i:04d}") for i in range(3)}
    assert kept == 30
    assert agg.stats.dropped_over_pod_cap == 10_000 - kept


def test_room_is_made_by_forgetting_a_pod() -> None:
    agg = Aggregator(max_pods=1)
    agg.add(_ev(pod="a"), Match(P1, "openai"))
    agg.add(_ev(pod="b"), Match(P1, "openai"))
    assert list(agg.pods) == [_key(pod="a")]
    agg.forget_pod("team-a", "a")
    agg.add(_ev(pod="b"), Match(P1, "openai"))
    assert list(agg.pods) == [_key(pod="b")]


def test_rule_cap_drops_and_counts() -> None:
    agg = Aggregator(max_rules_per_pod=2)
    agg.add(_ev(), Match(P1, "openai"))
    agg.add(_ev(), Match(P1, "anthropic"))
    agg.take_dirty()
    agg.add(_ev(), Match(P1, "mistral"))
    agg.add(_ev(), Match(P1, "groq"))
    pod = agg.pods[_key()]
    assert set(pod.rules) == {"openai", "anthropic"}
    assert pod.dropped_rules == 2
    assert agg.stats.dropped_over_rule_cap == 2
    assert pod.events == 2  # dropped events are not counted as stored ones
    assert agg.take_dirty() == []
    agg.add(_ev(time=ts(9)), Match(P1, "openai"))
    assert pod.rules["openai"].count == 2 and pod.events == 3 and pod.last == ts(9)


def test_rule_cap_bound_holds_over_many_rules() -> None:
    agg = Aggregator(max_pods=5, max_rules_per_pod=4)
    for i in range(10_000):
        agg.add(_ev(pod=f"app-{i % 7}"), Match(P1, f"rule-{i % 100}"))
    assert len(agg.pods) == 5
    assert all(len(p.rules) <= 4 for p in agg.pods.values())
    stored = sum(p.events for p in agg.pods.values())
    assert stored + agg.stats.dropped_over_pod_cap + agg.stats.dropped_over_rule_cap == 10_000
    assert sum(p.dropped_rules for p in agg.pods.values()) == agg.stats.dropped_over_rule_cap


# ---- forgetting ------------------------------------------------------------------------------


def test_forget_pod_drops_every_profile_entry_for_that_pod() -> None:
    agg = Aggregator()
    agg.add(_ev(pod="gone"), Match(P1, "openai"))
    agg.add(_ev(pod="gone"), Match(P2, "credentials"))
    agg.add(_ev(pod="stays"), Match(P1, "openai"))
    agg.add(_ev(pod="gone", namespace="team-b"), Match(P2, "credentials"))  # same name elsewhere
    assert agg.forget_pod("team-a", "gone") == 2
    assert set(agg.pods) == {_key(pod="stays"), _key(P2, pod="gone", namespace="team-b")}
    assert set(agg.take_dirty()) == {_key(pod="stays"), _key(P2, pod="gone", namespace="team-b")}
    assert agg.stats.pods_forgotten == 2
    assert agg.forget_pod("team-a", "gone") == 0
    assert agg.forget_pod("team-a", "never-seen") == 0
    assert agg.stats.pods_forgotten == 2


def test_forgotten_pod_starts_afresh() -> None:
    agg = Aggregator()
    for _ in range(5):
        agg.add(_ev(pod="p"), Match(P1, "openai"))
    agg.forget_pod("team-a", "p")
    agg.add(_ev(pod="p"), Match(P1, "openai"))
    assert agg.pods[_key(pod="p")].rules["openai"].count == 1


def test_forget_profile() -> None:
    agg = Aggregator()
    for pod in ("a", "b", "c"):
        agg.add(_ev(pod=pod), Match(P1, "openai"))
    agg.add(_ev(pod="a"), Match(P2, "credentials"))
    agg.forget_profile(P1)
    assert list(agg.pods) == [_key(P2, pod="a")]
    assert agg.take_dirty() == [_key(P2, pod="a")]
    agg.forget_profile(("AgentDetectionProfile", "x", "never"))
    assert list(agg.pods) == [_key(P2, pod="a")]


def test_an_indexed_rule_leads_to_its_entry_until_the_pod_or_profile_goes() -> None:
    """An index table holds the rule, linked to its pod's entry (the counting path's way to
    both); the entry holds the rule too. Forgetting cuts the link, so that reference counting
    frees what is forgotten without waiting for the cyclic collector."""
    agg = Aggregator()
    for pod in ("a", "b"):
        agg.add(_ev(pod=pod), Match(P1, "openai"))
    agg.add(_ev(pod="a"), Match(P2, "credentials"))
    indexed = {
        (match.profile, pod): agg.indexed(match, "team-a", pod)[pod]
        for match in (Match(P1, "openai"), Match(P2, "credentials"))
        for pod in ("a", "b")
        if _key(match.profile, pod) in agg.pods
    }
    assert len(indexed) == 3
    for (profile, pod), rule in indexed.items():
        assert rule.entry is agg.pods[_key(profile, pod)] and rule.pod_key == _key(profile, pod)
        assert rule in rule.entry.rules.values()
    assert agg.forget_pod("team-a", "a") == 2
    assert indexed[(P1, "a")].entry is None and indexed[(P2, "a")].entry is None
    assert agg.indexed(Match(P1, "openai"), "team-a", "b") == {"b": indexed[(P1, "b")]}
    agg.forget_profile(P1)
    assert indexed[(P1, "b")].entry is None
    assert agg.indexed(Match(P1, "openai"), "team-a", "b") == {}


# ---- dirty tracking ----------------------------------------------------------------------------


def test_take_dirty_returns_each_changed_key_once_and_clears() -> None:
    agg = Aggregator()
    for i in range(100):
        agg.add(_ev(pod=f"p{i % 3}"), Match(P1 if i % 2 else P2, "r"))
    dirty = agg.take_dirty()
    assert len(dirty) == len(set(dirty)) == 6
    assert set(dirty) == set(agg.pods)
    assert agg.take_dirty() == []
    agg.add(_ev(pod="p1"), Match(P2, "r"))
    agg.add(_ev(pod="p1"), Match(P2, "r"))
    assert agg.take_dirty() == [_key(P2, pod="p1")]
    assert agg.take_dirty() == []


def test_a_rule_is_queued_while_its_entry_is_dirty() -> None:
    """The event path marks the rule it updates, not the entry (detection.count): a rule
    marked queued always has its entry's key in the dirty set, and taking the key clears the
    marks of all the entry's rules, so the next event queues the key again."""
    agg = Aggregator()
    agg.add(_ev(), Match(P1, "openai"))
    agg.add(_ev(target="160.79.104.10"), Match(P1, "anthropic"))
    rules = agg.pods[_key()].rules
    assert all(rule.queued for rule in rules.values()) and agg.dirty == {_key()}
    assert agg.take_dirty() == [_key()]
    assert not any(rule.queued for rule in rules.values())
    agg.mark_dirty(_key())  # a failed write: written again, with no rule changed
    assert agg.take_dirty() == [_key()] and agg.take_dirty() == []
    agg.add(_ev(target="160.79.104.10"), Match(P1, "anthropic"))
    assert [r for r, rule in rules.items() if rule.queued] == ["anthropic"]
    assert agg.take_dirty() == [_key()]
    agg.mark_dirty(_key(pod="never-seen"))
    assert agg.take_dirty() == []


def test_take_dirty_is_sorted_with_cluster_profiles_without_namespace() -> None:
    agg = Aggregator()
    keys = [
        (("ClusterAgentDetectionProfile", None, "z"), "ns", "p"),
        (("AgentDetectionProfile", "b", "x"), "b", "p"),
        (("AgentDetectionProfile", "a", "y"), "a", "q"),
        (("AgentDetectionProfile", "a", "y"), "a", "p"),
    ]
    for profile, ns, pod in keys:
        agg.add(_ev(pod=pod, namespace=ns), Match(profile, "r"))
    assert agg.take_dirty() == [keys[3], keys[2], keys[1], keys[0]]


# ---- the pipeline ------------------------------------------------------------------------------


def test_pipeline_feed_and_feed_many_agree() -> None:
    board, lines = small_board()
    one, many = Pipeline(board), Pipeline(board)
    for raw in lines:
        one.feed(raw)
    many.feed_many(lines)
    assert one.aggregator.pods == many.aggregator.pods
    assert one.stats == many.stats
    assert one.unmatched == many.unmatched == 1
    assert one.stats.as_dict() == {
        "lines": 6,
        "events": 4,
        "ignored": 1,
        "malformed": 1,
        "truncated": 0,
        "unknown": 0,
        "oversized": 0,
    }
    llm_key: ProfileKey = ("AgentDetectionProfile", "support", "llm-egress")
    sb_key: ProfileKey = ("AgentDetectionProfile", "agents", "agent-sandbox")
    assert set(one.aggregator.pods) == {(llm_key, "support", "bot-1"), (sb_key, "agents", "sb-1")}
    assert set(one.aggregator.pods[(llm_key, "support", "bot-1")].rules) == {"openai", "in-cluster-vllm"}
    assert one.aggregator.pods[(sb_key, "agents", "sb-1")].rules["/usr/bin/curl"].action == "Killed"


def test_pipeline_follows_thesmall_board() -> None:
    board = ProfileBoard()
    pipeline = Pipeline(board)
    profile = make_profile({"processes": {"presets": ["shells"]}}, name="sh", namespace="team-a")
    raw = line(
        hook="execve", policy=policy_of(profile, "execve"), namespace="team-a", pod="p", target="/bin/sh"
    )
    pipeline.feed(raw)
    assert pipeline.aggregator.pods == {} and pipeline.unmatched == 1
    board.publish(state_of(profile))
    pipeline.feed(raw)
    assert len(pipeline.aggregator.pods) == 1
    board.remove((profile.kind, profile.namespace, profile.name))
    pipeline.feed(raw)
    assert pipeline.unmatched == 2  # kept across matcher rebuilds
    assert next(iter(pipeline.aggregator.pods.values())).events == 1


def test_board_versions_only_move_on_change() -> None:
    board = ProfileBoard()
    profile = make_profile({"processes": {"presets": ["shells"]}})
    board.publish(state_of(profile))
    assert board.version == 1
    board.publish(state_of(profile))  # equal state: no new version
    assert board.version == 1
    board.publish(state_of(profile, hosts={"x": ["1.2.3.4"]}))
    assert board.version == 1  # no hostnames, so the same state
    other = make_profile({"processes": {"presets": ["shells", "network-tools"]}})
    board.publish(state_of(other))
    assert board.version == 2
    version, states = board.snapshot()
    assert version == 2 and [s.profile for s in states] == [other]
    board.remove(("AgentDetectionProfile", "team-a", "nope"))
    assert board.version == 2
    board.remove((other.kind, other.namespace, other.name))
    assert board.snapshot() == (3, [])


def test_pipeline_over_a_sample_stream_respects_caps() -> None:
    profile = make_profile(
        {"network": {"providers": ["openai"]}, "files": {"presets": ["credentials", "ssh-keys"]}},
        name="agents",
        namespace="ns-0",
    )
    board = ProfileBoard()
    board.publish(state_of(profile))
    scenarios = [
        Scenario(
            policy_of(profile, "tcp_connect"),
            "tcp_connect",
            "ns-0",
            (("104.18.6.192", 443), ("1.1.1.1", 443)),
        ),
        Scenario(
            policy_of(profile, "fd_install"),
            "fd_install",
            "ns-0",
            (("/etc/shadow", 0), ("/root/.ssh/id_rsa", 0)),
        ),
    ]
    pipeline = Pipeline(board, Aggregator(max_pods=20, max_rules_per_pod=2))
    pipeline.feed_many(stream(scenarios, pods=100, count=5000))
    agg = pipeline.aggregator
    assert pipeline.stats.lines == pipeline.stats.events == 5000
    assert len(agg.pods) == 20
    assert all(
        set(p.rules) <= {"openai", "credentials", "ssh-keys"} and len(p.rules) <= 2 for p in agg.pods.values()
    )
    stored = sum(p.events for p in agg.pods.values())
    dropped = agg.stats.dropped_over_pod_cap + agg.stats.dropped_over_rule_cap
    assert stored + dropped + pipeline.unmatched == 5000
    assert agg.stats.dropped_over_pod_cap > 0 and pipeline.unmatched > 0


@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_feed_many_in_batches_is_the_same(batch: int) -> None:
    board, lines = small_board()
    whole = Pipeline(board)
    whole.feed_many(lines * 10)
    batched = Pipeline(board)
    items = lines * 10
    for i in itertools.count(0, batch):
        if i >= len(items):
            break
        batched.feed_many(items[i : i + batch])
    assert whole.aggregator.pods == batched.aggregator.pods
    assert whole.stats == batched.stats


# ---- the record: stream positions and restores ------------------------------------------------


def test_lines_a_record_already_counts_are_not_counted_again() -> None:
    from agentdetect.detection.records import detection_object, record_of

    agg = Aggregator()
    for stamp in (10, 20, 20, 30):
        agg.add_at(_ev(), Match(P1, "openai"), "kube-system/tetragon-a", stamp)
    pod = agg.pods[_key()]
    assert pod.rules["openai"].count == 4
    assert (
        pod.streams["kube-system/tetragon-a"].through,
        pod.streams["kube-system/tetragon-a"].at_through,
    ) == (30, 1)

    # The record, read back by a restarted operator that reads the whole stream again.
    key, restored = record_of(detection_object(_key(), pod).dump()) or (None, None)
    assert key == _key() and restored is not None
    again = Aggregator()
    again.restore(key, restored)
    for stamp in (10, 20, 20, 30, 30, 40):  # the same four lines, then two new ones
        again.add_at(_ev(), Match(P1, "openai"), "kube-system/tetragon-a", stamp)
    assert again.pods[_key()].rules["openai"].count == 6
    assert again.stats.already_counted == 4
    # Another stream (a restarted Tetragon pod) is new in full.
    again.add_at(_ev(), Match(P1, "openai"), "kube-system/tetragon-b", 5)
    assert again.pods[_key()].rules["openai"].count == 7


def test_lines_with_the_same_timestamp_are_told_apart_by_how_many_were_counted() -> None:
    from agentdetect.detection.records import detection_object, record_of

    agg = Aggregator()
    for _ in range(3):
        agg.add_at(_ev(), Match(P1, "openai"), "s", 50)
    record = record_of(detection_object(_key(), agg.pods[_key()]).dump())
    assert record is not None
    assert record[1].streams["s"].at_through == 3
    again = Aggregator()
    again.restore(*record)
    for _ in range(5):  # three already counted, then two the crash kept out of the record
        again.add_at(_ev(), Match(P1, "openai"), "s", 50)
    assert again.pods[_key()].rules["openai"].count == 5


def test_a_restored_record_keeps_first_seen_and_examples() -> None:
    from agentdetect.detection.records import detection_object, record_of

    agg = Aggregator()
    agg.add(_ev(time=ts(3), killed=True), Match(P1, "openai"))
    agg.add(_ev(time=ts(9)), Match(P1, "openai"))
    obj = detection_object(_key(), agg.pods[_key()])
    record = record_of(obj.dump())
    assert record is not None
    assert detection_object(*record).dump() == obj.dump()


def test_a_restored_summary_goes_on_from_what_it_says_beyond_its_rules() -> None:
    """A record's events and last seen are its rules' sum and latest, read when asked. A
    summary that says more than its rules (edited, or written by another version) keeps what
    it says beyond them, and its events and last seen go on from there."""
    from agentdetect.detection.records import detection_object, record_of

    agg = Aggregator()
    agg.add(_ev(time=ts(3)), Match(P1, "openai"))
    agg.add(_ev(time=ts(5), target="160.79.104.10"), Match(P1, "anthropic"))
    body = detection_object(_key(), agg.pods[_key()]).dump()
    assert (body["summary"]["events"], body["summary"]["lastSeen"]) == (2, ts(5))
    body["summary"]["events"], body["summary"]["lastSeen"] = 10, ts(7)
    record = record_of(body)
    assert record is not None
    key, pod = record
    assert (pod.events, pod.last) == (10, ts(7)) and pod.events_beyond_rules == 8
    again = Aggregator()
    again.restore(key, pod)
    again.add(_ev(time=ts(6)), Match(P1, "openai"))
    assert (pod.events, pod.last) == (11, ts(7))
    again.add(_ev(time=ts(8), target="160.79.104.10"), Match(P1, "anthropic"))
    again.add(_ev(time=ts(4)), Match(P1, "mistral"))
    assert (pod.events, pod.last) == (13, ts(8))
    assert detection_object(key, pod).summary.events == 13
    # A summary behind its rules reads as its rules' latest.
    body["summary"]["lastSeen"] = ts(1)
    behind = record_of(body)
    assert behind is not None and behind[1].last == ts(5)


def test_a_record_from_before_stream_positions_is_not_counted_again() -> None:
    """An AgentDetection written before records carried positions counts every line its writer
    had read: on the first start after the upgrade, lines up to its last event are passed over."""
    from agentdetect.detection.records import detection_object, record_of

    old = Aggregator()
    for second in (1, 2, 3):
        old.add(_ev(time=ts(second)), Match(P1, "openai"))
    body = detection_object(_key(), old.pods[_key()]).dump()
    body.pop("streams", None)
    record = record_of(body)
    assert record is not None and record[1].legacy
    again = Aggregator()
    again.restore(*record)
    for second in (1, 2, 3, 4):  # the log read again from its start, and one new line
        again.add_at(_ev(time=ts(second)), Match(P1, "openai"), "s", 1_000 + second)
    assert again.pods[_key()].rules["openai"].count == 4


def test_host_process_counts_are_a_record_too() -> None:
    """Matches outside any pod are summed in the profile's status; it carries stream positions
    like an AgentDetection, so a restart (which reads the whole log again) counts none of them
    twice, and the total goes on from the status. (A reconnect's overlap is the source's to drop.)"""
    from agentdetect.detection.records import host_detections, host_record_of

    agg = Aggregator()
    for stamp in (10, 20, 20):
        agg.add_at(
            _ev(pod="", namespace="", time=ts(stamp)), Match(P2, "shells"), "kube-system/tetragon-a", stamp
        )
    assert agg.host[P2].events == 3

    status = host_detections(agg.host[P2])
    assert status is not None
    body = {
        "kind": P2[0],
        "metadata": {"name": P2[2]},
        "status": {"detections": {"hostProcesses": status.dump()}},
    }
    record = host_record_of(body)
    assert record is not None and record[0] == P2
    again = Aggregator()
    again.restore_host(*record)
    for stamp in (10, 20, 20, 30):  # the whole log again after a restart, and one new line
        again.add_at(
            _ev(pod="", namespace="", time=ts(stamp)), Match(P2, "shells"), "kube-system/tetragon-a", stamp
        )
    host = again.host[P2]
    assert (host.events, host.first, host.last) == (4, ts(10), ts(30))
    assert host_detections(host) is not None
    assert host_record_of({"kind": P2[0], "metadata": {"name": "x"}, "status": {}}) is None
