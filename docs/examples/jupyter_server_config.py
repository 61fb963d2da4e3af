# jupyter_server_config.py for single-user servers of untrusted users (e.g. under
# JupyterHub): every kernel sandboxed, no terminals, no way to pick or plant another
# kernel. See docs/jupyterhub.md; tested by tests/integration/test_hub_config.py.
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

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
c.MappingKernelManager.default_kernel_name = SANDBOXED_KERNELS[0]

# A terminal is a shell on the host as the server's user: no terminals.
c.ServerApp.terminals_enabled = False

# Hidden files and folders (~/.jupyter, ~/.local, ~/.ssh, ...) stay out of reach of the
# file browser and the contents API: a user could otherwise write a config file, which is
# Python the server runs at its next start, or a kernelspec.
c.ContentsManager.allow_hidden = False

# Kernels that sit idle are shut down (their sandboxes removed) after an hour.
c.MappingKernelManager.cull_idle_timeout = 3600
c.MappingKernelManager.cull_interval = 300
