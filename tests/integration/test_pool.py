"""The warm pool: pre-started sandboxes, same isolation, never reused, drained."""

from __future__ import annotations

import os
from collections.abc import Callable

import docker

from sandbox_kernel.backends.owner import LABEL_POOL, LABEL_SERVER_PID
from sandbox_kernel.pool import WarmPool
from tests.helpers import TEST_RUNTIME, Kernel, container_exists, listed, wait_for_ready_pool


def test_warm_start_claims_a_pooled_sandbox_once(
    start_kernel: Callable[..., Kernel], docker_client: docker.DockerClient
) -> None:
    first = start_kernel()  # fills the pool for this policy if it was empty
    wait_for_ready_pool(first)
    warm = start_kernel()
    assert warm.km.provisioner.last_start_warm  # type: ignore[union-attr]
    container = docker_client.containers.get(warm.sandbox_id)
    assert container.labels.get(LABEL_POOL) == "1"
    assert warm.sandbox_id != first.sandbox_id
    # The same isolation as a cold sandbox, from outside and from inside.
    host = container.attrs["HostConfig"]
    assert host["Runtime"] == TEST_RUNTIME
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert any(o.startswith("seccomp=") for o in host["SecurityOpt"])
    assert not host.get("Binds") and not container.attrs.get("Mounts")
    facts = warm.value(
        "import os, socket, json, platform\n"
        "print(json.dumps([os.getuid(), [n for _, n in socket.if_nameindex()],"
        " platform.release(), os.environ.get('JUPYTERHUB_API_TOKEN')]))"
    )
    assert facts[0] == 1000 and facts[1] == ["lo"] and facts[3] is None
    assert facts[2] != os.uname().release
    # The pooled kernel was initialised with a placeholder key; it now signs with ours,
    # and its connection file holds ours.
    key = warm.value(
        "import json\nprint(json.dumps(json.load(open('/tmp/.sandbox-kernel/kernel.json'))['key']))"
    )
    assert key == warm.km.session.key.decode()
    # `sandbox-kernel ps` names the kernel a claimed sandbox serves (its labels cannot
    # change: the backend renamed it at the claim).
    assert warm.sandbox_id is not None
    row = next(r for r in listed() if r["id"] == warm.sandbox_id[:12])
    assert row["kernel_id"] == warm.km.kernel_id and row["pooled"] is False, row
    # A restart takes another sandbox and removes the old one: never reused.
    old = warm.sandbox_id
    wait_for_ready_pool(warm)
    warm.km.restart_kernel(now=True)
    warm.kc.wait_for_ready(timeout=60)
    assert warm.sandbox_id != old
    assert not container_exists(docker_client, old)
    assert warm.value("print(2 + 3)") == 5


def test_drain_removes_unclaimed_sandboxes(
    start_kernel: Callable[..., Kernel], docker_client: docker.DockerClient
) -> None:
    kernel = start_kernel()
    wait_for_ready_pool(kernel)
    mine = {"label": [f"{LABEL_POOL}=1", f"{LABEL_SERVER_PID}={os.getpid()}"]}
    pooled = [
        c.id for c in docker_client.containers.list(filters=mine) if c.id != kernel.sandbox_id
    ]
    assert pooled
    WarmPool.drain_all()
    assert not [c for c in pooled if container_exists(docker_client, c)]
