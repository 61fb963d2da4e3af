"""Who a sandbox belongs to: the neutral record every backend stores its own way.

The provisioner and the warm pool describe each sandbox they start with an
:class:`Owner`: the Jupyter process (pid and start time, host, user) and the kernel it
serves (none yet for a pooled sandbox). Backends store it as they can: Docker as
container labels, the runsc backend as OCI annotations, the pipe backends in a state
file, all from :meth:`Owner.labels`; and read it back with :meth:`Owner.from_labels`
for ``sandbox-kernel ps`` and to find orphans for ``gc`` (:meth:`Owner.server_gone`).
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

LABEL_MANAGED = "org.sandbox-kernel.managed"
LABEL_KERNEL_ID = "org.sandbox-kernel.kernel-id"
LABEL_OWNER = "org.sandbox-kernel.owner"
LABEL_SERVER_PID = "org.sandbox-kernel.server-pid"
LABEL_HOST = "org.sandbox-kernel.host"
LABEL_SERVER_START = "org.sandbox-kernel.server-start"
LABEL_POOL = "org.sandbox-kernel.pool"  # a warm-pool sandbox (no kernel id until claimed)
# which backend made it, where one store serves several (docker, docker-runc; kubernetes)
LABEL_BACKEND = "org.sandbox-kernel.backend"


def process_start(pid: int) -> str:
    """A process's start time in clock ticks since boot ("" if it is gone): with the pid,
    it identifies the process even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return str(os.getuid())


@dataclass(frozen=True)
class Owner:
    server_pid: int
    server_start: str
    host: str
    user: str
    kernel_id: str = ""
    pooled: bool = False

    @classmethod
    def current(cls, kernel_id: str = "", pooled: bool = False) -> Owner:
        """This Jupyter process, for a kernel's sandbox or (``pooled``) a warm one."""
        pid = os.getpid()
        return cls(pid, process_start(pid), socket.gethostname(), _user(), kernel_id, pooled)

    def labels(self) -> dict[str, str]:
        labels = {
            LABEL_MANAGED: "1",
            LABEL_SERVER_PID: str(self.server_pid),
            LABEL_SERVER_START: self.server_start,
            LABEL_HOST: self.host,
            LABEL_OWNER: self.user,
        }
        if self.kernel_id:
            labels[LABEL_KERNEL_ID] = self.kernel_id
        if self.pooled:
            labels[LABEL_POOL] = "1"
        return labels

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> Owner | None:
        """The owner a backend stored; None for anything not ours or unreadable."""
        if labels.get(LABEL_MANAGED) != "1":
            return None
        try:
            pid = int(labels.get(LABEL_SERVER_PID, ""))
        except ValueError:
            return None
        return cls(
            pid,
            labels.get(LABEL_SERVER_START, ""),
            labels.get(LABEL_HOST, ""),
            labels.get(LABEL_OWNER, ""),
            labels.get(LABEL_KERNEL_ID, ""),
            LABEL_POOL in labels,
        )

    def server_gone(self, hostname: str | None = None) -> bool:
        """This host's Jupyter process that owned the sandbox no longer exists (its pid is
        gone, or now belongs to another process): the sandbox is an orphan."""
        if self.host != (hostname or socket.gethostname()):
            return False  # another host's: never ours to judge
        start = process_start(self.server_pid)
        return not start or start != (self.server_start or start)
