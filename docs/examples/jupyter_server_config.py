# jupyter_server_config.py for single-user servers of untrusted users (e.g. under
# JupyterHub): every kernel sandboxed, no terminals, no way to pick or plant another
# kernel. See docs/jupyterhub.md; tested by tests/integration/test_hub_config.py.
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager

c = get_config()  # noqa: F821 (provided by traitlets when the file is loaded)

# Admin-owned, root-owned kernelspecs only, and only these names.
ADMIN_KERNEL_DIRS = ["/usr/local/share/jupyter/kernels"]
SANDBOXED_KERNELS = ["sandbox-python"]
c.KernelSpecManager.allowed_kernelspecs = set(SANDBOXED_KERNELS)
c.KernelSpecManager.ensure_native_kernel = False


class SandboxedOnlyKernelSpecManager(KernelSpecManager):  # type: ignore[misc]
    """Two gaps of the stock KernelSpecManager, closed:

    - its search path starts with the user's own ~/.local/share/jupyter/kernels (on a
      system-wide install), where a user could plant a kernel.json named "sandbox-python"
      that runs on the host; ``kernel_dirs`` is not a configurable trait, so it is set here;
    - ``allowed_kernelspecs`` only filters the list the UI shows: a client asking by name
      (POST /api/kernels {"name": "python3"}) still gets jupyter_client's built-in local,
      unsandboxed ipykernel. Any name not allowed is refused.
    """

    def _kernel_dirs_default(self) -> list[str]:
        return list(ADMIN_KERNEL_DIRS)

    def get_kernel_spec(self, kernel_name: str):  # type: ignore[no-untyped-def]
        if kernel_name not in self.allowed_kernelspecs:
            raise NoSuchKernel(kernel_name)
        return super().get_kernel_spec(kernel_name)


c.ServerApp.kernel_spec_manager_class = SandboxedOnlyKernelSpecManager


class ForgetFailedStartsKernelManager(AsyncMappingKernelManager):  # type: ignore[misc]
    """jupyter_client keeps a kernel whose start failed (a refused name, a sandbox that
    could not launch) in its pending list; when the server shuts down with any kernel
    still running, shutting that phantom down fails (404) and the server never exits,
    not even on SIGTERM. Forget failed starts."""

    async def _add_kernel_when_ready(self, kernel_id, km, kernel_awaitable):  # type: ignore[no-untyped-def]
        await super()._add_kernel_when_ready(kernel_id, km, kernel_awaitable)
        if kernel_id not in self._kernels:  # the start failed (logged by the superclass)
            self._pending_kernels.pop(kernel_id, None)


c.ServerApp.kernel_manager_class = ForgetFailedStartsKernelManager
c.MappingKernelManager.default_kernel_name = SANDBOXED_KERNELS[0]

# A terminal is a shell on the host as the server's user: no terminals.
c.ServerApp.terminals_enabled = False

# Hidden files and folders (~/.jupyter, ~/.local, ~/.ssh, ...) stay out of reach of the
# file browser and the contents API: a user could otherwise write a config file, which is
# Python the server runs at its next start, or a kernelspec.
c.ContentsManager.allow_hidden = False

# No run-time ports: on a shared machine a kernel's sandboxed.expose() would open a port
# on the server host's 127.0.0.1, where users' browsers are not, and where it shares cookies
# and "site" with anything else served on 127.0.0.1 (docs/exchange.md). Exports stay on:
# they land in the user's own notebook folder.
c.SandboxProvisioner.max_runtime_ports = 0

# Kernels that sit idle are shut down (their sandboxes removed) after an hour.
c.MappingKernelManager.cull_idle_timeout = 3600
c.MappingKernelManager.cull_interval = 300
