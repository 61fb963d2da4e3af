"""One error root: every exception the host side raises to its callers is a SandboxError,
so the provisioner, the CLI and doctor catch one class. The code shipped into the sandbox
stays standalone: its ProtocolError cannot derive from errors.py, and the host's session
turns it into a SessionError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import sandbox_kernel
from sandbox_kernel.errors import SandboxError
from sandbox_kernel.inside import protocol

# Raised and caught inside one module or package, never to a caller of the package.
INTERNAL = {
    "sandbox_kernel.pool_snapshots.CheckpointFailed",  # the warm pool's own fallback to a fresh sandbox
    "sandbox_kernel.relay.zmtp.ZmtpError",  # resets one relayed connection, in the relay
}
# Shipped into the sandbox (bundle.py) or run there: standard library only.
INSIDE = ("sandbox_kernel.inside.", "sandbox_kernel.security.programs")


def host_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(sandbox_kernel.__path__, "sandbox_kernel."):
        if info.name.startswith(INSIDE):
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == info.name:
                found[f"{info.name}.{cls.__qualname__}"] = cls
    return found


def test_every_host_error_is_a_sandbox_error() -> None:
    found = host_exceptions()
    assert "sandbox_kernel.relay.session.SessionError" in found
    assert "sandbox_kernel.backends.docker_attach.DockerStreamError" in found
    outside = {name for name, cls in found.items() if not issubclass(cls, SandboxError)}
    assert outside == INTERNAL, f"not SandboxError: {sorted(outside - INTERNAL)}"


def test_the_shipped_protocol_error_stays_standalone() -> None:
    assert protocol.ProtocolError.__mro__[1:] == (Exception, BaseException, object)
