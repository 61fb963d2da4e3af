"""The isolation policy as data: parsing, validation and the environment filter.

Pure: no Docker, no I/O. The provisioner's traitlets (settable in a
kernelspec's ``metadata.kernel_provisioner.config`` or in jupyter config files)
are turned into one frozen :class:`SandboxPolicy` by :func:`build_policy`;
backends translate that into their own terms and refuse what they cannot
enforce.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import PolicyError
from .settings import BY_NAME, bounds, check, format_size, group
from .settings import parse_size as parse_size  # where hub.py and the tests find it

# Docker runtimes that are gVisor: Debian's runsc, and the current gVisor that
# `SANDBOX_KERNEL_RUNSC=current sandbox-kernel setup-host` builds and registers
# (host/setup_host.sh). Both must carry REQUIRED_RUNSC_ARGS (checked at start).
GVISOR_RUNTIMES = frozenset({"runsc", "runsc-current"})
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
INSIDE_CONNECTION_FILE = "/tmp/.sandbox-kernel/kernel.json"

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Docker reference: [registry[:port]/]path[:tag][@digest], lower-case path components.
_IMAGE_RE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)

# The settings table's bounds that hub.py and the Docker backend use.
MIN_MEMORY = int(bounds("memory_limit")[0])
MAX_NPROC = int(bounds("nproc_limit")[1])
# Measured under gVisor: each fork of an ipykernel process costs ~27 MiB of the sandbox's
# memory. The default process limit leaves room for that, so a fork bomb in a cell meets
# EAGAIN (RLIMIT_NPROC) before the memory cap kills the whole sandbox.
MEMORY_PER_PROCESS = 32 * 2**20
DEFAULT_NPROC_MIN, DEFAULT_NPROC_MAX = 32, 1024


def default_nproc(memory_bytes: int) -> int:
    """RLIMIT_NPROC (tasks: processes and threads) that fits in ``memory_bytes``."""
    return max(DEFAULT_NPROC_MIN, min(DEFAULT_NPROC_MAX, memory_bytes // MEMORY_PER_PROCESS))


def validate_image(image: str) -> str:
    # The length first: the pattern only ever sees a bounded string, however it is written.
    if not isinstance(image, str) or len(image) > 255 or not _IMAGE_RE.fullmatch(image):
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
    """What every sandbox of one kernelspec is allowed; immutable once built, only by
    :func:`build_policy` (whose defaults are the settings table's, ``settings.py``)."""

    image: str
    memory_bytes: int
    cpus: float
    nproc: int
    pids_limit: int
    nofile: int
    tmp_bytes: int
    home_bytes: int
    env_allow: tuple[str, ...]
    env: Mapping[str, str]
    launch_timeout: float
    user: str = SANDBOX_USER  # fixed: the image's unprivileged user
    home: str = SANDBOX_HOME

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


# The settings (settings.py) this module turns into a policy.
POLICY_SETTINGS = group("policy")


def build_policy(**given: Any) -> SandboxPolicy:
    """A policy from the settings of POLICY_SETTINGS (those not given take the settings
    table's defaults); raise :class:`PolicyError` naming the setting and the fix."""
    unknown = sorted(set(given) - set(POLICY_SETTINGS))
    if unknown:
        raise TypeError(f"not policy settings: {', '.join(unknown)}")
    v = {name: given[name] if name in given else BY_NAME[name].default for name in POLICY_SETTINGS}
    image = validate_image(v["image"])
    memory = check("memory_limit", v["memory_limit"])
    nproc_limit = check("nproc_limit", v["nproc_limit"])
    if nproc_limit is None:
        nproc_limit = default_nproc(memory)
    cpus = check("cpu_limit", v["cpu_limit"])
    pids_limit = check("pids_limit", v["pids_limit"])
    nofile_limit = check("nofile_limit", v["nofile_limit"])
    if pids_limit < nproc_limit:
        raise PolicyError(
            "pids_limit must be >= nproc_limit: the host limit is the backstop; a fork bomb "
            "must meet the in-sandbox RLIMIT_NPROC (a clean EAGAIN) first"
        )
    tmp = check("tmp_size", v["tmp_size"])
    home = check("home_size", v["home_size"])
    for name, value in (("tmp_size", tmp), ("home_size", home)):
        if value > memory:
            raise PolicyError(
                f"{name}: {format_size(value)} is more than memory_limit ({format_size(memory)}): "
                "a tmpfs lives in the sandbox's memory, so it must fit in memory_limit"
            )
    allow = tuple(v["env_allow"] or ())
    for name in allow:
        check_env_name(name, "env_allow")
    fixed = dict(v["env"] or {})
    for name in fixed:
        check_env_name(name, "env")
    timeout = check("launch_timeout", v["launch_timeout"])
    return SandboxPolicy(
        image=image,
        memory_bytes=memory,
        cpus=cpus,
        nproc=nproc_limit,
        pids_limit=pids_limit,
        nofile=nofile_limit,
        tmp_bytes=tmp,
        home_bytes=home,
        env_allow=allow,
        env=fixed,
        launch_timeout=timeout,
    )
