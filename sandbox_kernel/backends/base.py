"""The interface between the provisioner and an isolation backend.

The provisioner owns the lifecycle and the relay; a backend only knows how to
check a host, create, start, attach to, signal and remove one sandbox. Every
method may block on I/O in its implementation, so the async ones must not.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..policy import SandboxPolicy
from ..relay.session import AgentSession


@dataclass(frozen=True)
class Preflight:
    """What a backend found on this host for a policy."""

    runtime: str  # the runtime that will actually run the sandbox
    warnings: tuple[str, ...] = ()
    # The agent starts as root of the sandbox (inside gVisor's own kernel) and runs the
    # kernel under the policy's user, so kernel code cannot reach the agent's pipe or
    # process. False: both share the policy's uid, and the host kernel keeps the agent's
    # descriptors (undumpable) and, as PID 1, its signals out of the kernel's reach.
    kernel_user_apart: bool = False


class SandboxBackend(ABC):
    name: str

    @abstractmethod
    async def preflight(self, policy: SandboxPolicy) -> Preflight:
        """Check the host can enforce ``policy``; raise SandboxError naming the fix."""

    @abstractmethod
    async def create(
        self,
        policy: SandboxPolicy,
        preflight: Preflight,
        *,
        command: list[str],
        labels: Mapping[str, str],
        name: str,
    ) -> str:
        """Create (not start) a sandbox whose stdin/stdout will be the agent's pipe."""

    @abstractmethod
    async def attach(self, sandbox_id: str, session: AgentSession) -> None:
        """Connect ``session`` to the sandbox's stdin/stdout (runs on the relay loop)."""

    @abstractmethod
    async def start(self, sandbox_id: str) -> None: ...

    @abstractmethod
    async def kill(self, sandbox_id: str) -> None:
        """Stop the whole sandbox at once; no error if it is already gone."""

    @abstractmethod
    async def remove(self, sandbox_id: str) -> None:
        """Remove every trace of the sandbox; no error if it is already gone."""

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}
