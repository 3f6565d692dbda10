"""YAML for people and for Go: what ``agentdetect render`` prints and the demo pipes to kubectl.

PyYAML writes YAML 1.1 as Python reads it, but kubectl, ArgoCD and Tetragon read YAML with Go
(sigs.k8s.io/yaml over gopkg.in/yaml), which resolves more plain words than PyYAML does
(``y``, ``n``, ``Y``, ``N`` are booleans there), refuses raw control characters, and refuses
\\u escapes of UTF-16 surrogates. So any string that is not plainly a word, a name or a path
is written double-quoted, with every character outside printable ASCII escaped as YAML's
\\x, \\u or \\U escapes (never surrogate pairs).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import yaml

#: Plain scalars no YAML 1.1 reader can take for anything but this string.
_PLAIN = re.compile(r"^[A-Za-z/][A-Za-z0-9_./-]*$")
#: YAML 1.1 booleans and nulls in any case (yaml.v2's resolve table has y, n, yes, no, on,
#: off, true, false and null words).
_WORDS = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null"})


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    plain = _PLAIN.match(value) is not None and value.lower() not in _WORDS
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=None if plain else '"')


_Dumper.add_representer(str, _represent_str)


def dump_all(docs: Iterable[Any]) -> str:
    """Documents separated by ``---``, keys in the order given, no line folding."""
    return yaml.dump_all(
        list(docs), Dumper=_Dumper, sort_keys=False, allow_unicode=False, width=1_000_000_000
    )
