"""Kernelspecs that select the sandbox provisioner: build (pure) and install.

``sandbox-kernel install`` validates every setting through the same code the provisioner
uses (``configured.configure``), so a malformed limit fails before anything is written;
the spec is written to a temporary folder and only then copied into place by
jupyter_client's KernelSpecManager. Installed kernelspecs are
world-readable whatever the umask: on a shared host every user's Jupyter server
reads the one root installed.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any

from .backends.registry import display_name as tier_display_name
from .configured import configure
from .errors import SandboxError

PROVISIONER_NAME = "sandbox-provisioner"
DEFAULT_KERNEL_NAME = "sandbox-python"
DEFAULT_DISPLAY_NAME = "Python 3 (sandboxed)"
KERNEL_ARGV = ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"]


def build_kernelspec(config: Mapping[str, Any], display_name: str | None = None) -> dict[str, Any]:
    """The kernel.json content; ``config`` holds settings (``settings.py``), validated
    here by the same ``configure`` the provisioner runs at each launch, so a malformed
    limit fails before anything is written. The default display name names the backend's
    tier, e.g. "Python 3 (sandboxed, bubblewrap: host kernel)"."""
    backend = configure(config).backend
    return {
        "argv": list(KERNEL_ARGV),
        "display_name": display_name or tier_display_name(backend),
        "language": "python",
        "interrupt_mode": "signal",
        "env": {},
        "metadata": {
            "debugger": False,
            "kernel_provisioner": {"provisioner_name": PROVISIONER_NAME, "config": dict(config)},
        },
    }


def install_kernelspec(
    spec: dict[str, Any],
    name: str = DEFAULT_KERNEL_NAME,
    *,
    user: bool = False,
    prefix: str | None = None,
    replace: bool = False,
) -> tuple[str, bool]:
    """Install ``spec``; return (its folder, whether anything changed).

    Idempotent: an identical installed spec is left as is. A different one is
    replaced only with ``replace``.
    """
    from jupyter_client.kernelspec import KernelSpecManager, _is_valid_kernel_name

    if not _is_valid_kernel_name(name):
        raise SandboxError(f"invalid kernel name {name!r}: use letters, digits, '.', '_' and '-'")
    if user and prefix:
        raise SandboxError("choose one of --user and --prefix/--sys-prefix")
    ksm = KernelSpecManager()
    destination = ksm._get_destination_dir(name.lower(), user=user, prefix=prefix)
    current_file = os.path.join(destination, "kernel.json")
    if os.path.exists(current_file):
        with open(current_file) as f:
            try:
                current = json.load(f)
            except ValueError:
                current = None
        if current == spec:
            return destination, False
        if not replace:
            raise SandboxError(
                f"kernelspec {name!r} already exists at {destination} with other settings; "
                "pass --replace to overwrite it"
            )
    if not user:
        _make_readable_dirs(os.path.dirname(destination))
    with tempfile.TemporaryDirectory(prefix="sandbox-kernelspec-") as tmp:
        with open(os.path.join(tmp, "kernel.json"), "w") as f:
            json.dump(spec, f, indent=2)
            f.write("\n")
        # copytree copies modes: a TemporaryDirectory is 0700, which would hide the
        # kernelspec from every other user ("No such kernel" in their servers).
        os.chmod(tmp, 0o755)
        os.chmod(os.path.join(tmp, "kernel.json"), 0o644)
        path = ksm.install_kernel_spec(tmp, name, user=user, prefix=prefix)
    return str(path), True


def _make_readable_dirs(path: str) -> None:
    """Create ``path`` and its missing parents with mode 0755 whatever the umask (folders
    that already exist are left as they are)."""
    missing: list[str] = []
    while path and not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for folder in reversed(missing):
        os.mkdir(folder)
        os.chmod(folder, 0o755)
