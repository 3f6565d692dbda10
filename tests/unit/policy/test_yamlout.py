"""What ``agentdetect render`` prints is read back as written by Go's YAML readers (kubectl,
ArgoCD, Tetragon's tetra): no string turns into a boolean, a number or a refusal."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentdetect.app import cli
from agentdetect.policy import yamlout
from tests import tetragon_judge

#: Strings a YAML 1.1 reader may take for something else, and characters Go's reader refuses
#: raw or as surrogate escapes.
TRICKY = [
    "y", "Y", "n", "N", "yes", "No", "on", "OFF", "true", "False", "null", "~", "", " ",
    "0123", "1e3", "0x1F", "1_000", "1:20", ".inf", "-.Inf", ".NaN", "2026-01-01", "<<", "=",
    "-", "- x", "? x", ": x", "#x", "x #y", "&a", "*a", "!t", "|", ">", "%x", "@x", "`x", "'", '"',
    "a: b", "[a]", "{a}", "x\ny", "x\ty", "x\u2028y", "\u0085", "\ufeff", "\U0001f511", "\u00e9",
    "/etc/shadow", "app.kubernetes.io/name", "Post",
]  # fmt: skip


class _Yaml11(yaml.SafeLoader):
    """PyYAML's YAML 1.1, plus the booleans Go's yaml.v2 also resolves (y, Y, n, N)."""


_Yaml11.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN"))


@pytest.mark.parametrize("value", TRICKY, ids=[ascii(v) for v in TRICKY])
def test_strings_read_back_as_written(value: str) -> None:
    text = yamlout.dump_all([{value: [value, {"k": value}]}])
    assert yaml.load(text, Loader=_Yaml11) == {value: [value, {"k": value}]}
    assert all(ord(c) < 128 for c in text), "non-ASCII is escaped"
    assert not re.search(r"\\u[dD][89a-fA-F]", text), "no surrogate escapes (Go refuses them)"


def test_plain_words_stay_plain() -> None:
    assert yamlout.dump_all([{"operator": "Postfix", "path": "/etc/shadow"}]) == (
        "operator: Postfix\npath: /etc/shadow\n"
    )


def _tricky_profile() -> dict[str, Any]:
    return {
        "apiVersion": "agentdetect.io/v1alpha1",
        "kind": "AgentDetectionProfile",
        "metadata": {"name": "tricky", "namespace": "y"},
        "spec": {
            "selector": {"matchLabels": {"Y": "on", "n": "0123", "app": "1e3"}},
            "files": {"paths": [{"postfix": "/Y"}, {"equal": "/x\u2028y\U0001f511"}, {"prefix": "/1:20/"}]},
        },
    }


def test_rendered_yaml_is_what_tetragon_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """tpjudge reads YAML with Tetragon's own Go code: its verdict covers the parsing too."""
    path = tmp_path / "tricky.yaml"
    path.write_text(yaml.safe_dump(_tricky_profile()))
    assert cli.main(["render", "-f", str(path)]) == 0
    out = capsys.readouterr().out
    (doc,) = [d for d in yaml.load_all(out, Loader=_Yaml11) if d]
    assert doc["spec"]["podSelector"]["matchLabels"] == {"Y": "on", "n": "0123", "app": "1e3"}
    exe = tetragon_judge.binary()
    if exe is None:
        pytest.skip(f"{tetragon_judge.ENV} is not set: parsed with PyYAML only")
    proc = subprocess.run(
        [str(exe), "-no-sensor", "-"], input=out, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and '"ok":true' in proc.stdout, proc.stdout + proc.stderr
