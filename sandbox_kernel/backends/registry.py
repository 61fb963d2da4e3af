"""Backend names -> backend objects, tiers and display names (the provisioner's factory).

``docker`` (gVisor) is the default; ``runsc`` is gVisor too, run by the provisioner
without Docker (as root, or rootless for an ordinary user). Every other name is an
explicit choice of a weaker tier: ``docker-runc`` (hardened Docker on the host kernel),
``bwrap`` and ``firejail`` (no daemon; host kernel). Naming one in the kernelspec is the
operator's opt-in; each launch still logs that the host kernel is shared.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ..errors import PolicyError
from .base import SandboxBackend

BACKENDS = ("docker", "runsc", "docker-runc", "bwrap", "firejail")
DEFAULT_BACKEND = "docker"

# Shown in Jupyter's launcher: the isolation tier is part of the kernel's name.
TIER_LABELS = {
    "docker": "sandboxed",
    "runsc": "sandboxed, gVisor without Docker",
    "docker-runc": "sandboxed, Docker runc: weaker, host kernel",
    "bwrap": "sandboxed, bubblewrap: host kernel",
    "firejail": "sandboxed, firejail: host kernel",
}


def check_backend(name: object) -> str:
    if name not in BACKENDS:
        raise PolicyError(f"backend: {name!r} is not one of {', '.join(BACKENDS)}")
    assert isinstance(name, str)
    return name


def display_name(backend: str, language: str = "Python 3") -> str:
    return f"{language} ({TIER_LABELS[check_backend(backend)]})"


def default_kernel_name(backend: str) -> str:
    return "sandbox-python" if backend == DEFAULT_BACKEND else f"sandbox-python-{backend}"


def docker_runtime(backend: str, runtime: str, allow_weaker_runtime: bool) -> tuple[str, bool]:
    """The (runtime, allow_weaker_runtime) the policy gets: ``docker-runc`` means runc, and
    choosing it is the explicit opt-in to the weaker runtime."""
    if backend == "docker-runc":
        return "runc", True
    return runtime, allow_weaker_runtime


def make_backend(
    name: str,
    log: logging.Logger,
    *,
    accept_unenforced: Iterable[str] = (),
    rootfs: str = "",
) -> SandboxBackend:
    """A backend object for ``name`` (cheap: no host check until ``preflight``)."""
    check_backend(name)
    if name in ("docker", "docker-runc"):
        from .docker import DockerBackend

        if tuple(accept_unenforced):
            raise PolicyError(
                "accept_unenforced: the Docker backends enforce every policy property; "
                "leave it empty"
            )
        return DockerBackend(log)
    if name == "runsc":
        from .runsc import RunscBackend

        return RunscBackend(log, accept_unenforced=accept_unenforced, rootfs=rootfs)
    if name == "bwrap":
        from .bwrap import BwrapBackend

        return BwrapBackend(log, accept_unenforced=accept_unenforced, rootfs=rootfs)
    from .firejail import FirejailBackend

    return FirejailBackend(log, accept_unenforced=accept_unenforced, rootfs=rootfs)
