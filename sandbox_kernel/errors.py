"""Errors raised to users and operators; each message names the fix."""


class SandboxError(RuntimeError):
    """A sandboxed kernel cannot be started or managed; the message says what to do."""


class PolicyError(SandboxError, ValueError):
    """A configured isolation policy value is malformed or not allowed."""
