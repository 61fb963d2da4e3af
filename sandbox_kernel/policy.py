"""The isolation policy as data: parsing, validation and the environment filter.

Pure: no Docker, no I/O. The provisioner's traitlets (settable in a
kernelspec's ``metadata.kernel_provisioner.config`` or in jupyter config files)
are turned into one frozen :class:`SandboxPolicy` by :func:`build_policy`;
backends translate that into their own terms and refuse what they cannot
enforce.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .errors import PolicyError

GVISOR_RUNTIMES = frozenset({"runsc"})
SANDBOX_USER = "1000:1000"
SANDBOX_HOME = "/home/sandbox"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"

# Never passed into a sandbox, whatever a kernelspec or config asks: Jupyter's
# own plumbing, hub credentials, the Docker endpoint, and anything named like a secret.
_FORBIDDEN_ENV = re.compile(
    r"^(JPY_|JUPYTERHUB_|JUPYTER_|DOCKER_|SANDBOX_KERNEL_)|TOKEN|SECRET|PASSW|CREDENTIAL|API_KEY|"
    r"^PYTHONEXECUTABLE$|^LD_PRELOAD$|^LD_LIBRARY_PATH$",
    re.IGNORECASE,
)
# Ports the kernel binds on the sandbox's own loopback; each sandbox has its own
# network namespace, so fixed numbers never collide. They lie below every ephemeral
# port range (Linux 32768+, gVisor 16000+): the agent's connect retries while the kernel
# starts could otherwise pick the port itself as source and self-connect, taking the
# port from the kernel (seen under runc as EADDRINUSE).
INSIDE_PORTS = {
    "shell_port": 15001,
    "iopub_port": 15002,
    "stdin_port": 15003,
    "control_port": 15004,
    "hb_port": 15005,
}
KERNEL_INSIDE_PORTS = frozenset(INSIDE_PORTS.values())
INSIDE_CONNECTION_FILE = "/tmp/.sandbox-kernel/kernel.json"

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Docker reference: [registry[:port]/]path[:tag][@digest], lower-case path components.
_IMAGE_RE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)

_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}

# Sanity bounds: below these a kernel cannot start, above them a typo is likely.
MIN_MEMORY = 128 * 2**20
MAX_MEMORY = 1024 * 2**30
MIN_TMPFS = 1 * 2**20
MAX_CPUS = 256.0
MIN_NPROC, MAX_NPROC = 16, 65536
# Measured under gVisor: each fork of an ipykernel process costs ~27 MiB of the sandbox's
# memory. The default process limit leaves room for that, so a fork bomb in a cell meets
# EAGAIN (RLIMIT_NPROC) before the memory cap kills the whole sandbox.
MEMORY_PER_PROCESS = 32 * 2**20
DEFAULT_NPROC_MIN, DEFAULT_NPROC_MAX = 32, 1024


def default_nproc(memory_bytes: int) -> int:
    """RLIMIT_NPROC (tasks: processes and threads) that fits in ``memory_bytes``."""
    return max(DEFAULT_NPROC_MIN, min(DEFAULT_NPROC_MAX, memory_bytes // MEMORY_PER_PROCESS))


MIN_NOFILE, MAX_NOFILE = 64, 1048576


def parse_size(value: str | int, what: str) -> int:
    """``"512m"``, ``"2g"``, ``"1.5GiB"``, ``1048576`` -> bytes (binary units)."""
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
    if n <= 0:
        raise PolicyError(f"{what}: must be positive, got {value!r}")
    return n


def format_size(n: float) -> str:
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            return f"{n / factor:g} {unit}"
    return f"{n:g} B"


def _bounded(value: float, lo: float, hi: float, what: str, hint: str, size: bool = False) -> None:
    if not lo <= value <= hi:
        fmt = format_size if size else (lambda x: f"{x:g}")
        raise PolicyError(f"{what}: {fmt(value)} is outside [{fmt(lo)}, {fmt(hi)}]; {hint}")


def validate_image(image: str) -> str:
    if not isinstance(image, str) or not _IMAGE_RE.fullmatch(image) or len(image) > 255:
        raise PolicyError(
            f"image: {image!r} is not a valid Docker image reference "
            "(expected e.g. 'sandbox-kernel/python:latest')"
        )
    return image


def check_env_name(name: str, source: str) -> None:
    if not _ENV_NAME.fullmatch(name):
        raise PolicyError(f"{source}: {name!r} is not a valid environment variable name")
    if _FORBIDDEN_ENV.search(name):
        raise PolicyError(
            f"{source}: {name!r} may not be passed into the sandbox "
            "(Jupyter/JupyterHub/Docker variables and secrets never are)"
        )


@dataclass(frozen=True)
class SandboxPolicy:
    """What every sandbox of one kernelspec is allowed; immutable once built."""

    image: str
    runtime: str = "runsc"
    allow_weaker_runtime: bool = False
    memory_bytes: int = 2 * 2**30
    cpus: float = 1.0
    nproc: int = 64
    pids_limit: int = 4096
    nofile: int = 4096
    tmp_bytes: int = 256 * 2**20
    home_bytes: int = 512 * 2**20
    user: str = SANDBOX_USER
    home: str = SANDBOX_HOME
    env_allow: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    launch_timeout: float = 60.0

    @property
    def is_gvisor(self) -> bool:
        return self.runtime in GVISOR_RUNTIMES

    def kernel_env(
        self, server_env: Mapping[str, str], spec_env: Mapping[str, str]
    ) -> dict[str, str]:
        """The kernel's whole environment: fixed basics, allow-listed server
        variables, the kernelspec's ``env`` and the policy's ``env``. Nothing
        else of the server's environment reaches the sandbox."""
        env = {"HOME": self.home, "PATH": SANDBOX_PATH, "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
        # ipykernel reads its parent's pid from here: 1 (the agent) means "launched by a
        # parent that never goes away", so it prints no standalone-kernel banner (whose
        # `--existing` path exists only inside the sandbox) and starts no parent poller.
        env["JPY_PARENT_PID"] = "1"
        for name in self.env_allow:
            if name in server_env:
                env[name] = server_env[name]
        for source, extra in (("kernelspec env", spec_env), ("env", self.env)):
            for name, value in extra.items():
                check_env_name(name, source)
                env[name] = str(value)
        return env


def build_policy(
    *,
    image: str,
    runtime: str = "runsc",
    allow_weaker_runtime: bool = False,
    memory_limit: str | int = "2g",
    cpu_limit: float = 1.0,
    nproc_limit: int | None = None,
    pids_limit: int = 4096,
    nofile_limit: int = 4096,
    tmp_size: str | int = "256m",
    home_size: str | int = "512m",
    env_allow: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    launch_timeout: float = 60.0,
) -> SandboxPolicy:
    """Validate raw settings; raise :class:`PolicyError` naming the setting and the fix."""
    validate_image(image)
    if not isinstance(runtime, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", runtime):
        raise PolicyError(f"runtime: {runtime!r} is not a runtime name (e.g. 'runsc')")
    if runtime not in GVISOR_RUNTIMES and not allow_weaker_runtime:
        raise PolicyError(
            f"runtime: {runtime!r} is not gVisor; the sandbox refuses weaker isolation unless "
            "the operator sets allow_weaker_runtime=True"
        )
    memory = parse_size(memory_limit, "memory_limit")
    _bounded(memory, MIN_MEMORY, MAX_MEMORY, "memory_limit", "use e.g. '2g'", size=True)
    if nproc_limit is None:
        nproc_limit = default_nproc(memory)
    cpus = float(cpu_limit)
    _bounded(cpus, 0.01, MAX_CPUS, "cpu_limit", "use a number of CPUs such as 1 or 0.5")
    for name, value, lo, hi in (
        ("nproc_limit", nproc_limit, MIN_NPROC, MAX_NPROC),
        ("nofile_limit", nofile_limit, MIN_NOFILE, MAX_NOFILE),
        ("pids_limit", pids_limit, MIN_NPROC, 4 * MAX_NPROC),
    ):
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicyError(f"{name}: expected a whole number, got {value!r}")
        _bounded(value, lo, hi, name, "use a whole number")
    if pids_limit < nproc_limit:
        raise PolicyError(
            "pids_limit must be >= nproc_limit: the host limit is the backstop; a fork bomb "
            "must meet the in-sandbox RLIMIT_NPROC (a clean EAGAIN) first"
        )
    tmp = parse_size(tmp_size, "tmp_size")
    home = parse_size(home_size, "home_size")
    for name, value in (("tmp_size", tmp), ("home_size", home)):
        _bounded(
            value,
            MIN_TMPFS,
            memory,
            name,
            "a tmpfs lives in the sandbox's memory, so it must fit in memory_limit",
            size=True,
        )
    allow = tuple(env_allow)
    for name in allow:
        check_env_name(name, "env_allow")
    fixed = dict(env or {})
    for name in fixed:
        check_env_name(name, "env")
    if not 1 <= float(launch_timeout) <= 3600:
        raise PolicyError(f"launch_timeout: {launch_timeout!r} must be between 1 and 3600 seconds")
    return SandboxPolicy(
        image=image,
        runtime=runtime,
        allow_weaker_runtime=allow_weaker_runtime,
        memory_bytes=memory,
        cpus=cpus,
        nproc=nproc_limit,
        pids_limit=pids_limit,
        nofile=nofile_limit,
        tmp_bytes=tmp,
        home_bytes=home,
        env_allow=allow,
        env=fixed,
        launch_timeout=float(launch_timeout),
    )
