"""Jupyter Server classes for hosts where users are untrusted (JupyterHub, courses).

Set in the single-user server's ``jupyter_server_config.py`` (see
docs/jupyterhub.md and docs/examples/)::

    c.ServerApp.kernel_spec_manager_class = "sandbox_kernel.server.SandboxedOnlyKernelSpecManager"
    c.ServerApp.kernel_manager_class = "sandbox_kernel.server.ForgetFailedStartsKernelManager"
    c.ServerApp.jpserver_extensions.update({"sandbox_kernel.server": True})
    c.KernelSpecManager.allowed_kernelspecs = {"sandbox-python"}
    c.SandboxedOnlyKernelSpecManager.admin_kernel_dirs = ["/usr/local/share/jupyter/kernels"]

As a server extension, this module answers a kernel start that is refused with a 4xx and
the reason, over every route a client can start a kernel by name: ``POST /api/kernels``,
``POST /api/sessions`` and ``PATCH /api/sessions/<id>`` (jupyter_server's own handlers
answer 500 "Unhandled error", 500 and 501). Its handlers are added after the server's
own, which tornado then tries first.

Importing this module needs jupyter_server (``pip install sandbox-kernel[server]``).
Found by tests/integration/test_hub_config.py and tests/integration/test_hub.py, which run
real servers with them.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from jupyter_server.auth.decorator import authorized
from jupyter_server.services.kernels.handlers import MainKernelHandler
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from jupyter_server.services.sessions.handlers import SessionHandler, SessionRootHandler
from jupyter_server.utils import url_path_join
from tornado import web
from traitlets import List, Unicode

from .errors import SandboxError
from .kernel_slots import KernelLimitReached


class SandboxedOnlyKernelSpecManager(KernelSpecManager):
    """Closes two gaps of the stock KernelSpecManager:

    - its search path starts with the user's own ``~/.local/share/jupyter/kernels`` (on a
      system-wide install), where a user could plant a kernel.json named like the
      sandboxed kernel that runs on the host; here kernelspecs come only from
      ``admin_kernel_dirs`` (``kernel_dirs`` itself is not configurable);
    - ``allowed_kernelspecs`` only filters the list the UI shows: a client asking by name
      (``POST /api/kernels {"name": "python3"}``) still gets jupyter_client's built-in
      local, unsandboxed ipykernel. Here any name not allowed is refused.
    """

    admin_kernel_dirs = List(
        Unicode(),
        default_value=["/usr/local/share/jupyter/kernels"],
        help="The only folders searched for kernelspecs: root-owned, not users'.",
    ).tag(config=True)

    def _kernel_dirs_default(self) -> list[str]:
        return list(self.admin_kernel_dirs)

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        if kernel_name not in self.allowed_kernelspecs:
            raise NoSuchKernel(kernel_name)
        spec: KernelSpec = super().get_kernel_spec(kernel_name)
        return spec


class ForgetFailedStartsKernelManager(AsyncMappingKernelManager):
    """jupyter_client keeps a kernel whose start failed (a refused name, a sandbox that
    could not launch) in its pending list; when the server shuts down with any kernel
    still running, shutting that phantom down fails (404) and the server never exits,
    not even on SIGTERM. Failed starts are forgotten."""

    async def _add_kernel_when_ready(self, kernel_id: str, km: Any, kernel_awaitable: Any) -> None:
        await super()._add_kernel_when_ready(kernel_id, km, kernel_awaitable)
        if kernel_id not in self._kernels:  # the start failed (logged by the superclass)
            self._pending_kernels.pop(kernel_id, None)


def refusal(ksm: KernelSpecManager, name: str) -> web.HTTPError | None:
    """Why a kernel named ``name`` may not start on this server (None: it may).

    403 for a name not in ``allowed_kernelspecs``; 404 for an allowed name whose kernelspec
    is not installed where the server looks."""
    allowed = sorted(getattr(ksm, "allowed_kernelspecs", None) or ())
    if allowed and name not in allowed:
        return web.HTTPError(
            403,
            f"kernel {name!r} is not allowed on this server: only sandboxed kernels run here "
            f"({', '.join(allowed)}). Pick one of those (Kernel > Change Kernel)",
            reason="Kernel not allowed",
        )
    try:
        ksm.get_kernel_spec(name)
    except NoSuchKernel:
        where = ", ".join(getattr(ksm, "kernel_dirs", None) or ()) or "the kernelspec folders"
        return web.HTTPError(
            404,
            f"kernel {name!r} is allowed but not installed in {where}: an administrator "
            "installs it with `sudo sandbox-kernel install --prefix /usr/local`",
            reason="No such kernel",
        )
    return None


def launch_refusal(exc: BaseException) -> web.HTTPError | None:
    """A failed start as an HTTP error that says why: max_kernels reached is the client's
    to fix (403); any other sandbox error is the host's (500), with its message instead of
    jupyter_server's "Unhandled error"."""
    cause = exc.__cause__ if isinstance(exc, web.HTTPError) else exc
    if isinstance(cause, KernelLimitReached):
        return web.HTTPError(403, str(cause), reason="Too many kernels")
    if isinstance(cause, SandboxError) and not isinstance(exc, web.HTTPError):
        return web.HTTPError(500, str(cause), reason="Sandboxed kernel did not start")
    return None


