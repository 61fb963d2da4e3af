"""scripts/hub-setup.sh's files (``--configs-only ROOT``: everything it writes, under a
temporary root): the example configs as they are, the site file from HUB_DOMAIN that
the example loads last, an allow config JupyterHub's PAM authenticator counts, the
root-only state folder and the systemd unit; an administrator's site file is kept. Both
recipes' hub configs load into their spawner classes."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
from pathlib import Path

import pytest
from traitlets.config import Application, Config
from traitlets.config.loader import PyFileConfigLoader

from tests.helpers import EXAMPLES, REPO

SCRIPT = REPO / "scripts" / "hub-setup.sh"
HUB_ETC = Path("etc/jupyterhub")
SERVER_CONFIG = Path("etc/jupyter/sandbox/jupyter_server_config.py")


def setup(root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    return subprocess.run(
        ["bash", str(SCRIPT), "--configs-only", str(root)],
        capture_output=True, text=True, timeout=60, env={**clean, **env},
    )  # fmt: skip


def hub_config(root: Path) -> Config:
    """The installed hub config as JupyterHub loads it (``-f PATH``, from another folder:
    the test's is the repository's), the site file included."""
    assert Path.cwd() != root / HUB_ETC
    app = Application()
    app.load_config_file(str(root / HUB_ETC / "jupyterhub_config.py"))
    return app.config


def test_the_examples_are_installed_as_they_are_with_a_site_file(tmp_path: Path) -> None:
    done = setup(tmp_path, HUB_DOMAIN="hub.school.example", HUB_BIND_URL="http://10.0.0.5:8000")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / HUB_ETC / "jupyterhub_config.py").read_bytes() == (
        EXAMPLES / "jupyterhub_config.py"
    ).read_bytes()
    assert (tmp_path / SERVER_CONFIG).read_bytes() == (
        EXAMPLES / "jupyter_server_config.py"
    ).read_bytes()
    config = hub_config(tmp_path)
    assert config.JupyterHub.subdomain_host == "https://hub.school.example"
    assert config.JupyterHub.bind_url == "http://10.0.0.5:8000"
    state = tmp_path / "var/lib/sandbox-kernel-hub"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert config.JupyterHub.db_url == "sqlite:////var/lib/sandbox-kernel-hub/jupyterhub.sqlite"
    unit = (tmp_path / "etc/systemd/system/sandbox-kernel-hub.service").read_text()
    assert (
        "ExecStart=/opt/sandbox-kernel/venv/bin/jupyterhub -f /etc/jupyterhub/jupyterhub_config.py"
        in unit.splitlines()
    ), unit


def test_the_example_lets_the_allowed_group_log_in_with_pam(tmp_path: Path) -> None:
    """JupyterHub 5 and later let nobody in without an allow config ("No allow config
    found", and the login page says only "Invalid username or password")."""
    from jupyterhub.auth import PAMAuthenticator

    assert setup(tmp_path, HUB_DOMAIN="localhost").returncode == 0
    config = hub_config(tmp_path)
    assert config.JupyterHub.subdomain_host == "http://localhost:8000"
    authenticator = PAMAuthenticator(config=config)
    assert authenticator.allowed_groups == {"jupyterhub-users"}
    assert authenticator.any_allow_config
    assert not authenticator.allow_all


def test_an_administrators_site_file_is_kept(tmp_path: Path) -> None:
    assert setup(tmp_path, HUB_DOMAIN="hub.school.example").returncode == 0
    site = tmp_path / HUB_ETC / "jupyterhub_site_config.py"
    site.write_text('c.JupyterHub.subdomain_host = "https://jupyter.school.example"\n')
    installed = tmp_path / HUB_ETC / "jupyterhub_config.py"
    installed.write_text(installed.read_text() + "c.JupyterHub.allow_all = True\n")
    again = setup(tmp_path, HUB_DOMAIN="other.example")
    assert again.returncode == 0, again.stderr
    assert hub_config(tmp_path).JupyterHub.subdomain_host == "https://jupyter.school.example"
    # An edited example is replaced by the example (its old text kept beside it).
    assert installed.read_bytes() == (EXAMPLES / "jupyterhub_config.py").read_bytes()
    kept = list(installed.parent.glob("jupyterhub_config.py.replaced-*"))
    assert len(kept) == 1 and "allow_all = True" in kept[0].read_text(), kept
    assert "left as it is" in again.stderr


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "HUB_DOMAIN"),
        ({"HUB_DOMAIN": 'hub.example.org"; import os'}, "HUB_DOMAIN"),
        ({"HUB_DOMAIN": "hub.example.org", "HUB_BIND_URL": "0.0.0.0"}, "HUB_BIND_URL"),
    ],
)
def test_a_missing_or_bad_site_value_is_refused_before_anything_is_written(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    done = setup(tmp_path / "root", **env)
    assert done.returncode != 0
    assert named in done.stderr, done.stderr
    assert not (tmp_path / "root").exists() or not any((tmp_path / "root").iterdir())


@pytest.mark.parametrize("example", ["jupyterhub_config.py", "jupyterhub_config_docker.py"])
def test_hub_config_examples_load(example: str, caplog: pytest.LogCaptureFixture) -> None:
    """Both recipes' hub configs, loaded by traitlets and applied to JupyterHub's
    LocalProcessSpawner, whose traitlets warn about any option it does not know (recipe (a)
    also runs in a real hub: tests/integration/test_hub.py)."""
    from jupyterhub.spawner import LocalProcessSpawner

    from sandbox_kernel.hub import UserCgroupSpawner

    path = EXAMPLES / example
    config = PyFileConfigLoader(path.name, str(path.parent)).load_config()
    spawner_class = {
        "sandbox_kernel.hub.UserCgroupSpawner": UserCgroupSpawner,
        "jupyterhub.spawner.LocalProcessSpawner": LocalProcessSpawner,
    }[config.JupyterHub.spawner_class]
    with caplog.at_level(logging.WARNING):
        spawner = spawner_class(config=config)
    assert not [r for r in caplog.records if "not recognized" in r.getMessage()], caplog.text
    # Recipe (a) bounds each user's processes (sandboxes, terminals) in cgroups of their own.
    assert (spawner_class is UserCgroupSpawner) == (example == "jupyterhub_config.py")
    assert config.JupyterHub.bind_url.startswith("http://127.0.0.1:")
    assert spawner.cmd == ["/opt/sandbox-kernel/venv/bin/jupyterhub-singleuser"]
    assert spawner.disable_user_config is True
    assert "--config=/etc/jupyter/sandbox/jupyter_server_config.py" in spawner.args
    # A root-owned JUPYTER_CONFIG_DIR fails every start after the first (jupyter_core
    # writes its migration marker there): tests/integration/test_hub.py restarts servers.
    assert "JUPYTER_CONFIG_DIR" not in spawner.environment
    terminals = "--ServerApp.terminals_enabled=True" in spawner.args
    # Real Unix users get their shell; Docker accounts never (root-equivalent).
    assert terminals == (example == "jupyterhub_config.py")
