"""The `sandbox-kernel` command without a sandbox: install is validated, idempotent and
visible to Jupyter; every command has help and one exit-code convention. Running notebooks
and gc against real sandboxes: tests/integration/test_cli.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import cli, kernelspecs


def test_install_shows_in_jupyter_kernelspec_list(tmp_path: Path) -> None:
    r = cli("install", "--prefix", str(tmp_path), "--name", "sandbox-test", "--memory", "1g")
    assert r.returncode == 0, r.stderr
    spec = kernelspecs(tmp_path)["sandbox-test"]["spec"]
    assert spec["display_name"] == "Python 3 (sandboxed)"
    provisioner = spec["metadata"]["kernel_provisioner"]
    assert provisioner["provisioner_name"] == "sandbox-provisioner"
    assert provisioner["config"]["memory_limit"] == "1g"
    # Idempotent: the same install again changes nothing.
    again = cli("install", "--prefix", str(tmp_path), "--name", "sandbox-test", "--memory", "1g")
    assert again.returncode == 0 and "already installed" in again.stdout
    # A different one needs --replace.
    other = cli("install", "--prefix", str(tmp_path), "--name", "sandbox-test", "--memory", "2g")
    assert other.returncode == 1 and "--replace" in other.stderr
    replaced = cli(
        "install",
        "--prefix",
        str(tmp_path),
        "--name",
        "sandbox-test",
        "--memory",
        "2g",
        "--replace",
    )
    assert replaced.returncode == 0
    assert (
        kernelspecs(tmp_path)["sandbox-test"]["spec"]["metadata"]["kernel_provisioner"]["config"][
            "memory_limit"
        ]
        == "2g"
    )


def test_installing_python3_makes_the_sandbox_the_environments_default(tmp_path: Path) -> None:
    """``install --name python3`` into an environment also writes the ``.pth`` that keeps
    the sandbox the default when ipykernel's wheel rewrites python3; other names do not."""
    from sandbox_kernel.kernelspec import DEFAULT_PTH

    other = cli("install", "--prefix", str(tmp_path), "--name", "sandbox-test")
    assert other.returncode == 0, other.stderr
    assert not list(tmp_path.rglob(DEFAULT_PTH))
    r = cli("install", "--prefix", str(tmp_path), "--name", "python3")
    assert r.returncode == 0, r.stderr
    [pth] = list(tmp_path.rglob(DEFAULT_PTH))
    assert "site-packages" in pth.parts and str(pth) in r.stdout


def test_install_host_is_the_explicit_named_opt_out(tmp_path: Path) -> None:
    """``install --host``: the host's ipykernel naming the local provisioner (so it stays on
    the host where the sandbox is the default), never as python3, with no sandbox setting."""
    r = cli("install", "--prefix", str(tmp_path), "--host", "--name", "python3-host")
    assert r.returncode == 0 and "NOT sandboxed" in r.stdout, r.stderr
    spec = kernelspecs(tmp_path)["python3-host"]["spec"]
    assert spec["metadata"]["kernel_provisioner"]["provisioner_name"] == "local-provisioner"
    assert spec["argv"][0] == sys.executable and "HOST" in spec["display_name"]
    for refused, needle in (
        (["--name", "python3"], "--name of its own"),
        (["--name", "x-host", "--memory", "1g"], "drop memory_limit"),
    ):
        bad = cli("install", "--prefix", str(tmp_path), "--host", *refused)
        assert bad.returncode == 1 and needle in bad.stderr, bad.stderr
    written = tmp_path / "share" / "jupyter" / "kernels"
    assert [d.name for d in written.iterdir()] == ["python3-host"]  # nothing else written


