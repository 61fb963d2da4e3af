"""Every setting of a sandboxed kernel, declared once (pure).

A :class:`Setting` is the one place that says a setting's name, type, default, bounds,
help, ``sandbox-kernel install`` flag and the backends it applies to, and :func:`check`
the one check of a value's type, choices and bounds (sizes parsed into bytes) that
policy, exchange, configuration and the backends use. From this table come the
provisioner's traitlets (``SandboxProvisioner``: settable in a kernelspec's
``metadata.kernel_provisioner.config`` or a Jupyter config file), the ``install`` flags
(``cli/flags.py``), and the defaults of the one function that validates them all,
``configured.configure`` (used by the provisioner at each launch and by ``install``
before anything is written). A backend-only setting names its backends here; the
registry gives each backend exactly those.

Who calls what: ``provisioner.py`` builds one trait per setting with :func:`trait`;
the CLI (``cli/flags.py``) makes one ``install`` flag per setting from :data:`SETTINGS`;
:func:`resolve` fills a kernelspec's config with the defaults.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import PolicyError


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    # "str", "bool", "int", "float", "size" (bytes or "512m"), "enum", "list", "dict",
    # "ports" (a list of ints or "HOST:INSIDE" strings), "int?" (int or None), "backend"
    # (a name of the backend registry)
    kind: str
    flag: str | None = None  # the install flag; None: --name-with-dashes
    choices: tuple[str, ...] = ()
    backends: tuple[str, ...] = ()  # the backends that read it; empty: every backend
    metavar: str | None = None
    # "int", "int?", "float" and "size" (in bytes): the inclusive range (below it a kernel
    # cannot work, above it a typo is likely), and what a refusal adds, e.g. what 0 means
    bounds: tuple[float, float] | None = None
    hint: str = ""
    # Who reads it: "sandbox" (which sandbox: the registry and the backends), "policy"
    # (policy.build_policy), "exchange" (exchange.policy.build_exchange_policy), "pool",
    # "host" (what the Jupyter process holds for a kernel: configure)
    group: str = ""

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


S = Setting
_PIPE = ("runsc", "bwrap", "firejail")  # the backends that run a sandbox tool themselves

SETTINGS: tuple[Setting, ...] = (
    # -- which sandbox ---------------------------------------------------------------------
    S(
        "backend",
        "docker",
        "isolation backend: docker (gVisor, the default); runsc (gVisor without Docker, as "
        "root or rootless); kubernetes (one gVisor pod per kernel on a cluster: "
        "docs/kubernetes.md); the weaker tiers docker-runc, bwrap and firejail share the "
        "host's kernel with the sandbox (docs/backends.md)",
        "backend",  # one of backends/registry.py's names (checked there)
        group="sandbox",
    ),
    S(
        "image",
        "sandbox-kernel/python:latest",
        "kernel image with python3 and ipykernel",
        "str",
        group="policy",
    ),
    S(
        "runtime",
        "runsc-current",
        "which gVisor: runsc-current (the current gVisor setup-host builds), runsc (Debian's "
        "2024 release, more gaps: docs/security.md); the docker backend takes any Docker "
        "runtime with allow_weaker_runtime",
        "str",
        backends=("docker", "runsc"),
        group="sandbox",
    ),
    S(
        "allow_weaker_runtime",
        False,
        "DANGEROUS: run without gVisor (runc) when Docker has no runsc or another runtime is "
        "set: the host kernel's whole syscall surface is then exposed to untrusted code",
        "bool",
        backends=("docker",),
        group="sandbox",
    ),
    S(
        "namespace",
        "",
        "the Kubernetes namespace of the kernel pods (a DNS label); empty: the kubeconfig "
        "context's namespace, or in a pod the server's own, else 'default'",
        "str",
        backends=("kubernetes",),
        group="sandbox",
    ),
    S(
        "runtime_class",
        "gvisor",
        "the RuntimeClass of the kernel pods: one whose handler runs gVisor with no network "
        "and oci-seccomp (GKE Sandbox's and the dev cluster's: gvisor)",
        "str",
        backends=("kubernetes",),
        group="sandbox",
    ),
    S(
        "image_pull_policy",
        "IfNotPresent",
        "the kernel pods' imagePullPolicy (Never: the image must already be on the node, as "
        "on the dev cluster)",
        "enum",
        choices=("IfNotPresent", "Always", "Never"),
        backends=("kubernetes",),
        group="sandbox",
    ),
    S(
        "rootfs",
        "",
        "the kernel root filesystem directory (default: the export of `image` by "
        "`sandbox-kernel image export-rootfs`)",
        "str",
        backends=_PIPE,
        group="sandbox",
    ),
    S(
        "platform",
        "systrap",
        "how gVisor intercepts the kernel's system calls: systrap (fastest per call; an idle "
        "sandbox costs ~2 % of a core on Debian's runsc, ~0.02 % on runsc-current) or ptrace "
        "(slower per call, ~0.3 % of a core idle on Debian's runsc); docs/backends.md",
        "enum",
        choices=("systrap", "ptrace"),
        backends=("runsc",),
        group="sandbox",
    ),
    S(
        "accept_unenforced",
        [],
        "DANGEROUS: policy properties the backend may leave unenforced on this host (e.g. "
        "memory_limit); anything else it cannot enforce refuses the launch",
        "list",
        backends=(*_PIPE, "kubernetes"),
        metavar="PROPERTY",
        group="sandbox",
    ),
    # -- limits ------------------------------------------------------------------------------
    S(
        "memory_limit",
        "2g",
        "memory cap, e.g. 2g",
        "size",
        flag="--memory",
        bounds=(128 * 2**20, 2**40),
        hint="e.g. '2g'",
        group="policy",
    ),
    S(
        "cpu_limit",
        1.0,
        "CPUs the kernel may use, e.g. 1 or 0.5",
        "float",
        flag="--cpus",
        bounds=(0.01, 256),
        hint="e.g. 1 or 0.5",
        group="policy",
    ),
    S(
        "nproc_limit",
        None,
        "RLIMIT_NPROC (processes + threads) inside the sandbox, so a fork bomb gets EAGAIN "
        "(default: memory_limit / 32 MiB, 64 for 2g, which fits forks of a kernel in memory)",
        "int?",
        flag="--nproc",
        bounds=(16, 65536),
        group="policy",
    ),
    S(
        "pids_limit",
        4096,
        "host pids cgroup: the backstop behind nproc_limit",
        "int",
        "--pids",
        bounds=(16, 4 * 65536),
        group="policy",
    ),
    S(
        "nofile_limit",
        4096,
        "RLIMIT_NOFILE (open files) inside the sandbox",
        "int",
        "--nofile",
        bounds=(64, 1048576),
        group="policy",
    ),
    S(
        "tmp_size",
        "256m",
        "size cap of /tmp (tmpfs)",
        "size",
        bounds=(2**20, 2**40),
        group="policy",
    ),
    S(
        "home_size",
        "512m",
        "size cap of the home folder (tmpfs)",
        "size",
        bounds=(2**20, 2**40),
        group="policy",
    ),
    S(
        "launch_timeout",
        60.0,
        "seconds from creating a sandbox to a running kernel",
        "float",
        bounds=(1, 3600),
        group="policy",
    ),
    # -- environment -------------------------------------------------------------------------
    S(
        "env_allow",
        ["TZ"],
        "server environment variables passed into the sandbox (never JPY_*, JUPYTERHUB_*, "
        "DOCKER_* or names like a token, secret or password)",
        "list",
        metavar="NAME",
        group="policy",
    ),
    S("env", {}, "fixed environment variables for the kernel (NAME=VALUE)", "dict", group="policy"),
    # -- pool ----------------------------------------------------------------------------------
    S(
        "pool_size",
        1,
        "sandboxes kept started ahead (kernel initialised, waiting for its key) for this "
        "kernelspec; a launch or restart claims one and never reuses it; 0 disables the pool",
        "int",
        bounds=(0, 64),
        hint="0 disables the pool",
        group="pool",
    ),
    S(
        "pool_snapshots",
        True,
        "fill the warm pool by restoring copies of one checkpointed pre-initialised sandbox "
        "instead of starting each afresh (root only: rootless runsc cannot restore; off there "
        "with a note); a restore that fails falls back to a fresh sandbox",
        "bool",
        backends=("runsc",),
        group="pool",
    ),
    S(
        "pool_snapshot_restores",
        64,
        "restores of one snapshot before the pool checkpoints a new one (copies of one snapshot "
        "share its hash seed and address-space layout; docs/security.md)",
        "int",
        backends=("runsc",),
        bounds=(1, 10**6),
        group="pool",
    ),
    S(
        "pool_snapshot_age",
        3600.0,
        "seconds a snapshot is restored from before the pool checkpoints a new one",
        "float",
        backends=("runsc",),
        bounds=(1, 365 * 86400),
        group="pool",
    ),
    # -- deliberate exchanges (docs/exchange.md) ------------------------------------------------
    S(
        "expose_ports",
        [],
        "sandbox ports reachable from the host's 127.0.0.1 (only) through the relay: INSIDE "
        "(any free host port) or HOST:INSIDE; connections go host -> sandbox only",
        "ports",
        flag="--expose",
        metavar="[HOST:]PORT",
        group="exchange",
    ),
    S(
        "max_runtime_ports",
        4,
        "ports the kernel may expose itself at run time (sandboxed.expose); 0 disables",
        "int",
        bounds=(0, 64),
        hint="0: the kernel may not expose ports itself",
        group="exchange",
    ),
    S(
        "copy_in",
        [],
        "host files or folders copied into the sandbox's home at each start (never mounted); "
        "absolute or relative to the notebook's folder; symbolic links are skipped",
        "list",
        metavar="PATH",
        group="exchange",
    ),
    S(
        "copy_in_notebook_folder",
        False,
        "copy the notebook's folder (its files and subfolders, not hidden ones, not the export "
        "folder) into the sandbox's home at each start, within copy_in_limit, so the notebook "
        "reads the data beside it; copies, never mounted: nothing written in the sandbox "
        "comes back. For students' own notebooks, never for a grader's",
        "bool",
        group="exchange",
    ),
    S(
        "copy_in_limit",
        "64m",
        "most bytes copy_in (and the notebook's folder) may copy",
        "size",
        bounds=(1, 2**40),
        group="exchange",
    ),
    S(
        "export_limit",
        "64m",
        "most bytes the kernel may export to the host (sandboxed.export) per kernel; 0 "
        "disables exports",
        "size",
        bounds=(0, 2**40),
        hint="0 disables exports",
        group="exchange",
    ),
    S(
        "export_dir",
        "sandbox-exports",
        "folder, inside the notebook's folder, that receives exported files",
        "str",
        group="exchange",
    ),
    # -- what the Jupyter process holds for a kernel (docs/security.md, host-side bounds) -------
    S(
        "console_output",
        "stderr",
        "where the kernel's own stdout/stderr go (not its cell output, which goes to the "
        "notebook): the server's stderr, escaped and prefixed with the kernel's id, or nowhere",
        "enum",
        choices=("stderr", "discard"),
        group="host",
    ),
    S(
        "console_limit",
        "1m",
        "most bytes of the kernel's own stdout/stderr written to the server's stderr per "
        "kernel (also rate-limited); the rest is dropped and the drop logged once",
        "size",
        bounds=(1, 2**40),
        group="host",
    ),
    S(
        "max_message_size",
        "64m",
        "largest ZeroMQ message the kernel may send to its clients; a larger one resets that "
        "connection before the client allocates it, and the message is lost (logged)",
        "size",
        bounds=(2**20, 64 * 2**30),
        hint="e.g. '64m'",
        group="host",
    ),
    S(
        "max_kernels",
        0,
        "most sandboxed kernels this Jupyter process runs at once, counted across its "
        "kernelspecs (a server setting: c.SandboxProvisioner.max_kernels); 0: no limit",
        "int",
        bounds=(0, 1024),
        hint="0: no limit",
        group="host",
    ),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}

_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(value: str | int, what: str) -> int:
    """``"512m"``, ``"2g"``, ``"1.5GiB"``, ``1048576`` -> bytes (binary units), positive."""
    n = _size_bytes(value, what)
    if n <= 0:
        raise PolicyError(f"{what}: must be positive, got {value!r}")
    return n


def _size_bytes(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise PolicyError(f"{what}: expected a size like '512m' or '2g', got {value!r}")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE_RE.match(str(value))
        if not m:
            raise PolicyError(
                f"{what}: cannot parse {value!r}; use a number of bytes or a size like '512m', '2g'"
            )
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    return n


def format_size(n: float) -> str:
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            return f"{n / factor:g} {unit}"
    return f"{n:g} B"


def check(name: str, value: Any) -> Any:
    """``value`` if it is of setting ``name``'s type (true or false, a whole number, a
    number, one of its choices) and within its bounds, a size in bytes; else PolicyError
    naming the setting and what it takes. Other kinds pass unchanged: lists, ports and
    names have parsers of their own (``policy.py``, ``exchange/policy.py``, the registry)."""
    s = BY_NAME[name]
    if s.kind == "bool":
        if not isinstance(value, bool):
            raise PolicyError(f"{name}: expected true or false, got {value!r}")
        return value
    if s.kind == "enum":
        if not isinstance(value, str) or value not in s.choices:
            raise PolicyError(f"{name}: {value!r} is not one of {', '.join(s.choices)}")
        return value
    if s.kind == "size":  # bytes
        n = value if isinstance(value, int) and not isinstance(value, bool) else None
        n = _size_bytes(value, name) if n is None else n
        lo, hi = bounds(name)
        if not lo <= n <= hi:
            hint = f" ({s.hint})" if s.hint else ""
            raise PolicyError(f"{name}: {value!r} must be a size {range_text(name)}{hint}")
        return n
    if s.kind not in ("int", "int?", "float") or (value is None and s.kind == "int?"):
        return value
    lo, hi = bounds(name)
    whole = s.kind != "float"
    number = isinstance(value, int) or (not whole and isinstance(value, float))
    # NaN fails both comparisons: refused like any value out of bounds.
    if isinstance(value, bool) or not number or not lo <= value <= hi:
        what = "a whole number" if whole else "a number"
        hint = f" ({s.hint})" if s.hint else ""
        raise PolicyError(f"{name}: {value!r} must be {what} {range_text(name)}{hint}")
    return value if whole else float(value)


def group(name: str) -> tuple[str, ...]:
    """The settings of group ``name``, in the table's order."""
    return tuple(s.name for s in SETTINGS if s.group == name)


