"""Imports run one way between the packages (pyproject: [tool.importlinter], run by the test
command as `lint-imports`, and here), and the CLI reaches the local tooling only inside the
commands that need it: `agentdetect run` imports none of it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_import_contracts_hold() -> None:
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports")], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 kept, 0 broken" in proc.stdout, proc.stdout


def test_the_cli_and_the_operator_import_nothing_local() -> None:
    code = (
        "import sys, agentdetect.app.cli, agentdetect.app.runner; "
        "print(sorted(m for m in sys.modules if m.startswith(('agentdetect.local', 'cryptography'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
