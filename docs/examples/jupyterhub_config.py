# jupyterhub_config.py, recipe (a) of docs/jupyterhub.md: real Unix users (terminals
# allowed), every kernel in a rootless gVisor sandbox (backend runsc). A user's server
# holds no privilege beyond the user's own: no Docker socket, no root helper, so a bug in
# Jupyter gives nobody root. The hub runs as root from the same venv:
#   /opt/sandbox-kernel/venv/bin/jupyterhub -f /etc/jupyterhub/jupyterhub_config.py
# Installed by scripts/hub-setup.sh. Site-specific values (the hub's domain, its address)
# go in jupyterhub_site_config.py beside this file, loaded last (the end of this file), so
# this file stays as it is. Run for real by tests/integration/test_hub.py: this file as it
# is, plus a site file of the test's own ports, paths and smaller sizes.
c = get_config()  # noqa: F821 (provided by traitlets when the file is loaded)

c.JupyterHub.bind_url = "http://127.0.0.1:8000"  # behind a TLS-terminating proxy
# Each user's server on an origin of its own (https://<user>.hub.example.org/user/<user>/):
# a user controls their server (their terminal is theirs), so a page it serves must not
# share the hub's origin, its cookies and its API. Needs a wildcard DNS record and a
# wildcard TLS certificate for *.hub.example.org (docs/jupyterhub.md).
c.JupyterHub.subdomain_host = "https://hub.example.org"
# Login cookies as __Host-: a user's subdomain cannot set one for the hub or another user's
# server. They must be Secure, also the servers' OAuth state cookies (JupyterHub marks
# those only if it sees https; served over https, this changes nothing).
c.JupyterHub.cookie_host_prefix_enabled = True
c.JupyterHub.tornado_settings = {"cookie_options": {"secure": True}}
# Authentication: the default PAM authenticator (people log in as their Unix accounts),
# open to the members of this group only (JupyterHub lets nobody in without an allow
# config). Add a student: useradd --create-home --groups jupyterhub-users NAME && passwd NAME
c.LocalAuthenticator.allowed_groups = {"jupyterhub-users"}

# LocalProcessSpawner (each server runs as its user) that first puts the server in
# cgroups delegated to the user, with these totals: the server, every sandbox of its
# kernels (each also held to its own kernelspec caps) and every terminal process share
# them, and the user can neither leave them nor raise them (sandbox_kernel/hub.py).
c.JupyterHub.spawner_class = "sandbox_kernel.hub.UserCgroupSpawner"
c.UserCgroupSpawner.user_memory_limit = "4g"
c.UserCgroupSpawner.user_cpu_limit = 2.0
c.UserCgroupSpawner.user_pids_limit = 2048

# Each user's server runs as that user from the venv every user can run
# (scripts/shared-venv.sh), not from a Python under /root.
c.Spawner.cmd = ["/opt/sandbox-kernel/venv/bin/jupyterhub-singleuser"]
c.Spawner.default_url = "/lab"

# The server's configuration: the admin's file only (the user's own ~/.jupyter would not
# give the user more than their terminal does, but keeps every server alike).
c.Spawner.disable_user_config = True
c.Spawner.args = [
    "--config=/etc/jupyter/sandbox/jupyter_server_config.py",
    # Terminals, off in the shared server config, are the user's own shell here: no more
    # than SSH gives a real user of the host.
    "--ServerApp.terminals_enabled=True",
]
# Not JUPYTER_CONFIG_DIR: jupyter_core writes into the config folder (its migration
# marker), and a root-owned one fails every server start after the first.
c.Spawner.environment = {"JUPYTER_PATH": "/usr/local/share/jupyter"}

# The hub's own state in a folder only root can enter (made by
# scripts/hub-setup.sh: `install -d -m 700`), not the folder the hub was started from: its
# database (users, tokens), cookie secret and pid files.
c.JupyterHub.db_url = "sqlite:////var/lib/sandbox-kernel-hub/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "/var/lib/sandbox-kernel-hub/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = "/var/lib/sandbox-kernel-hub/jupyterhub.pid"
c.ConfigurableHTTPProxy.pid_file = "/var/lib/sandbox-kernel-hub/jupyterhub-proxy.pid"

# Last: this site's own values (c.JupyterHub.subdomain_host, c.JupyterHub.bind_url, ...)
# from jupyterhub_site_config.py in this file's folder, if there is one (written by
# scripts/hub-setup.sh from HUB_DOMAIN, HUB_BIND_URL; edited by the administrator).
# (A name without a folder would be looked for in the folder the hub is started from.)
load_subconfig(__file__.rpartition("/")[0] + "/jupyterhub_site_config.py")  # noqa: F821