def bounds(name: str) -> tuple[float, float]:
    """The inclusive range of numeric setting ``name``."""
    found = BY_NAME[name].bounds
    assert found is not None, f"setting {name} has no bounds"
    return found


def range_text(name: str) -> str:
    """'from LO to HI' for numeric or size setting ``name`` (refusals, ``install --help``)."""
    size = BY_NAME[name].kind == "size"
    lo, hi = (
        format_size(x) if size else str(int(x)) if x == int(x) else f"{x:g}" for x in bounds(name)
    )
    return f"from {lo} to {hi}"


def defaults() -> dict[str, Any]:
    """Every setting's default (fresh copies of lists and dicts)."""
    return {s.name: _copy(s.default) for s in SETTINGS}


def resolve(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` (a kernelspec's provisioner config) with the defaults of everything it does
    not set; an unknown name is refused, naming the known ones."""
    unknown = sorted(set(config) - set(BY_NAME))
    if unknown:
        raise PolicyError(
            f"unknown sandbox-provisioner setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(BY_NAME))}"
        )
    return {**defaults(), **{k: _copy(v) for k, v in config.items()}}


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value


# -- traitlets (the provisioner) -----------------------------------------------------------------


def trait(name: str) -> Any:
    """The configurable traitlet for setting ``name`` (its type, default and help)."""
    from traitlets import Bool, Dict, Enum, Float, Int, List, Unicode, Union

    s = BY_NAME[name]
    help_text = s.help[0].upper() + s.help[1:] + "."
    if s.backends:
        help_text += f" ({', '.join(s.backends)} only.)"
    made: Any
    if s.kind in ("str", "backend"):
        made = Unicode(s.default, help=help_text)
    elif s.kind == "bool":
        made = Bool(s.default, help=help_text)
    elif s.kind == "int":
        made = Int(s.default, help=help_text)
    elif s.kind == "int?":
        made = Int(s.default, allow_none=True, help=help_text)
    elif s.kind == "float":
        made = Float(s.default, help=help_text)
    elif s.kind == "size":
        made = Union([Unicode(), Int()], default_value=s.default, help=help_text)
    elif s.kind == "enum":
        made = Enum(list(s.choices), default_value=s.default, help=help_text)
    elif s.kind == "list":
        made = List(Unicode(), default_value=list(s.default), help=help_text)
    elif s.kind == "ports":
        made = List(Union([Int(), Unicode()]), default_value=list(s.default), help=help_text)
    elif s.kind == "dict":
        made = Dict(value_trait=Unicode(), default_value=dict(s.default), help=help_text)
    else:  # pragma: no cover - a typo in the table
        raise AssertionError(f"setting {name}: unknown kind {s.kind!r}")
    return made.tag(config=True)
