"""Backend names -> backend classes: the provisioner's and the CLI's one list of backends.

``docker`` (gVisor) is the default; ``runsc`` is gVisor too, run by the provisioner
without Docker (as root, or rootless for an ordinary user); ``kubernetes`` is gVisor too,
one pod per kernel on a cluster (its RuntimeClass). Every other name is an
explicit choice of a weaker tier: ``docker-runc`` (hardened Docker on the host kernel),
``bwrap`` and ``firejail`` (no daemon; host kernel). Naming one in the kernelspec is the
operator's opt-in; each launch still logs that the host kernel is shared.

Adding a backend: its module (a :class:`~.base.SandboxBackend` subclass with a ``name``
and a ``label``), one line here, its settings in ``settings.py`` (marked with its name)
and its rows in the gap table (``security/expectations.py``).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import Any

from ..errors import PolicyError
from ..settings import BY_NAME, SETTINGS
from .base import SandboxBackend

# name -> "module:class", in the order the docs and `ps` list them. Imported only when
# used: the Docker SDK is not needed by the other backends.
BACKENDS: dict[str, str] = {
    "docker": "docker:DockerBackend",
    "runsc": "runsc:RunscBackend",
    "kubernetes": "kubernetes:KubernetesBackend",
    "docker-runc": "docker:DockerRuncBackend",
    "bwrap": "bwrap:BwrapBackend",
    "firejail": "firejail:FirejailBackend",
}
DEFAULT_BACKEND = BY_NAME["backend"].default


def check_backend(name: object) -> str:
    if name not in BACKENDS:
        raise PolicyError(f"backend: {name!r} is not one of {', '.join(BACKENDS)}")
    assert isinstance(name, str)
    return name


def backend_class(name: str) -> type[SandboxBackend]:
    """The class of backend ``name``: a module of this package, or a dotted module path
    (a backend that lives elsewhere, e.g. the tests' own)."""
    module, _, cls = BACKENDS[check_backend(name)].partition(":")
    path = module if "." in module else f"{__package__}.{module}"
    found: type[SandboxBackend] = getattr(importlib.import_module(path), cls)
    return found


def display_name(backend: str, language: str = "Python 3") -> str:
    """Shown in Jupyter's launcher: the isolation tier is part of the kernel's name."""
    return f"{language} ({backend_class(backend).label})"


def default_kernel_name(backend: str) -> str:
    return "sandbox-python" if backend == DEFAULT_BACKEND else f"sandbox-python-{backend}"


def backend_settings(name: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The settings ``name`` reads, from ``values`` (all settings, defaults filled in).
    A setting of another backend set to anything but its default is refused: it would
    silently do nothing."""
    mine: dict[str, Any] = {}
    for s in SETTINGS:
        if not s.backends or s.name not in values:
            continue
        if name in s.backends:
            mine[s.name] = values[s.name]
        elif values[s.name] != s.default:
            raise PolicyError(
                f"{s.name}: applies to the {', '.join(s.backends)} backend(s) only, not to "
                f"{name!r}; remove it"
            )
    return mine


def make_backend(
    name: str, log: logging.Logger, values: Mapping[str, Any] | None = None
) -> SandboxBackend:
    """A backend object for ``name`` with its settings from ``values`` (cheap: no host
    check until ``preflight``); PolicyError for settings it refuses."""
    return backend_class(name)(log, **backend_settings(name, values or {}))
