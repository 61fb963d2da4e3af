"""At most ``max_kernels`` sandboxed kernels per Jupyter process.

A single-user server on a shared host must not start sandboxes without bound: each
costs memory and processes of its user. The provisioner takes a slot when a kernel is
launched (``acquire``, in ``launch_kernel``; a restart keeps its slot) and gives it back
when the kernel is cleaned up for good or its launch failed (``release``). Past the
limit, ``acquire`` raises :class:`KernelLimitReached`, which the server extension
(:mod:`sandbox_kernel.server`) answers with HTTP 403 and this message.

The count is per process (every kernelspec and kernel manager of the server together);
warm-pool sandboxes are not kernels and are not counted (at most ``pool_size`` of them
per kernelspec in use). Thread-safe: jupyter_client's synchronous ``KernelManager`` may
launch kernels from several threads.
"""

from __future__ import annotations

import itertools
import threading

from .errors import SandboxError
from .settings import check


class KernelLimitReached(SandboxError):
    """A launch refused because this process already runs ``max_kernels`` kernels."""


def check_max_kernels(value: object) -> int:
    """``max_kernels`` as a whole number from 0 (no limit) to its bound (``settings.py``)."""
    checked: int = check("max_kernels", value)
    return checked


class KernelSlots:
    """The kernels holding a slot in this process."""

    def __init__(self) -> None:
        self._held: set[int] = set()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def acquire(self, limit: int) -> int:
        """Take a slot (``limit`` 0: no limit); return its token for :meth:`release`."""
        limit = check_max_kernels(limit)
        with self._lock:
            if limit and len(self._held) >= limit:
                raise KernelLimitReached(
                    f"max_kernels={limit}: this Jupyter server already runs {len(self._held)} "
                    "sandboxed kernel(s), its limit. Shut one down (e.g. JupyterLab's Running "
                    "Terminals and Kernels panel) and start this one again"
                )
            token = next(self._ids)
            self._held.add(token)
            return token

    def release(self, token: int | None) -> None:
        """Give a slot back; ``None`` or a token already released is ignored."""
        if token is not None:
            with self._lock:
                self._held.discard(token)

    def in_use(self) -> int:
        with self._lock:
            return len(self._held)


SLOTS = KernelSlots()  # the one per process, used by the provisioner
