"""Kernelspecs that select the sandbox provisioner: build (pure) and install.

``sandbox-kernel install`` validates every setting through the same code the provisioner
uses (``configured.configure``), so a malformed limit fails before anything is written;
the spec is written to a temporary folder and only then copied into place by
jupyter_client's KernelSpecManager. Installed kernelspecs are
world-readable whatever the umask: on a shared host every user's Jupyter server
reads the one root installed.

Jupyter resolves a kernel name to the first folder of its search path that holds it
(inside a venv the venv's own ``share/jupyter`` comes before the user's). A spec installed
behind another of the same name would never apply, so ``install`` refuses it, naming both
(:func:`shadowed_by`). ``python3`` is the name notebooks and new launchers ask for by
default: installed under that name too (``install --name python3``, as quickstart.sh does),
no notebook opens outside the sandbox (:func:`effective_kernelspecs` lets ``doctor`` say
which spec each name reaches).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from .backends.registry import display_name as tier_display_name
from .configured import configure
from .errors import SandboxError
from .settings import resolve

PROVISIONER_NAME = "sandbox-provisioner"
DEFAULT_KERNEL_NAME = "sandbox-python"
# jupyter_client's NATIVE_KERNEL_NAME: what new notebooks and most notebooks from elsewhere name.
NOTEBOOK_DEFAULT_NAME = "python3"
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
    earlier = shadowed_by(name, destination, ksm.kernel_dirs)
    if earlier is not None:
        raise SandboxError(
            f"kernelspec {name!r} would be installed in {destination}, but Jupyter finds "
            f"{earlier} first (search order: {', '.join(ksm.kernel_dirs)}), so these settings "
            f"would never apply. Install it where it takes effect (the folder of {earlier}: "
            "e.g. --sys-prefix --replace inside a venv), remove the other one, or pick "
            "another --name"
        )
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
        make_readable_dirs(os.path.dirname(destination))
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


def make_readable_dirs(path: str) -> None:
    """Create ``path`` and its missing parents with mode 0755 whatever the umask (folders
    that already exist are left as they are)."""
    missing: list[str] = []
    while path and not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for folder in reversed(missing):
        os.mkdir(folder)
        os.chmod(folder, 0o755)


def shadowed_by(name: str, destination: str, kernel_dirs: Sequence[str]) -> str | None:
    """The kernelspec folder Jupyter would find for ``name`` before ``destination``
    (a ``<kernels dir>/<name>`` path), searching ``kernel_dirs`` in order as
    KernelSpecManager does (names compare lower-cased); None when ``destination`` is the
    one found. A ``destination`` outside the search path is not judged here: it may be
    meant for another environment (``--prefix``)."""
    target = os.path.realpath(os.path.dirname(destination))
    searched = [os.path.realpath(d) for d in kernel_dirs]
    if target not in searched:
        return None
    for kernel_dir in kernel_dirs[: searched.index(target)]:
        found = _spec_dir_in(kernel_dir, name)
        if found is not None:
            return found
    return None


def _spec_dir_in(kernel_dir: str, name: str) -> str | None:
    try:
        entries = os.listdir(kernel_dir)
    except OSError:
        return None
    for entry in entries:
        path = os.path.join(kernel_dir, entry)
        if entry.lower() == name.lower() and os.path.isfile(os.path.join(path, "kernel.json")):
            return path
    return None


def effective_kernelspecs(
    names: Sequence[str] | None = None,
) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """name -> (the folder Jupyter resolves it to, or "" if none; the sandbox settings of
    that spec, or None when it does not use the sandbox provisioner): what ``doctor``
    and ``ps`` report. ``names`` None: every kernelspec Jupyter finds here. ``python3``
    with no spec file falls back to ipykernel's own (unsandboxed)."""
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    found: dict[str, tuple[str, dict[str, Any] | None]] = {}
    for name in sorted(specs) if names is None else names:
        folder = specs.get(name.lower(), "")
        found[name] = (folder, _sandbox_config(folder) if folder else None)
    return found


def _sandbox_config(folder: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(folder, "kernel.json")) as f:
            spec = json.load(f)
    except (OSError, ValueError):
        return None
    provisioner = (spec.get("metadata") or {}).get("kernel_provisioner") or {}
    if provisioner.get("provisioner_name") != PROVISIONER_NAME:
        return None
    config = provisioner.get("config")
    return dict(config) if isinstance(config, dict) else {}


# The limits ``ps`` shows per kernelspec, in this order, with their column headings.
LIMIT_COLUMNS = (
    ("backend", "BACKEND"),
    ("memory_limit", "MEMORY"),
    ("cpu_limit", "CPUS"),
    ("pids_limit", "PIDS"),
    ("nproc_limit", "NPROC"),
    ("tmp_size", "TMP"),
    ("home_size", "HOME"),
)


def effective_limits(config: Mapping[str, Any]) -> dict[str, str]:
    """A sandboxed kernelspec's ``config`` with the defaults of what it leaves out, as the
    LIMIT_COLUMNS ``ps`` prints (pure; Jupyter config files may still override a default)."""
    resolved = resolve(config)
    return {
        name: "-" if resolved[name] is None else f"{resolved[name]:g}"
        if isinstance(resolved[name], float) else str(resolved[name])
        for name, _ in LIMIT_COLUMNS
    }  # fmt: skip


def beyond_host(memory_bytes: int, cpus: float, host_memory: int, host_cpus: int) -> list[str]:
    """Limits larger than the host itself, which bound nothing (pure): ``install`` warns."""
    warnings = []
    if host_memory and memory_bytes > host_memory:
        warnings.append(
            f"memory_limit {memory_bytes / 2**30:.1f} GiB is more than this host's "
            f"{host_memory / 2**30:.1f} GiB: it bounds nothing here"
        )
    if host_cpus and cpus > host_cpus:
        warnings.append(f"cpu_limit {cpus:g} is more than this host's {host_cpus} CPUs")
    return warnings
