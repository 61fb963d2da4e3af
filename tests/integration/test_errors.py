"""Bad input fails with one clear error naming the fix, and leaves nothing behind."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import docker
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

import sandbox_kernel.boot
import sandbox_kernel.configured
import sandbox_kernel.policy
from sandbox_kernel.errors import PolicyError, SandboxError
from sandbox_kernel.image.recipe import DEFAULT_IMAGE
from sandbox_kernel.kernelspec import build_kernelspec
from tests.helpers import (
    BACKEND_CONFIGS,
    DEFAULT_RUNTIME,
    Kernel,
    container_exists,
    listening_ports,
    our_containers,
    running_kernel,
)
from tests.security.hostile import KERNEL_PRELUDE, backdoored_payload


def _ksm_with(tmp_path: Path, config: dict) -> KernelSpecManager:  # type: ignore[type-arg]
    spec = build_kernelspec({"image": DEFAULT_IMAGE})
    spec["metadata"]["kernel_provisioner"]["config"] = config
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(tmp_path)])


def _start_fails(ksm: KernelSpecManager, docker_client: docker.DockerClient) -> Exception:
    before_ports = set(listening_ports(own_only=True))
    before = {c.id for c in our_containers(docker_client)}
    km = KernelManager(kernel_name="k", kernel_spec_manager=ksm)
    with pytest.raises(Exception) as info:
        km.start_kernel()
    left = {c.id for c in our_containers(docker_client)} - before
    # (Docker answers a forced removal before the container is gone: allow it to settle.)
    assert not [cid for cid in left if container_exists(docker_client, cid)], "left behind"
    new_ports = set(listening_ports(own_only=True)) - before_ports
    assert not new_ports, f"ports left listening: {new_ports}"
    assert not km.has_kernel
    return info.value


def test_wrong_image_name(tmp_path: Path, docker_client: docker.DockerClient) -> None:
    err = _start_fails(
        _ksm_with(tmp_path, {"image": "no-such-image/anywhere:never"}), docker_client
    )
    assert isinstance(err, SandboxError)
    assert "no-such-image/anywhere:never" in str(err) and "image build" in str(err)


def test_malformed_image_reference(tmp_path: Path, docker_client: docker.DockerClient) -> None:
    err = _start_fails(_ksm_with(tmp_path, {"image": "Bad Image;rm -rf /"}), docker_client)
    assert isinstance(err, PolicyError) and "image" in str(err)


def test_malformed_memory_limit(tmp_path: Path, docker_client: docker.DockerClient) -> None:
    err = _start_fails(
        _ksm_with(tmp_path, {"image": DEFAULT_IMAGE, "memory_limit": "lots"}), docker_client
    )
    assert isinstance(err, PolicyError)
    assert "memory_limit" in str(err) and "'2g'" in str(err)


@pytest.mark.parametrize(
    ("key", "value"),
    [("mount_home", True), ("network_mode", "bridge"), ("volumes", {"/": "/host"}),
     ("privileged", True), ("cap_add", ["SYS_ADMIN"])],
)  # fmt: skip
def test_config_that_would_weaken_the_sandbox_is_refused(
    tmp_path: Path, docker_client: docker.DockerClient, key: str, value: object
) -> None:
    """No config key mounts anything, enables networking or adds privileges: such keys are
    refused by name, before anything starts."""
    err = _start_fails(_ksm_with(tmp_path, {"image": DEFAULT_IMAGE, key: value}), docker_client)
    assert isinstance(err, PolicyError) and key in str(err)


def test_image_without_ipykernel(tmp_path: Path, docker_client: docker.DockerClient) -> None:
    """An image that has python3 but no ipykernel: the kernel's own error reaches the user."""
    image = DEFAULT_IMAGE
    try:
        ksm = _ksm_with(tmp_path, {"image": image})
        spec = json.loads((tmp_path / "k" / "kernel.json").read_text())
        # -S: no site-packages, so ipykernel cannot be imported, as in an image without it.
        spec["argv"] = ["python3", "-S", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        (tmp_path / "k" / "kernel.json").write_text(json.dumps(spec))
        km = KernelManager(kernel_name="k", kernel_spec_manager=ksm)
        km.start_kernel()  # the process starts; ipykernel's import fails inside
        cid = km.provisioner.sandbox_id  # type: ignore[union-attr]
        try:
            deadline = time.monotonic() + 30
            while km.is_alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not km.is_alive()
            tail = km.provisioner.console.tail  # type: ignore[union-attr]
            assert "No module named ipykernel_launcher" in tail
        finally:
            km.shutdown_kernel(now=True)
        assert not container_exists(docker_client, cid)
    finally:
        pass


def test_runsc_without_oci_seccomp_refuses(
    tmp_path: Path,
    daemon_with_unfiltered_runsc: str,
    monkeypatch: pytest.MonkeyPatch,
    docker_client: docker.DockerClient,
) -> None:
    monkeypatch.setenv("DOCKER_HOST", daemon_with_unfiltered_runsc)
    err = _start_fails(_ksm_with(tmp_path, {"image": DEFAULT_IMAGE}), docker_client)
    assert isinstance(err, SandboxError)
    assert "--oci-seccomp" in str(err) and "setup-host" in str(err)


def test_weaker_runtime_only_with_opt_in_and_warns_every_launch(
    tmp_path: Path, docker_client: docker.DockerClient, caplog: pytest.LogCaptureFixture
) -> None:
    err = _start_fails(
        _ksm_with(tmp_path, {"image": DEFAULT_IMAGE, "runtime": "runc"}), docker_client
    )
    assert isinstance(err, PolicyError) and "allow_weaker_runtime" in str(err)

    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path)])
    spec = json.loads((tmp_path / "k" / "kernel.json").read_text())
    spec["metadata"]["kernel_provisioner"]["config"] = {
        "image": DEFAULT_IMAGE,
        "runtime": "runc",
        "allow_weaker_runtime": True,
    }
    (tmp_path / "k" / "kernel.json").write_text(json.dumps(spec))
    km = KernelManager(kernel_name="k", kernel_spec_manager=ksm)
    with caplog.at_level(logging.WARNING):
        km.start_kernel()
        try:
            assert any("not gVisor" in r.getMessage() for r in caplog.records)
            caplog.clear()
            km.restart_kernel(now=True)
            assert any("not gVisor" in r.getMessage() for r in caplog.records), "warn every launch"
            cid = km.provisioner.sandbox_id  # type: ignore[union-attr]
            assert docker_client.containers.get(cid).attrs["HostConfig"]["Runtime"] == "runc"
        finally:
            km.shutdown_kernel(now=True)


