"""The conditions a profile reports and the reasons each can give: typed, in one place, so a
reason is never a string literal typed twice (README: Status)."""

from __future__ import annotations

from enum import StrEnum


class ConditionType(StrEnum):
    #: The rendered policies are in place.
    READY = "Ready"
    #: agentdetect's policies fit the share of Tetragon's policy filter it may use.
    POLICY_FILTER_BUDGET = "PolicyFilterBudget"
    #: Tetragon's events are read at all (detection on).
    DETECTING = "Detecting"


class Reason(StrEnum):
    # Ready
    APPLIED = "Applied"
    INVALID_SPEC = "InvalidSpec"
    ENFORCEMENT_NOT_ALLOWED = "EnforcementNotAllowed"
    TETRAGON_NOT_INSTALLED = "TetragonNotInstalled"
    RESOLUTION_FAILED = "ResolutionFailed"
    APPLY_FAILED = "ApplyFailed"
    RENDER_FAILED = "RenderFailed"
    #: Not a condition: what a reconcile of a profile already deleted returns.
    DELETED = "Deleted"
    #: Not a condition: what a reconcile from a LIST returns when this replica stood by since.
    STOOD_BY = "StoodBy"
    # PolicyFilterBudget
    WITHIN_BUDGET = "WithinBudget"
    BUDGET_EXCEEDED = "BudgetExceeded"
    # Detecting
    FOLLOWING = "Following"
    NO_TETRAGON_PODS = "NoTetragonPods"
    # Events only
    RECONCILE_ERROR = "ReconcileError"
    #: A policy of the profile's was changed or deleted by someone else and put back.
    POLICY_RESTORED = "PolicyRestored"
