#!/usr/bin/env bash
# Set up this Debian/Ubuntu host (as root) and run a sandboxed kernel doing real work:
# Docker + gVisor, a Python venv with sandbox-kernel, the kernel image (built without a
# registry), the "Python 3 (sandboxed)" kernelspec, then notebooks/demo.ipynb executed in it.
# Also Debian's chromium, which the browser tests drive, configurable-http-proxy for the
# JupyterHub test, and /opt/sandbox-kernel/venv, the venv ordinary users' servers run from.
# Idempotent: a second run only re-checks and re-runs the notebook.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\n==> %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { echo "run as root (apt-get, dockerd, debootstrap need it)" >&2; exit 1; }

say "host: Docker engine + gVisor (runsc)"
bash sandbox_kernel/host/setup_host.sh

say "test browser: Debian's chromium (driven by Playwright; no browser download)"
# Only the browser test needs it: where the package is missing (Ubuntu ships chromium as a
# snap) setup goes on, and that test fails saying what to install.
if ! command -v chromium >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null \
    || echo "WARNING: could not install chromium: tests/integration/test_browser.py will fail" >&2
fi

say "JupyterHub's proxy: configurable-http-proxy from the npm registry (the hub test runs a real hub)"
# Node.js as the host has it, else Debian's nodejs + npm; the proxy's 5.x needs Node >= 20.
if ! command -v configurable-http-proxy >/dev/null; then
  if ! command -v npm >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  fi
  node_major=$(node -p 'process.versions.node.split(".")[0]')
  chp=configurable-http-proxy@4; [ "$node_major" -ge 20 ] && chp=configurable-http-proxy@5
  npm install -g --no-fund --no-audit --loglevel=error "$chp" >/dev/null
fi
configurable-http-proxy --version >/dev/null  # fail here if the install did

say "Python environment: .venv"
bash scripts/venv.sh

say "the sandbox-kernel command on PATH: /usr/local/bin/sandbox-kernel -> $PWD/.venv/bin/sandbox-kernel"
# A link, not a copy: the command runs from .venv (where jupyter and the kernelspecs are);
# `jupyter` and the rest stay in .venv (`. .venv/bin/activate`, README "Using it").
ln -sfn "$PWD/.venv/bin/sandbox-kernel" /usr/local/bin/sandbox-kernel

say "a venv every user can run: /opt/sandbox-kernel/venv (users' Jupyter servers, rootless runsc)"
bash scripts/shared-venv.sh >/dev/null

say "kernel image (no registry needed)"
.venv/bin/sandbox-kernel image build

say "kernel root filesystem for the bwrap/firejail backends (docs/backends.md)"
.venv/bin/sandbox-kernel image export-rootfs

say "kernelspecs: sandbox-python, and python3 (what notebooks ask for) sandboxed too"
.venv/bin/sandbox-kernel install --sys-prefix --replace
# A notebook from elsewhere names python3: here that is the sandboxed kernel as well, in
# JupyterLab, nbconvert, papermill and nbclient alike (they all resolve kernelspecs by name).
.venv/bin/sandbox-kernel install --sys-prefix --replace --name python3 --display-name "Python 3 (sandboxed, default)"
# The same for the venv ordinary users run Jupyter from: their tier is rootless runsc.
/opt/sandbox-kernel/venv/bin/sandbox-kernel install --sys-prefix --replace --name python3 \
  --backend runsc --display-name "Python 3 (sandboxed, default)" >/dev/null
.venv/bin/jupyter kernelspec list

say "a sandboxed kernel doing real work: notebooks/demo.ipynb"
mkdir -p test-artifacts
.venv/bin/sandbox-kernel run notebooks/demo.ipynb --output test-artifacts/demo.out.ipynb
