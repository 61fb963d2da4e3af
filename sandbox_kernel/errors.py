"""Errors raised to users and operators; each message names the fix.

Every error of the host side is a :class:`SandboxError` (the relay's ``SessionError``,
Docker's ``DockerStreamError``...), so a caller catches one class. The one exception:
``inside/protocol.py``'s ``ProtocolError``, raised by code shipped into the sandbox on its
own (standard library only), which cannot import this module; on the host, the session
that meets one ends on it and reports a ``SessionError``.
"""


class SandboxError(RuntimeError):
    """A sandboxed kernel cannot be started or managed; the message says what to do."""


class PolicyError(SandboxError, ValueError):
    """A configured isolation policy value is malformed or not allowed."""
