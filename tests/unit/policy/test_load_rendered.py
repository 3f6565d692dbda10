"""load_rendered is yaml.safe_load, faster: the same answer on every shape YAML allows."""

from __future__ import annotations

import pytest
import yaml

from agentdetect.policy.render import load_rendered

CASES = [
    "",
    "a: 1",
    'kind: "TracingPolicy"\nspec: {"x": [1, 2.5, true, null, "s"]}\n',
    "list:\n- a\n- 0x1f\n- 1e3\n- yes\n- ~\n- '007'\n",
    "base: &b {x: 1}\nderived:\n  <<: *b\n  y: 2\n",  # merge key: the slow path
    "1: int key\ntrue: bool key\n",
    "s: !!set {a, b}\no: !!omap [{a: 1}, {b: 2}]\n",
    "dup: 1\ndup: 2\n",
    "anchor: &x [1, 2]\nalias: *x\n",
    "date: 2026-11-24\nstamp: 2026-11-24T01:02:03Z\n",
    "multi: |\n  line one\n  line two\nfolded: >\n  a\n  b\n",
    'unicode: "caf\\u00e9 \\U0001F600"\n',
]


@pytest.mark.parametrize("text", CASES)
def test_same_as_safe_load(text: str) -> None:
    assert load_rendered(text) == yaml.safe_load(text)


def test_errors_are_yaml_errors() -> None:
    for bad in ("a: [1, 2", "a: b: c", "--- 1\n--- 2\n"):
        with pytest.raises(yaml.YAMLError):
            load_rendered(bad)
