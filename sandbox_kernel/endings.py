"""Why a sandbox ended, where the host knows it (thread-safe bookkeeping, no I/O).

Who calls what: the backends' OOM watchers (``backends/docker.py``, ``backends/runsc.py``;
their own threads) call :func:`report` with the sandbox's id just before they end it; the
provisioner asks :func:`reason` when it sees its sandbox gone and keeps the answer as
``SandboxProvisioner.end_reason`` (read by ``sandbox-kernel run``). A sandbox's own
session knows the rest (a protocol error ends it: ``AgentSession.error``).
"""

from __future__ import annotations

import collections
import threading

# Reasons kept for sandboxes nobody asked about yet; the oldest go first.
KEPT = 256

_lock = threading.Lock()
_reasons: collections.OrderedDict[str, str] = collections.OrderedDict()


# What a backend may report; the provisioner words it with the kernel's settings.
MEMORY_LIMIT = "memory_limit"


def report(sandbox_id: str, why: str) -> None:
    """``sandbox_id`` (a backend's id) is ending because of ``why`` (e.g. MEMORY_LIMIT)."""
    with _lock:
        _reasons[sandbox_id] = why
        while len(_reasons) > KEPT:
            _reasons.popitem(last=False)


def reason(sandbox_id: str) -> str | None:
    """Why ``sandbox_id`` ended, if a backend reported it (forgotten once read)."""
    with _lock:
        return _reasons.pop(sandbox_id, None)
