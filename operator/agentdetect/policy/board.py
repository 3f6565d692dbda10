"""What each profile rendered, shared by the two flows: the reconciler publishes it, the
detection pipeline matches events against it. Pure data and a lock; no I/O."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

from agentdetect.policy.render import Profile, Target
from agentdetect.policy.resolve import Resolution

#: (kind, namespace, name) of a profile.
ProfileKey = tuple[str, str | None, str]


@dataclass(frozen=True)
class ProfileState:
    """What the matcher needs of one profile: its spec, where it rendered to, what it resolved."""

    profile: Profile
    targets: tuple[Target, ...]
    resolved: Mapping[str, Resolution]


class ProfileBoard:
    """Thread-safe: the reconciler writes, the pipeline reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[ProfileKey, ProfileState] = {}
        self.version = 0

    def publish(self, state: ProfileState) -> None:
        p = state.profile
        key = (p.kind, p.namespace, p.name)
        with self._lock:
            if self._states.get(key) != state:
                self._states[key] = state
                self.version += 1

    def remove(self, key: ProfileKey) -> None:
        with self._lock:
            if self._states.pop(key, None) is not None:
                self.version += 1

    def has(self, key: ProfileKey) -> bool:
        with self._lock:
            return key in self._states

    def keys(self) -> set[ProfileKey]:
        with self._lock:
            return set(self._states)

    def snapshot(self) -> tuple[int, list[ProfileState]]:
        with self._lock:
            return self.version, list(self._states.values())
