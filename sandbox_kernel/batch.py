"""``jupyter nbconvert --execute --allow-errors`` keeps going after a sandbox is stopped.

nbclient (nbconvert's executor) asks every second whether the kernel lives; once it does
not, it raises DeadKernelError and nbconvert writes no output notebook at all. When the
host stopped a sandbox for a reason it knows (its memory limit: ``endings.py``), the
relay has already answered the running request with that reason (``relay/iopub.py``), so
the cell records it as an error. :class:`RestartingClient` then restarts the kernel where
nbclient finds it dead, or before nbclient sends it the next cell, whichever comes
first, as JupyterLab's restarter would: the later cells run in a fresh kernel (what they
need from earlier cells fails, as after a restart in JupyterLab) and the notebook is
written. A kernel that ended for a reason the host does not know, or is
being shut down, is reported dead as before.

Who calls what: ``sandbox-kernel install`` calls :func:`install_nbconvert_config`, which
names :class:`RestartingClient` as ``AsyncKernelManager.client_factory`` (nbclient's
default manager) in the ``jupyter_nbconvert_config.json`` of the same scope as the
kernelspec (user, prefix or system); nbconvert loads that file, nbclient's manager makes
its client of that class, and nbclient asks it ``is_alive`` and awaits its ``execute``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.manager import AsyncKernelManager

from .errors import SandboxError
from .kernelspec import make_readable_dirs
from .relay.iopub import stopped_text

CONFIG_FILE = "jupyter_nbconvert_config.json"
SECTION = "AsyncKernelManager"  # nbclient's default kernel manager
KEY = "client_factory"
CLIENT = f"{__name__}.RestartingClient"


class RestartingClient(AsyncKernelClient):
    """nbclient's client: a kernel its sandbox's host stopped, for a reason it told this
    client, is restarted where nbclient would give up, and before this client sends it
    another request.

    Why before: the relay's reply to the running request comes on the old shell
    connection, which the relay then closes; nbclient sends the next cell's request as
    soon as it has that reply, and a request that ZeroMQ writes into that connection
    before it sees it closed is lost (a DEALER does not resend), so nbclient, without a
    timeout, would wait for its reply forever. A request sent after the restart waits in
    ZeroMQ's queue until the new sandbox's kernel is connected."""

    # Requests sent, newest last: one of them answered by the relay is what allows a
    # restart (nbclient has that reply; without it, it would wait for one forever).
    KEPT = 16
    # How long to wait for the relay to have told the clients, and for the stopped
    # sandbox to be seen gone, once the host knows why it ended (both take milliseconds).
    SETTLE_SECONDS = 10.0

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sent: list[str] = []

    async def execute(self, *args: Any, **kwargs: Any) -> str:  # type: ignore[override]
        """As jupyter_client's, after restarting a stopped sandbox's kernel (nbclient
        awaits what ``execute`` returns)."""
        await self._restart_if_stopped()
        msg_id = str(super().execute(*args, **kwargs))
        self.sent = [*self.sent[-(self.KEPT - 1) :], msg_id]
        return msg_id

    async def _async_is_alive(self) -> bool:
        if await super()._async_is_alive():
            return True
        return await self._restart_if_stopped() and bool(await super()._async_is_alive())

    is_alive = _async_is_alive

    async def _restart_if_stopped(self) -> bool:
        """Restart the kernel if the relay answered one of this client's requests with why
        its sandbox was stopped (it ends then, if it has not yet); True if restarted."""
        km = self.parent
        provisioner = getattr(km, "provisioner", None)
        session = getattr(provisioner, "session", None)
        if not isinstance(km, AsyncKernelManager) or km.shutting_down or session is None:
            return False
        if not session.explained.is_set():
            if getattr(provisioner, "end_reason", None) is None or await km.is_alive():
                return False  # running, or ended for no reason the host knows
            # Ended for a known reason: the relay is writing it (explain, on its thread).
            if not await _within(self.SETTLE_SECONDS, _now(session.explained.is_set)):
                return False
        if not set(self.sent) & session.answered:
            return False
        # Told (possibly by a container event before the pipe closed): wait for its end.
        if not await _within(self.SETTLE_SECONDS, lambda: _not(km.is_alive())):
            return False
        reason = getattr(provisioner, "end_reason", None) or "its host stopped it"
        km.log.warning("%s; restarting it for the cells that follow", stopped_text(reason))
        await km.restart_kernel(now=True)
        return True


async def _not(alive: Awaitable[bool]) -> bool:
    return not await alive


def _now(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def checked() -> bool:
        return check()

    return checked


async def _within(seconds: float, done: Callable[[], Awaitable[bool]]) -> bool:
    """Poll ``done`` (without blocking the loop) until it is True; False after ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await done():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def config_dir(user: bool, prefix: str | None) -> str:
    """Where Jupyter reads config of the scope kernelspecs go to with these options."""
    from jupyter_core.paths import SYSTEM_CONFIG_PATH, jupyter_config_dir

    if user:
        return jupyter_config_dir()
    if prefix:
        return os.path.join(prefix, "etc", "jupyter")
    return SYSTEM_CONFIG_PATH[0]


def install_nbconvert_config(user: bool, prefix: str | None) -> str | None:
    """Name :data:`CLIENT` in that scope's nbconvert config, keeping the rest of the
    file; return its path, or None when it names another client already (left as is,
    with a warning)."""
    path = os.path.join(config_dir(user, prefix), CONFIG_FILE)
    try:
        with open(path) as f:
            config = json.load(f)
    except FileNotFoundError:
        config = {}
    except (OSError, ValueError) as exc:
        raise SandboxError(f"cannot read {path}: {exc}; fix or remove it") from None
    section = config.setdefault(SECTION, {}) if isinstance(config, dict) else None
    if not isinstance(section, dict):
        raise SandboxError(f"{path} is not a Jupyter JSON config file; fix or remove it")
    current = section.get(KEY)
    if current == CLIENT:
        return path
    if current is not None:
        print(
            f"sandbox-kernel: warning: {path} sets {SECTION}.{KEY} = {current!r}: "
            f"nbconvert --execute stops at a kernel stopped by its limits (set it to {CLIENT})",
            file=sys.stderr,
        )
        return None
    section[KEY] = CLIENT
    if user:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    else:  # other users' nbconvert reads it too, whatever the installing shell's umask
        make_readable_dirs(os.path.dirname(path))
    with open(path + ".tmp", "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    os.chmod(path + ".tmp", 0o644)
    os.replace(path + ".tmp", path)
    return path