def test_missing_runsc_runtime_refuses(
    tmp_path: Path,
    daemon_without_runsc: str,
    monkeypatch: pytest.MonkeyPatch,
    docker_client: docker.DockerClient,
) -> None:
    monkeypatch.setenv("DOCKER_HOST", daemon_without_runsc)
    err = _start_fails(_ksm_with(tmp_path, {"image": DEFAULT_IMAGE}), docker_client)
    assert isinstance(err, SandboxError)
    msg = str(err)
    assert (
        f"no {DEFAULT_RUNTIME!r} runtime" in msg
        and "setup-host" in msg
        and "allow_weaker_runtime" in msg
    )
    other = docker.DockerClient(base_url=daemon_without_runsc)
    assert other.containers.list(all=True) == []


def test_stopped_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_client: docker.DockerClient
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-daemon-here.sock")
    err = _start_fails(_ksm_with(tmp_path, {"image": DEFAULT_IMAGE}), docker_client)
    assert isinstance(err, SandboxError)
    assert "cannot reach the Docker daemon" in str(err) and "setup-host" in str(err)


def test_max_kernels_refuses_past_the_limit_and_frees_slots(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    """max_kernels counts this process's kernels: past it a launch is refused (nothing left
    behind), a restart keeps its kernel's slot, a shutdown frees it."""
    from sandbox_kernel.kernel_slots import SLOTS, KernelLimitReached

    limit = SLOTS.in_use() + 1  # kernels of other tests in this process count too
    ksm = _ksm_with(tmp_path, {"image": DEFAULT_IMAGE, "pool_size": 0, "max_kernels": limit})
    with running_kernel(ksm, "k") as kernel:
        err = _start_fails(ksm, docker_client)
        assert isinstance(err, KernelLimitReached), err
        assert f"max_kernels={limit}" in str(err), err
        kernel.km.restart_kernel(now=True)  # keeps its slot: no refusal
        kernel.kc.wait_for_ready(timeout=60)
        assert kernel.value("print(6 * 7)") == 42
    assert SLOTS.in_use() == limit - 1, "the shut-down kernel's slot was not freed"
    again = KernelManager(kernel_name="k", kernel_spec_manager=ksm)
    again.start_kernel()
    again.shutdown_kernel(now=True)
    assert SLOTS.in_use() == limit - 1


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
AS_NOBODY = """
import json, os, shutil, sys, tempfile
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from sandbox_kernel.kernelspec import build_kernelspec
home = tempfile.mkdtemp()
try:
    os.environ.update(HOME=home, JUPYTER_RUNTIME_DIR=home)
    os.mkdir(home + "/k")
    with open(home + "/k/kernel.json", "w") as f:
        json.dump(build_kernelspec({"pool_size": 0}), f)
    km = KernelManager(kernel_name="k", kernel_spec_manager=KernelSpecManager(kernel_dirs=[home]))
    try:
        km.start_kernel()
    except Exception as exc:
        from sandbox_kernel.errors import SandboxError
        print("SandboxError" if isinstance(exc, SandboxError) else type(exc).__name__, exc)
    else:
        km.shutdown_kernel(now=True)
        print("STARTED")
finally:
    shutil.rmtree(home)
"""


def test_docker_socket_permission_denied_is_named(docker_client: docker.DockerClient) -> None:
    """A server whose user may not use the Docker socket (dockerd running, socket
    root:docker 0660) is told so, and what to do, not to start a running daemon."""
    import subprocess
    import sys

    sock = Path("/var/run/docker.sock")
    assert sock.stat().st_mode & 0o007 == 0, "the socket must not be open to everyone"
    docker_client.ping()  # the daemon runs
    out = subprocess.run(
        [*NOBODY, sys.executable, "-c", AS_NOBODY],
        capture_output=True, text=True, timeout=120, cwd="/",
    )  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "SandboxError permission denied on the Docker socket /var/run/docker.sock" in text, text
    assert "uid 65534" in text and "--backend runsc" in text, text
    assert "Start it" not in text and "not running" not in text, text


def _derived_image(
    client: docker.DockerClient, name: str, setup_code: str, changes: list[str]
) -> str:
    """Commit an image derived from the default one after running ``setup_code`` as root
    (plain runc, no network: this only prepares a broken image for a test)."""
    container = client.containers.run(
        DEFAULT_IMAGE,
        command=["python3", "-c", setup_code],
        user="0",
        network_mode="none",
        detach=True,
    )
    try:
        assert container.wait(timeout=60)["StatusCode"] == 0, container.logs()
        container.commit(repository=name, tag="latest", changes=changes)
    finally:
        container.remove(force=True)
    return f"{name}:latest"


def test_launch_timeout_cleans_up(tmp_path: Path, docker_client: docker.DockerClient) -> None:
    """A sandbox that never answers (its python3 hangs) is removed when launch_timeout passes."""
    hang = (
        "import os; open('/usr/local/bin/python3', 'w').write('#!/bin/sh\\nexec sleep 1000\\n'); "
        "os.chmod('/usr/local/bin/python3', 0o755)"
    )
    image = _derived_image(docker_client, "sandbox-kernel-test/hangs", hang, ["USER 1000:1000"])
    try:
        # The sandbox would hang for 1000 s: that the launch failed at all, with the error of
        # the timeout (not of the test's own timeout), is what shows launch_timeout ended it.
        err = _start_fails(
            _ksm_with(tmp_path, {"image": image, "launch_timeout": 3.0}), docker_client
        )
        assert isinstance(err, SandboxError)
        assert "launch_timeout=3s" in str(err)
    finally:
        docker_client.images.remove(image, force=True)


def test_hostile_frames_from_a_sandbox_holding_the_pipe_end_only_that_sandbox(
    tmp_path: Path,
    start_kernel: Callable[..., Kernel],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kernel code cannot reach the agent's pipe (attacks priv-agent-pipe and
    priv-agent-signal); a sandbox that did (the test backdoor of tests/security/hostile.py
    stands for that escape) and writes garbage there (an oversized frame) causes a
    protocol error: that sandbox ends with a clear error, the other kernel is untouched,
    and a restart brings a fresh working kernel."""
    ksm = _ksm_with(tmp_path, {"image": DEFAULT_IMAGE, "pool_size": 0})
    monkeypatch.setattr(sandbox_kernel.boot, "agent_payload", backdoored_payload)
    km = KernelManager(kernel_name="k", kernel_spec_manager=ksm)
    km.start_kernel()
    monkeypatch.undo()  # the restart below and the other kernel get the real agent
    kc = km.client()
    kc.start_channels()
    victim = Kernel(km, kc)
    try:
        kc.wait_for_ready(timeout=60)
        other = start_kernel()
        assert victim.run(KERNEL_PRELUDE)[0]["status"] == "ok"
        kc.execute("stop_agent()\nwrite_all(_struct.pack('>BII', 2, 1, 0x7FFFFFFF) + b'x' * 64)")
        deadline = time.monotonic() + 30
        while km.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not km.is_alive(), "garbage frames were accepted"
        session_error = km.provisioner.session.error  # type: ignore[union-attr]
        assert session_error and "exceeds" in session_error, session_error
        assert other.value("print(5 * 5)") == 25
        km.restart_kernel(now=True)
        kc.wait_for_ready(timeout=60)
        assert victim.value("print(6 * 6)") == 36
    finally:
        victim.stop()


@pytest.mark.parametrize("backend", ["docker", "docker-runc", "bwrap"])
def test_a_kernel_that_would_run_as_root_is_refused(
    backend: str,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The host's own checks, driven by the condition they guard against: a policy whose
    user is root. Under gVisor the agent, root of the sandbox, would start the kernel as
    uid 0: refused from the kernel's uid in ``started``. Under runc and bubblewrap the agent
    itself would be uid 0: refused at its ``hello``, before a kernel exists. Nothing is left
    behind."""
    real = sandbox_kernel.policy.build_policy

    def as_root(**kwargs):  # type: ignore[no-untyped-def]
        return dataclasses.replace(real(**kwargs), user="0:0")

    monkeypatch.setattr(sandbox_kernel.configured, "build_policy", as_root)
    config = {"image": DEFAULT_IMAGE, "pool_size": 0, **BACKEND_CONFIGS.get(backend, {})}
    err = _start_fails(_ksm_with(tmp_path, config), docker_client)
    assert isinstance(err, SandboxError), err
    which = "the kernel runs as root" if backend == "docker" else "agent runs as root"
    assert which in str(err), err


def _empty_image(client: docker.DockerClient, name: str) -> str:
    """An image with no files, imported into ``client``'s daemon (no registry involved):
    enough for Docker to create a container from it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w"):
        pass
    client.api.import_image_from_data(buf.getvalue(), repository=name, tag="latest")
    return f"{name}:latest"


def test_runsc_without_network_none_refuses(
    tmp_path: Path,
    daemon_with_networked_runsc: str,
    monkeypatch: pytest.MonkeyPatch,
    docker_client: docker.DockerClient,
) -> None:
    """The second lock of the network: a daemon whose runsc lacks --network=none (Docker's
    network_mode=none would still hold) is refused by our preflight, before any container
    exists. The daemon has the kernelspec's image, so nothing but the preflight stops the
    launch; the error is ours (naming the flag and the fix), not runsc failing to start
    (which this host's runsc does without the flag: "cannot run with network enabled in
    root network namespace")."""
    other = docker.DockerClient(base_url=daemon_with_networked_runsc)
    image = _empty_image(other, "sandbox-kernel-test/empty")
    since = int(time.time()) - 1
    monkeypatch.setenv("DOCKER_HOST", daemon_with_networked_runsc)
    err = _start_fails(_ksm_with(tmp_path, {"image": image, "pool_size": 0}), docker_client)
    assert isinstance(err, SandboxError)
    msg = str(err)
    assert f"runs {DEFAULT_RUNTIME!r} without --network=none" in msg, msg
    assert "--oci-seccomp" not in msg.split("(runtimeArgs")[0], "only the missing flag is named"
    assert "setup-host" in msg and "runtimeArgs" in msg, msg
    assert "root network namespace" not in msg, f"runsc failed, the preflight did not: {msg}"
    assert other.containers.list(all=True) == []
    created = other.events(
        since=since, until=int(time.time()) + 1, decode=True, filters={"type": "container"}
    )
    assert [e.get("Action") for e in created] == [], "a container was created on that daemon"
