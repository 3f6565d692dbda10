"""Tetragon's own code on every policy this test run rendered (tests/tetragon_judge.py)."""

from __future__ import annotations

import pytest

from tests import tetragon_judge
from tests.conftest import RENDERED


@pytest.mark.judge_last
def test_tetragon_accepts_every_policy_the_suite_rendered() -> None:
    if tetragon_judge.binary() is None:
        pytest.skip(f"{tetragon_judge.ENV} does not name a tpjudge binary (scripts/test.sh sets it)")
    if not RENDERED.docs:
        pytest.skip("no test in this run rendered a policy")
    summary, refused = RENDERED.judge()
    assert not refused, summary + "\n" + "\n".join(refused[:50])