def test_install_by_root_is_readable_by_every_user(tmp_path: Path) -> None:
    """A kernelspec installed for all users (--prefix, --sys-prefix) must be readable by
    other users' Jupyter servers, whatever the installing shell's umask (root's is often
    077): its folder 0755, kernel.json 0644, and the folders it created 0755."""
    r = subprocess.run(
        [sys.executable, "-m", "sandbox_kernel.cli.main", "install", "--prefix", str(tmp_path),
         "--name", "sandbox-shared"],
        capture_output=True, text=True, timeout=120, preexec_fn=lambda: os.umask(0o077),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    kernels = tmp_path / "share" / "jupyter" / "kernels"
    modes = {
        str(path.relative_to(tmp_path)): oct(path.stat().st_mode & 0o777)
        for path in (kernels.parent.parent, kernels.parent, kernels, kernels / "sandbox-shared",
                     kernels / "sandbox-shared" / "kernel.json")
    }  # fmt: skip
    assert modes == {
        "share": "0o755", "share/jupyter": "0o755", "share/jupyter/kernels": "0o755",
        "share/jupyter/kernels/sandbox-shared": "0o755",
        "share/jupyter/kernels/sandbox-shared/kernel.json": "0o644",
    }, modes  # fmt: skip
    # The nbconvert config install writes beside it (sandbox_kernel/batch.py).
    config = tmp_path / "etc" / "jupyter" / "jupyter_nbconvert_config.json"
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777)
             for p in (config.parent.parent, config.parent, config)}  # fmt: skip
    assert modes == {"etc": "0o755", "etc/jupyter": "0o755",
                     "etc/jupyter/jupyter_nbconvert_config.json": "0o644"}, modes  # fmt: skip


def test_install_with_a_malformed_limit_writes_nothing(tmp_path: Path) -> None:
    r = cli("install", "--prefix", str(tmp_path), "--name", "bad", "--memory", "lots")
    assert r.returncode == 1
    assert "memory_limit" in r.stderr
    assert not (tmp_path / "share").exists()


def test_repo_kernelspec_matches_what_install_writes() -> None:
    from sandbox_kernel.image.recipe import DEFAULT_IMAGE
    from sandbox_kernel.kernelspec import build_kernelspec

    repo = Path(__file__).resolve().parents[2]
    checked_in = json.loads((repo / "kernelspecs" / "sandbox-python" / "kernel.json").read_text())
    assert checked_in == build_kernelspec({"image": DEFAULT_IMAGE})


def test_install_with_exposed_ports_and_files(tmp_path: Path) -> None:
    r = cli(
        "install", "--prefix", str(tmp_path), "--name", "sk-app",
        "--expose", "8050", "--expose", "18050:8051", "--max-runtime-ports", "0",
        "--copy-in", "data.csv", "--copy-in-limit", "10m", "--export-limit", "0",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    config = kernelspecs(tmp_path)["sk-app"]["spec"]["metadata"]["kernel_provisioner"]["config"]
    assert config["expose_ports"] == ["8050", "18050:8051"]
    assert config["max_runtime_ports"] == 0 and config["export_limit"] == "0"
    assert config["copy_in"] == ["data.csv"] and config["copy_in_limit"] == "10m"
    for bad, named in (("15001", "ZeroMQ"), ("80:8050", "1024-65535"), ("web", "not a port")):
        r = cli("install", "--prefix", str(tmp_path / "bad"), "--expose", bad)
        assert r.returncode == 1 and "expose_ports" in r.stderr and named in r.stderr, r.stderr
    assert not (tmp_path / "bad").exists()


def test_every_command_has_help_and_one_exit_code_convention(tmp_path: Path) -> None:
    top = cli("--help")
    assert top.returncode == 0 and "exit status" in top.stdout
    commands = ["install", "image", "setup-host", "doctor", "ps", "gc", "run"]
    for command in commands:
        assert command in top.stdout
        r = cli(*command.split(), "--help")
        assert r.returncode == 0 and "usage: sandbox-kernel" in r.stdout, (command, r.stderr)
    assert cli("image", "build", "--help").returncode == 0
    assert cli("no-such-command").returncode == 2  # argparse: bad command line
    assert cli("install", "--cpus", "many").returncode == 2
    failed = cli("run", str(tmp_path / "missing.ipynb"))
    assert failed.returncode == 1 and failed.stderr.startswith("sandbox-kernel: error:"), failed


def test_gc_fails_when_it_cannot_look() -> None:
    """A wrong DOCKER_HOST: gc could not look for leftovers, so it says so, naming
    DOCKER_HOST, and exits 1 (it used to print a warning and exit 0)."""
    r = cli("gc", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "docker sandboxes not checked" in r.stderr
    assert "DOCKER_HOST='unix:///nonexistent/docker.sock'" in r.stderr, r.stderr
