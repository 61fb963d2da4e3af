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

from sandbox_kernel.kernelspec import DEFAULT_PROVISIONER_ENV, PROVISIONER_NAME, host_kernelspec
from tests.helpers import REPO, cli


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


def test_nbconvert_allow_errors_keeps_a_memory_bomb_notebook(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    """Issue 20: the documented nbconvert command, after `install`, on a memory bomb writes
    the notebook: the bomb's cell says the kernel hit its memory limit and the later cells
    ran (in the restarted kernel)."""
    limits = ["--memory", "512m", "--tmp-size", "64m", "--home-size", "64m"]
    assert cli("install", "--prefix", str(tmp_path), "--pool-size", "0", *limits).returncode == 0
    path = notebook(
        tmp_path,
        "print('before')",
        "chunks = []\nwhile True:\n    chunks.append(bytearray(32 * 1024 * 1024))",
        "print('after')",
    )
    out = tmp_path / "out.ipynb"
    # What `install --prefix` wrote, found as `--sys-prefix`'s is inside the venv.
    env = {
        **os.environ,
        "JUPYTER_PATH": str(tmp_path / "share" / "jupyter"),
        "JUPYTER_CONFIG_PATH": str(tmp_path / "etc" / "jupyter"),
    }
    r = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
         "--allow-errors", "--ExecutePreprocessor.kernel_name=sandbox-python",
         "--output", str(out), str(path)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert r.returncode == 0 and out.exists(), r.stderr[-3000:]
    before, bomb, after = outputs(out)
    assert before[0]["text"] == "before\n"
    assert [o["evalue"] for o in bomb if o.get("ename") == "SandboxKernelStopped"] == [
        "The sandboxed kernel was stopped: it hit its memory limit (512m)"
    ], bomb
    assert [o.get("text") for o in after] == ["after\n"], after


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
    kernels = tmp_path / "share" / "jupyter" / "kernels"
    for name, spec in (
        ("ps-host", host_kernelspec("h", ["python3"])),
        ("ps-unnamed", {"argv": ["python3"], "display_name": "u"}),  # names no provisioner
    ):
        (kernels / name).mkdir()
        (kernels / name / "kernel.json").write_text(json.dumps(spec))
    # As .venv's .pth sets it after the quickstart (the test's own process has it too).
    default = {DEFAULT_PROVISIONER_ENV: PROVISIONER_NAME}
    ps = cli("ps", env={"JUPYTER_PATH": str(tmp_path / "share" / "jupyter"), **default})
    assert ps.returncode == 0, ps.stderr
    lines = {line.split()[0]: line for line in ps.stdout.splitlines() if line.strip()}
    assert "KERNELSPEC" in lines, ps.stdout
    assert lines["ps-limits"].split()[1:4] == ["docker", "1g", "0.5"], lines["ps-limits"]
    assert lines["ps-limits"].endswith(
        str(tmp_path / "share" / "jupyter" / "kernels" / "ps-limits")
    )
    assert "NOT SANDBOXED" in lines["ps-host"], lines["ps-host"]
    assert lines["ps-unnamed"].split()[1:3] == ["docker", "2g"], lines["ps-unnamed"]
