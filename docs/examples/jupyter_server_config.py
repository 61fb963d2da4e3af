# jupyter_server_config.py for single-user servers of untrusted users (e.g. under
# JupyterHub): every kernel sandboxed, no terminals, no way to pick or plant another
# kernel. Both recipes of docs/jupyterhub.md use it; tested in a plain jupyter_server by
# tests/integration/test_hub_config.py and under a real hub by tests/integration/test_hub.py.
c = get_config()  # noqa: F821 (provided by traitlets when the file is loaded)

# Admin-owned, root-owned kernelspecs only, and only these names.
ADMIN_KERNEL_DIRS = ["/usr/local/share/jupyter/kernels"]
SANDBOXED_KERNELS = ["sandbox-python"]
c.KernelSpecManager.allowed_kernelspecs = set(SANDBOXED_KERNELS)
c.KernelSpecManager.ensure_native_kernel = False


# Kernelspecs only from admin folders, and a by-name start of anything not allowed
# (e.g. the built-in "python3", unsandboxed) refused: see sandbox_kernel/server.py.
c.SandboxedOnlyKernelSpecManager.admin_kernel_dirs = ADMIN_KERNEL_DIRS
c.ServerApp.kernel_spec_manager_class = "sandbox_kernel.server.SandboxedOnlyKernelSpecManager"


# A failed kernel start must not hang the server's shutdown (sandbox_kernel/server.py).
c.ServerApp.kernel_manager_class = "sandbox_kernel.server.ForgetFailedStartsKernelManager"
c.MappingKernelManager.default_kernel_name = SANDBOXED_KERNELS[0]

# A kernel start that is refused (a name not allowed, max_kernels reached) is answered with
# a 4xx that says why, on /api/kernels and /api/sessions alike (jupyter_server alone
# answers 500 "Unhandled error" or 501).
c.ServerApp.jpserver_extensions.update({"sandbox_kernel.server": True})

# The server's 127.0.0.1 port is open to every local user, and tornado reads a request's
# whole body before anything authenticates it: only this server's user and root (the
# hub's proxy and the hub) are served, every other user's connection is reset before a
# byte of it is read (sandbox_kernel/server_peers.py); and no request body or read buffer
# may pass 64 MiB (jupyter_server's default is 512 MiB; a larger body gets a 400 and is
# not read). Notebooks are saved in one request; uploads go in 1 MiB chunks.
c.ServerApp.jpserver_extensions.update({"sandbox_kernel.server_peers": True})
c.ServerApp.max_body_size = 64 * 1024 * 1024
c.ServerApp.max_buffer_size = 64 * 1024 * 1024

# At most this many sandboxed kernels per server; the next start is refused (403) until
# one is shut down. Each also keeps pool_size warm sandboxes per kernelspec (default 1).
c.SandboxProvisioner.max_kernels = 4

# A terminal is a shell on the host as the server's user: off unless the hub turns it on
# (recipe (a), real Unix users: their own shell; never in recipe (b), Docker accounts).
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
