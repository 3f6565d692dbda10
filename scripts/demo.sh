#!/usr/bin/env bash
# agentdetect end to end on this machine, no cluster: Python dependencies into .venv, the
# Kubernetes binaries built once into ~/.cache/agentdetect (or taken from KUBEBUILDER_ASSETS),
# then `agentdetect demo` (embedded control plane, operator, example profiles, sample events).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${AGENTDETECT_VENV:-.venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -e ".[local]"
exec "$venv/bin/agentdetect" demo "$@"
