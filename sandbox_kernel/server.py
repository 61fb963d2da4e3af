"""Jupyter Server classes for hosts where users are untrusted (JupyterHub, courses).

Set in the single-user server's ``jupyter_server_config.py`` (see
docs/jupyterhub.md and docs/examples/)::

    c.ServerApp.kernel_spec_manager_class = "sandbox_kernel.server.SandboxedOnlyKernelSpecManager"
    c.ServerApp.kernel_manager_class = "sandbox_kernel.server.ForgetFailedStartsKernelManager"
    c.KernelSpecManager.allowed_kernelspecs = {"sandbox-python"}
    c.SandboxedOnlyKernelSpecManager.admin_kernel_dirs = ["/usr/local/share/jupyter/kernels"]

Importing this module needs jupyter_server (``pip install sandbox-kernel[server]``).
Found by tests/integration/test_hub_config.py, which runs a real server with them.
"""

from __future__ import annotations

from typing import Any

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from traitlets import List, Unicode


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
