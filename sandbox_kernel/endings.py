"""Why a sandbox ended, where the host knows it (thread-safe bookkeeping, no I/O).

Who calls what: the backends' OOM watchers (``backends/docker.py``, ``backends/runsc.py``;
their own threads) call :func:`report` with the sandbox's id just before they end it. The
provisioner listens (:func:`listen`) for its running sandbox, to tell the notebook at once (before
jupyter_client's restarter sees the kernel gone and JupyterLab forgets the running cell),
and asks :func:`reason` when it sees its sandbox gone, keeping the answer as
``SandboxProvisioner.end_reason`` (read by ``sandbox-kernel run``). A sandbox's own
session knows the rest (a protocol error ends it: ``AgentSession.error``).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

# Reasons kept for sandboxes nobody asked about yet; the oldest go first.
KEPT = 256

_lock = threading.Lock()
_reasons: collections.OrderedDict[str, str] = collections.OrderedDict()
_listeners: dict[str, Callable[[str], None]] = {}


# What a backend may report; the provisioner words it with the kernel's settings.
MEMORY_LIMIT = "memory_limit"


def report(sandbox_id: str, why: str) -> None:
    """``sandbox_id`` (a backend's id) is ending because of ``why`` (e.g. MEMORY_LIMIT)."""
    with _lock:
        _reasons[sandbox_id] = why
        while len(_reasons) > KEPT:
            _reasons.popitem(last=False)
        listener = _listeners.get(sandbox_id)
    if listener is not None:
        listener(why)


def listen(sandbox_id: str, listener: Callable[[str], None]) -> None:
    """Call ``listener(why)`` (in the reporting thread) when ``sandbox_id`` is reported."""
    with _lock:
        _listeners[sandbox_id] = listener


def unlisten(sandbox_id: str) -> None:
    with _lock:
        _listeners.pop(sandbox_id, None)


def reason(sandbox_id: str) -> str | None:
    """Why ``sandbox_id`` ended, if a backend reported it (forgotten once read)."""
    with _lock:
        return _reasons.pop(sandbox_id, None)
