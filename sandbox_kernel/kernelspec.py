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

That file can be replaced behind our back: ipykernel's wheel carries its own
``share/jupyter/kernels/python3/kernel.json``, so ``pip install -U ipykernel`` (or an
upgrade of anything that pulls it in) rewrites the environment's ``python3`` with a spec
that names no provisioner. So installing ``python3`` into an environment also makes the
sandbox the provisioner of every kernelspec there that names none: a ``.pth`` file in the
environment's site-packages sets jupyter_client's ``JUPYTER_DEFAULT_PROVISIONER_NAME``
(unless it is already set) in each of its Python processes, whichever tool starts the
kernel (:func:`install_sandbox_default`). A kernel meant for the host names
``local-provisioner`` itself (:func:`host_kernelspec`).
"""

from __future__ import annotations

import json
import os
import sys
import sysconfig
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
# jupyter_client reads this variable (KernelProvisionerFactory.default_provisioner_name_env)
# for kernelspecs that name no provisioner; its own default is LOCAL_PROVISIONER.
DEFAULT_PROVISIONER_ENV = "JUPYTER_DEFAULT_PROVISIONER_NAME"
LOCAL_PROVISIONER = "local-provisioner"
DEFAULT_PTH = "sandbox_kernel_default.pth"


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


def host_kernelspec(display_name: str, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """A kernelspec that runs ``argv`` (default: this interpreter's ipykernel) on the host,
    unsandboxed, naming jupyter_client's local provisioner itself (where the sandbox is
    the default, a spec naming none runs in the sandbox)."""
    return {
        "argv": list(argv) if argv is not None else [sys.executable, *KERNEL_ARGV[1:]],
        "display_name": display_name,
        "language": "python",
        "metadata": {"kernel_provisioner": {"provisioner_name": LOCAL_PROVISIONER}},
    }


def names_provisioner(spec_metadata: Mapping[str, Any] | None) -> bool:
    """Whether a kernelspec's metadata names its provisioner (as jupyter_client decides
    whether the default provisioner applies)."""
    return "provisioner_name" in ((spec_metadata or {}).get("kernel_provisioner") or {})


def sandboxed_by_default(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether a kernelspec that names no provisioner runs in the sandbox here."""
    return environ.get(DEFAULT_PROVISIONER_ENV) == PROVISIONER_NAME


def default_pth_text() -> str:
    """The ``.pth`` line (run by Python's ``site`` at every start of the environment's
    interpreter): the sandbox as the default provisioner, unless the variable is set."""
    return f"import os; os.environ.setdefault({DEFAULT_PROVISIONER_ENV!r}, {PROVISIONER_NAME!r})\n"


def host_spec_argv(argv: Sequence[str], name: str) -> list[str]:
    """The command a kernelspec that names no provisioner (written for the host, e.g. by
    ipykernel's wheel or ``ipykernel install``) runs in the sandbox where the sandbox is
    the default (pure): an ipykernel command runs with the image's ``python3`` (the host's
    interpreter path means nothing inside); any other kernel is refused, naming the way
    to run it on the host."""
    if len(argv) >= 3 and list(argv[1:3]) == ["-m", "ipykernel_launcher"]:
        return [KERNEL_ARGV[0], *argv[1:]]
    program = argv[0] if argv else ""
    raise SandboxError(
        f"kernelspec {name!r} names no provisioner, and here the sandbox is the default "
        f"({DEFAULT_PROVISIONER_ENV}={PROVISIONER_NAME}, set by {DEFAULT_PTH}); the "
        f"sandbox's image runs Python kernels (ipykernel), not {program!r}. "
        "To run this kernel on the host, unsandboxed, name the provisioner in its kernel.json: "
        f'"metadata": {{"kernel_provisioner": {{"provisioner_name": "{LOCAL_PROVISIONER}"}}}}'
    )


def install_sandbox_default(prefix: str) -> tuple[str, bool]:
    """Write :data:`DEFAULT_PTH` into the site-packages of the environment at ``prefix``;
    return (its path, whether anything changed)."""
    site = sysconfig.get_paths(vars={"base": prefix, "platbase": prefix})["purelib"]
    path = os.path.join(site, DEFAULT_PTH)
    text = default_pth_text()
    try:
        with open(path) as f:
            if f.read() == text:
                return path, False
    except OSError:
        pass
    make_readable_dirs(site)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)  # never a half-written file that site would run
    return path, True


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
    with no spec file falls back to ipykernel's own (sandboxed only where the sandbox is
    the default provisioner, like every spec that names none)."""
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
    if not names_provisioner(spec.get("metadata")) and sandboxed_by_default():
        return {}  # jupyter_client hands it to the sandbox, with the default settings
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
