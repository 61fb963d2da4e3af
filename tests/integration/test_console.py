"""`jupyter console --kernel sandbox-python` in a pseudo-terminal: a terminal user gets the
sandboxed kernel by name (found through JUPYTER_PATH), runs code, exits cleanly."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import docker
import pexpect

from tests.integration.servers import assert_none_left, sandboxes_of

PROMPT = r"In \[(\d+)\]: "


def test_jupyter_console_runs_sandboxed(
    tmp_path: Path, kernel_dirs: Path, docker_client: docker.DockerClient
) -> None:
    secret = tmp_path / "host-secret.txt"
    secret.write_text("host-only")
    env = {
        **os.environ,
        "JUPYTER_PATH": str(kernel_dirs.parent),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
    }
    console = pexpect.spawn(
        sys.executable,
        ["-m", "jupyter_console", "--kernel", "sandbox-python", "--simple-prompt"],
        env=env, cwd=str(tmp_path), encoding="utf-8", timeout=120, dimensions=(50, 200),
    )  # fmt: skip
    try:
        console.expect(PROMPT)
        # The label check below is meaningful: the console's sandboxes carry its pid.
        assert sandboxes_of(docker_client, console.pid)
        console.sendline(
            "import os, platform; print('SANDBOX', platform.release(), os.getuid(), "
            f"os.path.exists({str(secret)!r}), os.path.exists('/var/run/docker.sock'))"
        )
        console.expect(r"SANDBOX (\S+) (\d+) (\w+) (\w+)\r?\n")
        release, uid, sees_secret, sees_docker = console.match.groups()
        assert release != os.uname().release, "the console's kernel ran on the host kernel"
        assert (uid, sees_secret, sees_docker) == ("1000", "False", "False")
        console.expect(PROMPT)
        # State persists between inputs, like any kernel.
        console.sendline("x = 6 * 7")
        console.expect(PROMPT)
        console.sendline("x")
        console.expect(r"Out\[\d+\]: 42")
        console.expect(PROMPT)
        console.sendline("exit")
        console.expect(pexpect.EOF)
    finally:
        console.close(force=True)
    assert console.exitstatus == 0, (console.exitstatus, console.signalstatus, console.before)
    # The console process started (and pooled) sandboxes under its own pid: none remain.
    assert_none_left(docker_client, console.pid, "jupyter console")
