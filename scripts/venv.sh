#!/usr/bin/env bash
# The Python environment: .venv with sandbox-kernel (editable) and its test extras.
# All the fast test tier needs (ruff, mypy, the unit tests: no Docker, no image), so
# .ci/run runs it first; quickstart.sh runs it as one of its steps.
# Idempotent. As root it installs Debian's python3-venv where `python3 -m venv` lacks it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  if ! python3 -m venv .venv 2>/dev/null; then
    rm -rf .venv
    [ "$(id -u)" = 0 ] || { echo "python3 -m venv failed: apt-get install python3-venv (as root)" >&2; exit 1; }
    apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv .venv
  fi
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -m pip install -q -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import sandbox_kernel, jupyter_client, docker" # fail here if the install did