async def _done(step: Awaitable[None] | None) -> None:
    """jupyter_server's handler methods are coroutines; tornado types them as optional."""
    if step is not None:
        await step


async def _launching(step: Awaitable[None] | None) -> None:
    """Await a handler method of jupyter_server that starts a kernel; a failed start is
    raised as :func:`launch_refusal`'s error where it has one."""
    try:
        await _done(step)
    except Exception as exc:
        error = launch_refusal(exc)
        if error is None:
            raise
        raise error from exc


class _RefusingHandler:
    """Checks the kernel a request names before jupyter_server's handler starts it."""

    kernel_spec_manager: KernelSpecManager
    kernel_manager: Any

    def check_kernel(self, name: str | None) -> None:
        error = refusal(self.kernel_spec_manager, name or self.kernel_manager.default_kernel_name)
        if error is not None:
            raise error


class SandboxedKernelsHandler(_RefusingHandler, MainKernelHandler):
    """``POST /api/kernels``."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        model = self.get_json_body() or {}
        self.check_kernel(model.get("name"))
        await _launching(super().post())


class SandboxedSessionsHandler(_RefusingHandler, SessionRootHandler):
    """``POST /api/sessions`` (a new session starts the kernel it names, unless it names a
    running kernel by id)."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        kernel = (self.get_json_body() or {}).get("kernel") or {}
        if not kernel.get("id"):
            self.check_kernel(kernel.get("name"))
        await _launching(super().post())


class SandboxedSessionHandler(_RefusingHandler, SessionHandler):
    """``PATCH /api/sessions/<id>`` (changing a session's kernel by name starts it)."""

    @web.authenticated
    @authorized
    async def patch(self, session_id: str) -> None:
        kernel = (self.get_json_body() or {}).get("kernel") or {}
        if kernel.get("id") is None and kernel.get("name") is not None:
            self.check_kernel(kernel["name"])
        await _done(super().patch(session_id))


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "sandbox_kernel.server"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Called by jupyter_server when ``jpserver_extensions`` enables this module. tornado
    tries the rules added here before the server's default handlers."""
    base = serverapp.web_app.settings["base_url"]
    session_id = r"(?P<session_id>\w+-\w+-\w+-\w+-\w+)"
    serverapp.web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base, r"/api/kernels"), SandboxedKernelsHandler),
            (url_path_join(base, r"/api/sessions"), SandboxedSessionsHandler),
            (url_path_join(base, rf"/api/sessions/{session_id}"), SandboxedSessionHandler),
        ],
    )
    serverapp.log.info("sandbox_kernel.server: kernel starts checked against the allowed list")
