"""``jupyter nbconvert --execute --allow-errors`` keeps going after a sandbox is stopped.

nbclient (nbconvert's executor) asks every second whether the kernel lives; once it does
not, it raises DeadKernelError and nbconvert writes no output notebook at all. When the
host stopped a sandbox for a reason it knows (its memory limit: ``endings.py``), the
relay has already answered the running request with that reason (``relay/iopub.py``), so
the cell records it as an error. :class:`RestartingClient` then restarts the kernel where
nbclient finds it dead, as JupyterLab's restarter would: the later cells run in a fresh
kernel (what they need from earlier cells fails, as after a restart in JupyterLab) and
the notebook is written. A kernel that ended for a reason the host does not know, or is
being shut down, is reported dead as before.

Who calls what: ``sandbox-kernel install`` calls :func:`install_nbconvert_config`, which
names :class:`RestartingClient` as ``AsyncKernelManager.client_factory`` (nbclient's
default manager) in the ``jupyter_nbconvert_config.json`` of the same scope as the
kernelspec (user, prefix or system); nbconvert loads that file, nbclient's manager makes
its client of that class and nbclient asks it ``is_alive``.
"""

from __future__ import annotations

import json
import os
import sys
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
    client, is restarted where nbclient would give up."""

    # Requests sent, newest last: one of them answered by the relay is what allows a
    # restart (nbclient has that reply; without it, it would wait for one forever).
    KEPT = 16

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sent: list[str] = []

    def execute(self, *args: Any, **kwargs: Any) -> str:
        msg_id = str(super().execute(*args, **kwargs))
        self.sent = [*self.sent[-(self.KEPT - 1) :], msg_id]
        return msg_id

    async def _async_is_alive(self) -> bool:
        if await super()._async_is_alive():
            return True
        km = self.parent
        provisioner = getattr(km, "provisioner", None)
        reason = getattr(provisioner, "end_reason", None)
        session = getattr(provisioner, "session", None)
        if (
            not isinstance(km, AsyncKernelManager)
            or km.shutting_down
            or reason is None
            or not set(self.sent) & getattr(session, "answered", set())
        ):
            return False
        km.log.warning("%s; restarting it for the cells that follow", stopped_text(reason))
        await km.restart_kernel(now=True)
        return bool(await super()._async_is_alive())

    is_alive = _async_is_alive


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
