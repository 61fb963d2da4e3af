#!/usr/bin/env bash
# A Python environment that every user of this host can run (as root): the system's
# /usr/bin/python3 (a venv of a Python under /root would not run for other users), with
# sandbox-kernel, Jupyter Server, JupyterLab (and its kernel usage panel, jupyter-resource-usage)
# and JupyterHub, world-readable.
# Used by shared-host deployments (docs/jupyterhub.md) and by the tests that run Jupyter
# as ordinary users (rootless runsc, the real JupyterHub).
#   scripts/shared-venv.sh [VENV]   default /opt/sandbox-kernel/venv
# Idempotent; re-run after changing the checkout to reinstall the package (no deps, fast).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-/opt/sandbox-kernel/venv}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
if [ ! -x "$venv/bin/python" ]; then
  if ! /usr/bin/python3 -m venv "$venv" 2>/dev/null; then
    rm -rf "$venv"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    /usr/bin/python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
fi
# The checkout's own requirements plus the servers; then the package itself, not editable
# (other users must not need to read this checkout).
"$venv/bin/python" -m pip install -q '.[server]' 'jupyterhub>=4' 'jupyterlab>=4.2,<5' \
  'jupyter-resource-usage>=1.0' 'ipykernel>=6.20' \
  2>&1 | grep -v '^WARNING: Location' || true
"$venv/bin/python" -m pip install -q --no-deps --force-reinstall . 2>&1 | grep -v '^WARNING: Location' || true
chmod -R a+rX "$(dirname "$venv")"
"$venv/bin/python" -c "import sandbox_kernel, jupyter_server, jupyterhub" # fail here if the install did
echo "$venv"
