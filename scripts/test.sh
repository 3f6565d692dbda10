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
"$venv/bin/agentdetect" binaries --kwok --helm --prometheus >/dev/null

# Tetragon as the judge: its real CRDs (v1.7.0 for the API server, both supported releases
# for the schema dry runs) and tpjudge, its own policy checks, when ../shared has them.
shared=../shared
if [ -d "$shared/tetragon" ]; then
  export TETRAGON_CRDS_ROOT=${TETRAGON_CRDS_ROOT:-$(cd "$shared/tetragon" && pwd)}
  export TETRAGON_CRDS_DIR=${TETRAGON_CRDS_DIR:-$TETRAGON_CRDS_ROOT/v1.7.0/crds}
fi
if [ -x "$shared/tools/tetragon-judge/tpjudge" ]; then
  export TETRAGON_JUDGE=${TETRAGON_JUDGE:-$(cd "$shared/tools/tetragon-judge" && pwd)/tpjudge}
fi

"$venv/bin/ruff" check operator tests bench
"$venv/bin/ruff" format --check operator tests bench
"$venv/bin/mypy"
# Imports run one way between the packages (pyproject: [tool.importlinter]).
"$venv/bin/lint-imports"
exec "$venv/bin/pytest" "$@"
