"""Bad input fails with one clear error naming the fix, and leaves nothing behind."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import docker
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from sandbox_kernel.errors import PolicyError, SandboxError
from sandbox_kernel.image.recipe import DEFAULT_IMAGE
from sandbox_kernel.kernelspec import build_kernelspec
from tests.helpers import container_exists, listening_ports, our_containers


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
    assert {c.id for c in our_containers(docker_client)} == before, "a container was left behind"
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
        cid = km.provisioner._container_id  # type: ignore[union-attr]
        try:
            deadline = time.monotonic() + 30
            while km.is_alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not km.is_alive()
            tail = b"".join(km.provisioner._console_tail).decode()
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
            cid = km.provisioner._container_id  # type: ignore[union-attr]
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
    assert "no 'runsc' runtime" in msg and "setup-host" in msg and "allow_weaker_runtime" in msg
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
    from tests.helpers import Kernel

    limit = SLOTS.in_use() + 1  # kernels of other tests in this process count too
    ksm = _ksm_with(tmp_path, {"image": DEFAULT_IMAGE, "pool_size": 0, "max_kernels": limit})
    km = KernelManager(kernel_name="k", kernel_spec_manager=ksm)
    km.start_kernel()
    kernel = Kernel(km, km.client())
    kernel.kc.start_channels()
    try:
        kernel.kc.wait_for_ready(timeout=60)
        err = _start_fails(ksm, docker_client)
        assert isinstance(err, KernelLimitReached), err
        assert f"max_kernels={limit}" in str(err), err
        km.restart_kernel(now=True)  # keeps its slot: no refusal
        kernel.kc.wait_for_ready(timeout=60)
        assert kernel.value("print(6 * 7)") == 42
    finally:
        kernel.stop()
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
        print(type(exc).__name__, exc)
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
        t0 = time.monotonic()
        err = _start_fails(
            _ksm_with(tmp_path, {"image": image, "launch_timeout": 3.0}), docker_client
        )
        assert time.monotonic() - t0 < 30
        assert isinstance(err, SandboxError)
        assert "launch_timeout=3s" in str(err)
    finally:
        docker_client.images.remove(image, force=True)


def test_hostile_frames_from_inside_end_only_that_sandbox(start_kernel) -> None:  # type: ignore[no-untyped-def]
    """The kernel shares the agent's uid, so it can write into the agent's pipe to the host.
    Garbage there (an oversized frame) is a protocol error: that sandbox ends with a clear
    error, the other kernel is untouched, and a restart brings a fresh working kernel."""
    victim, other = start_kernel(), start_kernel()
    victim.kc.execute(
        "import os, struct\n"
        "for fd in os.listdir('/proc/1/fd'):\n"
        "    try:\n"
        "        if os.readlink('/proc/1/fd/' + fd).startswith(('pipe:', 'host:')):\n"
        "            w = os.open('/proc/1/fd/' + fd, os.O_WRONLY | os.O_NONBLOCK)\n"
        "            os.write(w, struct.pack('>BII', 2, 1, 0x7FFFFFFF) + b'x' * 64)\n"
        "            os.close(w)\n"
        "    except OSError:\n"
        "        pass\n"
    )
    deadline = time.monotonic() + 30
    while victim.km.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not victim.km.is_alive(), "garbage frames were accepted"
    session_error = victim.km.provisioner._session.error  # type: ignore[union-attr]
    assert session_error and ("exceeds" in session_error or "protocol" in session_error.lower())
    assert other.value("print(5 * 5)") == 25
    victim.km.restart_kernel(now=True)
    victim.kc.wait_for_ready(timeout=60)
    assert victim.value("print(6 * 6)") == 36
