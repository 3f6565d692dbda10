#!/usr/bin/env bash
# The whole test suite from a fresh clone: Python dependencies into .venv, the Kubernetes
# binaries built once into ~/.cache/agentdetect (or taken from KUBEBUILDER_ASSETS), then
# lint, types and every test. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${AGENTDETECT_VENV:-.venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -e '.[dev]'

# Build (minutes, once) or reuse the control-plane binaries and kwok (a fake kubelet serving
# pod logs) before the clock of any test starts.
"$venv/bin/agentdetect" binaries --kwok --helm >/dev/null

"$venv/bin/ruff" check operator tests bench
"$venv/bin/ruff" format --check operator tests bench
"$venv/bin/mypy"
exec "$venv/bin/pytest" "$@"
