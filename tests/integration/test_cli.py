"""The `sandbox-kernel` command: install is validated, idempotent and visible to Jupyter."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import docker
import nbformat

from tests.helpers import REPO


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sandbox_kernel.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def kernelspecs(prefix: Path) -> dict:  # type: ignore[type-arg]
    env = {**os.environ, "JUPYTER_PATH": str(prefix / "share" / "jupyter")}
    out = subprocess.run(
        [sys.executable, "-m", "jupyter", "kernelspec", "list", "--json"],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)["kernelspecs"]  # type: ignore[no-any-return]


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


def test_run_executes_a_notebook_in_the_sandbox(tmp_path: Path, docker_client) -> None:  # type: ignore[no-untyped-def]
    kernels = tmp_path / "share" / "jupyter" / "kernels"
    assert cli("install", "--prefix", str(tmp_path)).returncode == 0
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import platform, os\nprint(platform.release(), os.getuid())")
    ]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    out = tmp_path / "out.ipynb"
    env = {"JUPYTER_PATH": str(tmp_path / "share" / "jupyter")}
    r = cli("run", str(path), "--output", str(out), env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    text = nbformat.read(out, as_version=4).cells[0].outputs[0]["text"]
    release, uid = text.split()
    assert release != os.uname().release and uid == "1000"
    assert kernels.exists()
    # ipykernel's standalone banner (a path that exists only inside the sandbox) is not
    # the user's business (the kernel's environment has JPY_PARENT_PID).
    for banner in ("Ctrl-C will not work", "To connect another client", "--existing"):
        assert banner not in r.stdout + r.stderr, r.stderr[-2000:]
    # ipykernel's warning is not true of the sandbox's own loopback (issue 20).
    assert "running over TCP without encryption" not in r.stdout + r.stderr, r.stderr[-2000:]


def notebook(folder: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    path = folder / "nb.ipynb"
    nbformat.write(nb, path)
    return path


def outputs(path: Path) -> list[list[dict]]:  # type: ignore[type-arg]
    return [cell.outputs for cell in nbformat.read(path, as_version=4).cells]


def test_run_for_grading_allow_errors_and_exit_codes(tmp_path: Path, docker_client) -> None:  # type: ignore[no-untyped-def]
    """A failing cell: exit code 1, the output notebook written either way; with
    --allow-errors the later cells run too; tracebacks in the file have no colour codes."""
    assert cli("install", "--prefix", str(tmp_path), "--pool-size", "0").returncode == 0
    env = {"JUPYTER_PATH": str(tmp_path / "share" / "jupyter")}
    path = notebook(tmp_path, "print('first')", "1/0", "print('after')")
    out = tmp_path / "out.ipynb"
    r = cli("run", str(path), "--output", str(out), env=env)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "ZeroDivisionError" in r.stdout + r.stderr
    assert [len(o) for o in outputs(out)] == [1, 1, 0]  # stopped at the failing cell
    r = cli("run", str(path), "--output", str(out), "--allow-errors", env=env)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "1 cell(s)" in r.stderr and r.stdout.index("first") < r.stdout.index("after")
    first, error, after = outputs(out)
    assert first[0]["text"] == "first\n" and after[0]["text"] == "after\n"
    assert error[0]["ename"] == "ZeroDivisionError"
    assert "\x1b[" not in out.read_text(), "colour codes in the output notebook"


def test_run_streams_output_and_ctrl_c_exits_130(tmp_path: Path, docker_client) -> None:  # type: ignore[no-untyped-def]
    """Output appears while the cell still runs; Ctrl-C then ends the run with 130, a
    one-line message (no traceback), the kernel's sandbox removed and the notebook so far
    written."""
    assert cli("install", "--prefix", str(tmp_path), "--pool-size", "0").returncode == 0
    path = notebook(tmp_path, "import time\nprint('running', flush=True)\ntime.sleep(600)")
    out = tmp_path / "out.ipynb"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sandbox_kernel.cli.main",
            "run",
            str(path),
            "--output",
            str(out),
            "--timeout",
            "120",
        ],  # a run that prints only at its end ends too
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "JUPYTER_PATH": str(tmp_path / "share" / "jupyter")},
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # ends at EOF if the run ends first
            lines.append(line)
            if line == "running\n":
                break
        assert lines[-1:] == ["running\n"], (lines, proc.stderr and proc.stderr.read())
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr and "Traceback" not in stderr, stderr[-2000:]
    assert outputs(out)[0][0]["text"] == "running\n"


def test_run_says_the_kernel_hit_its_memory_limit(tmp_path: Path, docker_client) -> None:  # type: ignore[no-untyped-def]
    """A memory bomb: exit code 3, the reason printed, and the notebook written with what
    ran and the reason in the cell that was running."""
    limits = ["--memory", "512m", "--tmp-size", "64m", "--home-size", "64m"]
    assert cli("install", "--prefix", str(tmp_path), "--pool-size", "0", *limits).returncode == 0
    path = notebook(
        tmp_path,
        "print('before')",
        "chunks = []\nwhile True:\n    chunks.append(bytearray(32 * 1024 * 1024))",
        "print('never')",
    )
    out = tmp_path / "out.ipynb"
    env = {"JUPYTER_PATH": str(tmp_path / "share" / "jupyter")}
    r = cli("run", str(path), "--output", str(out), "--allow-errors", env=env)
    assert r.returncode == 3, r.stderr[-2000:]
    assert "it hit its memory limit (512m)" in r.stderr, r.stderr[-2000:]
    before, bomb, never = outputs(out)
    assert before[0]["text"] == "before\n" and not never
    assert [o["evalue"] for o in bomb if o.get("ename") == "SandboxKernelStopped"] == [
        "The sandboxed kernel was stopped: it hit its memory limit (512m)"
    ]


def test_gc_removes_sandboxes_of_dead_processes_only(docker_client) -> None:  # type: ignore[no-untyped-def]
    """A sandbox whose Jupyter process died before its agent ran (still 'created') cannot
    end itself: gc (also run at a process's first launch) removes it; live ones stay."""
    import socket

    from sandbox_kernel.backends.owner import (
        LABEL_HOST,
        LABEL_MANAGED,
        LABEL_SERVER_PID,
        LABEL_SERVER_START,
        Owner,
    )
    from sandbox_kernel.image.recipe import DEFAULT_IMAGE

    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = docker_client.containers.create(
        DEFAULT_IMAGE, command=["true"], network_mode="none",
        labels={LABEL_MANAGED: "1", LABEL_HOST: socket.gethostname(),
                LABEL_SERVER_PID: str(dead.pid), LABEL_SERVER_START: "1"},
    )  # fmt: skip
    alive = docker_client.containers.create(
        DEFAULT_IMAGE, command=["true"], network_mode="none", labels=Owner.current().labels()
    )
    try:
        r = cli("gc")
        assert r.returncode == 0, r.stderr
        assert orphan.name in r.stdout
        assert not docker_client.containers.list(all=True, filters={"id": orphan.id})
        assert docker_client.containers.list(all=True, filters={"id": alive.id})
    finally:
        for c in (orphan, alive):
            try:
                c.remove(force=True)
            except docker.errors.NotFound:
                pass


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


def test_quickstart_puts_the_command_on_path() -> None:
    """After the README's first command, `sandbox-kernel` is found on a fresh shell's PATH
    (not only inside the activated venv) and it is this checkout's .venv."""
    venv_bin = Path(sys.prefix) / "bin"
    path = os.pathsep.join(
        d
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and Path(d).resolve() != venv_bin.resolve()
    )
    found = shutil.which("sandbox-kernel", path=path)
    assert found is not None, "sandbox-kernel is not on PATH: run scripts/quickstart.sh as root"
    assert Path(found).resolve() == (REPO / ".venv" / "bin" / "sandbox-kernel").resolve(), found


def test_ps_shows_each_kernelspecs_effective_limits(tmp_path: Path) -> None:
    """Issue 20: an administrator sees from ``ps`` which limits a new kernel of each name
    gets, as Jupyter resolves the name (the kernelspec's settings over the defaults)."""
    r = cli("install", "--prefix", str(tmp_path), "--name", "ps-limits", "--memory", "1g",
            "--cpus", "0.5")  # fmt: skip
    assert r.returncode == 0, r.stderr
    host = tmp_path / "share" / "jupyter" / "kernels" / "ps-host"
    host.mkdir()
    (host / "kernel.json").write_text(json.dumps({"argv": ["python3"], "display_name": "h"}))
    ps = cli("ps", env={"JUPYTER_PATH": str(tmp_path / "share" / "jupyter")})
    assert ps.returncode == 0, ps.stderr
    lines = {line.split()[0]: line for line in ps.stdout.splitlines() if line.strip()}
    assert "KERNELSPEC" in lines, ps.stdout
    assert lines["ps-limits"].split()[1:4] == ["docker", "1g", "0.5"], lines["ps-limits"]
    assert lines["ps-limits"].endswith(
        str(tmp_path / "share" / "jupyter" / "kernels" / "ps-limits")
    )
    assert "NOT SANDBOXED" in lines["ps-host"], lines["ps-host"]
