# jupyterhub_config.py (excerpt): single-user servers whose kernels are all sandboxed.
# See docs/jupyterhub.md. Loaded and applied to JupyterHub's Spawner class by
# tests/integration/test_hub_config.py (JupyterHub itself is not run there).
c = get_config()  # noqa: F821 (provided by traitlets when the file is loaded)

c.JupyterHub.bind_url = "http://127.0.0.1:8000"  # behind a TLS-terminating proxy
c.JupyterHub.spawner_class = "jupyterhub.spawner.LocalProcessSpawner"

# Each single-user server runs as its user's login-less system account (see the guide:
# that account can reach dockerd, so the human must never get a shell as it).
c.Spawner.default_url = "/lab"
c.Spawner.notebook_dir = "~/notebooks"  # the file browser's root: ~/.jupyter stays outside

# The server's configuration comes from an admin-owned folder only: the user's own
# ~/.jupyter (Python the server would run) is ignored.
c.Spawner.disable_user_config = True
c.Spawner.environment = {
    "JUPYTER_CONFIG_DIR": "/etc/jupyter/sandbox",
    "JUPYTER_PATH": "/usr/local/share/jupyter",
}
c.Spawner.args = ["--config=/etc/jupyter/sandbox/jupyter_server_config.py"]
