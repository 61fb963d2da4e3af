# jupyterhub_config.py, recipe (b) of docs/jupyterhub.md: the Docker backend, for hosts
# that must use Docker. Each user's server runs as a login-less system account in the
# `docker` group: that account is root-equivalent, so no human may ever run code as it
# (no shell, no SSH, no terminals; people authenticate to the hub, never to the system).
# Loaded and applied to JupyterHub's LocalProcessSpawner by
# tests/integration/test_hub_config.py; recipe (a) is the one run in a real hub.
c = get_config()  # noqa: F821 (provided by traitlets when the file is loaded)

c.JupyterHub.bind_url = "http://127.0.0.1:8000"  # behind a TLS-terminating proxy
c.JupyterHub.spawner_class = "jupyterhub.spawner.LocalProcessSpawner"
# Authentication: anything but the system's own (e.g. OAuthenticator); the accounts have
# no password and no shell (`useradd --system --create-home --shell /usr/sbin/nologin
# --groups docker <name>`, then `mkdir ~<name>/notebooks` owned by it).

c.Spawner.cmd = ["/opt/sandbox-kernel/venv/bin/jupyterhub-singleuser"]
c.Spawner.default_url = "/lab"
c.Spawner.notebook_dir = "~/notebooks"  # the file browser's root: ~/.jupyter stays outside

# The server's configuration comes from the admin's file only: the account's own
# ~/.jupyter (Python the server would run) is ignored. Terminals stay off (the shared
# server config's default): a terminal here would be a shell in the docker group.
c.Spawner.disable_user_config = True
c.Spawner.args = ["--config=/etc/jupyter/sandbox/jupyter_server_config.py"]
c.Spawner.environment = {"JUPYTER_PATH": "/usr/local/share/jupyter"}
