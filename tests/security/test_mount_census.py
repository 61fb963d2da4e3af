"""The mount census (attack ``fs-mount-census``) sees what it is meant to see.

The catalogue runs the census in a kernel of every backend (``test_attacks.py``,
``test_backend_attacks.py``). Here it runs in sandboxes built from the same policy
(``container_spec`` under gVisor and runc, ``bwrap_argv``) with one mount the policy never
makes: a host folder bound read-only under /tmp or the home, or /tmp without its size cap.
Each must be reported, naming the mount point, while the unchanged sandbox passes: so the
census can fail on each engine, and does when the property is weakened. (firejail binds
host folders only inside its chroot, so no extra mount can be added there; its own helper
folder, a host folder, is what the census reports on it, see the gap table.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from sandbox_kernel.backends.bwrap import bwrap_argv
from sandbox_kernel.backends.docker import container_spec
from sandbox_kernel.backends.owner import Owner
from sandbox_kernel.backends.pipe import host_uid
from sandbox_kernel.image.recipe import DEFAULT_IMAGE
from sandbox_kernel.image.rootfs import check_rootfs, rootfs_for
from sandbox_kernel.policy import SANDBOX_HOME, build_policy
from sandbox_kernel.security import by_id
from tests.helpers import TEST_RUNTIME

CENSUS = by_id("fs-mount-census").code
Change = Callable[[Any], None]


@pytest.fixture
def host_folder() -> Iterator[str]:
    """A host folder with one file, readable by any uid (so bwrap's fresh uid can bind it)."""
    folder = tempfile.mkdtemp(prefix="sk-census-", dir="/tmp")
    try:
        os.chmod(folder, 0o755)
        Path(folder, "host-file").write_text("on the host")
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _verdict(output: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def _in_container(client: docker.DockerClient, runtime: str, change: Change) -> dict[str, Any]:
    policy = build_policy(image=DEFAULT_IMAGE)
    spec = container_spec(
        policy,
        runtime=runtime,
        command=["python3", "-I", "-c", CENSUS],
        labels=Owner.current().labels(),
        name=f"sk-census-{uuid.uuid4().hex[:12]}",
    )
    # Run to completion and keep the output (the kernel's sandboxes log nothing), as the
    # kernel's user: under gVisor the spec's user is the agent's, root of the sandbox.
    spec.update(detach=True, auto_remove=False, stdin_open=False, log_config={"Type": "json-file"})
    spec["user"] = policy.user
    change(spec)
    container = client.containers.run(**spec)
    try:
        status = container.wait(timeout=120)
        output = container.logs(stdout=True, stderr=False).decode()
        assert status["StatusCode"] == 0, container.logs().decode()[-2000:]
    finally:
        container.remove(force=True)
    return _verdict(output)


def _in_bwrap(change: Change) -> dict[str, Any]:
    rootfs = check_rootfs(rootfs_for(DEFAULT_IMAGE))
    argv = bwrap_argv(
        build_policy(image=DEFAULT_IMAGE), rootfs, ["python3", "-I", "-c", CENSUS], -1
    )
    change(argv)
    uid = host_uid()

    def drop() -> None:  # as the bwrap backend does when the server is root
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)

    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, preexec_fn=drop, cwd="/"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return _verdict(proc.stdout)


def _unchanged(spec: Any) -> None:
    pass


def _bind_spec(source: str, target: str) -> Change:
    def change(spec: Any) -> None:
        spec["volumes"] = {source: {"bind": target, "mode": "ro"}}

    return change


def _unsized_tmp_spec(spec: Any) -> None:
    spec["tmpfs"]["/tmp"] = "rw,nosuid,nodev,noexec,mode=1777"


def _bind_argv(source: str, target: str) -> Change:
    def change(argv: Any) -> None:
        at = argv.index("--")
        argv[at:at] = ["--ro-bind", source, target]

    return change


def _unsized_tmp_argv(argv: Any) -> None:
    at = argv.index("/tmp") - 5
    assert argv[at] == "--size"
    del argv[at : at + 2]


@pytest.mark.parametrize("runtime", [TEST_RUNTIME, "runc"])
def test_census_in_docker(
    runtime: str, host_folder: str, docker_client: docker.DockerClient
) -> None:
    assert _in_container(docker_client, runtime, _unchanged)["blocked"] is True
    for target in ("/tmp/host", f"{SANDBOX_HOME}/host"):
        seen = _in_container(docker_client, runtime, _bind_spec(host_folder, target))
        assert seen["blocked"] is False and f"{target}: " in seen["detail"], seen
    seen = _in_container(docker_client, runtime, _unsized_tmp_spec)
    assert seen["blocked"] is False, seen
    assert "/tmp: writable tmpfs without a size cap" in seen["detail"], seen


def test_census_in_bwrap(host_folder: str) -> None:
    assert _in_bwrap(_unchanged)["blocked"] is True
    for target in ("/tmp/host", f"{SANDBOX_HOME}/host"):
        seen = _in_bwrap(_bind_argv(host_folder, target))
        assert seen["blocked"] is False and f"{target}: " in seen["detail"], seen
    seen = _in_bwrap(_unsized_tmp_argv)
    assert seen["blocked"] is False, seen
    assert "/tmp: writable tmpfs without a size cap" in seen["detail"], seen
