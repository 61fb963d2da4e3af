"""One background event loop per process that hosts every relay.

Why a thread: jupyter_client's synchronous KernelManager (used by
``jupyter console`` and scripts) runs its coroutines on a loop that only turns
while a call is in progress, so listeners on the caller's loop would stall
between calls. The relay's own loop keeps the ports served no matter who calls,
and keeps relay traffic off the Jupyter server's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class RelayThread:
    _instance: RelayThread | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="sandbox-kernel-relay", daemon=True)
        self._thread.start()

    @classmethod
    def get(cls) -> RelayThread:
        with cls._lock:
            if cls._instance is None or not cls._instance._thread.is_alive():
                cls._instance = cls()
            return cls._instance

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the relay loop from any other loop."""
        return await asyncio.wrap_future(self.submit(coro))
