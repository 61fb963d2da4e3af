"""Shared fixtures: a real dockerd with runsc, the real image, real ipykernel.

Nothing here skips. If the daemon, the runsc runtime or the kernel image is
missing, every integration test fails with what to run (CI must never pass
without the sandbox).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from jupyter_client.kernelspec import KernelSpecManager

from sandbox_kernel.backends.runsc_tool import find_runsc
from sandbox_kernel.image.recipe import DEFAULT_IMAGE
from sandbox_kernel.kernelspec import build_kernelspec
from tests.helpers import (
    BACKEND_CONFIGS,
    DEFAULT_RUNTIME,
    SETUP,
    TEST_RUNTIME,
    Kernel,
    NetnsHost,
    container_exists,
    our_containers,
    our_runsc_sandboxes,
    ready_kernel,
    running_kernel,
    second_dockerd,
)
from tests.rootless import (
    ROOTLESS_SPECS,
    Rootless,
    create_user,
    remove_user,
    shared_python,
    write_kernelspecs,
)


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env()
        info = client.info()
    except docker.errors.DockerException as exc:
        pytest.fail(f"no Docker daemon: {exc}; {SETUP}")
    if TEST_RUNTIME not in (info.get("Runtimes") or {}):
        pytest.fail(f"dockerd has no {TEST_RUNTIME} runtime; {SETUP}")
    try:
        client.images.get(DEFAULT_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"kernel image {DEFAULT_IMAGE} is missing; {SETUP}")
    return client


@pytest.fixture(scope="session")
def kernel_dirs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kernels folder with the sandboxed kernelspec and variants used by tests."""
    root = tmp_path_factory.mktemp("kernels")
    variants: dict[str, dict[str, Any]] = {
        "sandbox-python": {"runtime": TEST_RUNTIME},
        # Small caps for abuse tests: 512 MiB memory, 64 MiB tmpfs, derived nproc (32).
        "sandbox-small": {
            "runtime": TEST_RUNTIME,
            "memory_limit": "512m",
            "tmp_size": "64m",
            "home_size": "64m",
        },
        # Every start cold (no warm pool): the kernel's own launch path.
        "sandbox-cold": {"runtime": TEST_RUNTIME, "pool_size": 0},
        # The weaker tiers (tests/integration/test_backends.py, tests/security/).
        **{f"sandbox-{b}": cfg for b, cfg in BACKEND_CONFIGS.items()},
    }
    for name, config in variants.items():
        (root / name).mkdir()
        spec = build_kernelspec({"image": DEFAULT_IMAGE, **config})
        (root / name / "kernel.json").write_text(json.dumps(spec))
    return root


@pytest.fixture(scope="session")
def ksm(kernel_dirs: Path) -> KernelSpecManager:
    return KernelSpecManager(kernel_dirs=[str(kernel_dirs)])


@pytest.fixture
def start_kernel(
    ksm: KernelSpecManager, docker_client: docker.DockerClient
) -> Iterator[Callable[..., Kernel]]:
    started: list[Kernel] = []

    def start(name: str = "sandbox-python", **kwargs: Any) -> Kernel:
        kernel = ready_kernel(ksm, name, **kwargs)
        started.append(kernel)
        return kernel

    yield start
    for kernel in started:
        kernel.stop()


@pytest.fixture(scope="module")
def shared_kernel(ksm: KernelSpecManager, docker_client: docker.DockerClient) -> Iterator[Kernel]:
    """One kernel for read-only checks, to keep the suite quick."""
    with running_kernel(ksm) as kernel:
        yield kernel


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """After the whole session: the warm pools drained, no container of ours remains."""
    yield
    from sandbox_kernel.pool import WarmPool

    WarmPool.drain_all()
    runsc_leftovers = our_runsc_sandboxes()
    assert not runsc_leftovers, f"runsc sandboxes left behind: {runsc_leftovers}"
    if os.environ.get("KUBECONFIG"):  # the kubernetes variant's pods (tests/helpers.py)
        from sandbox_kernel.backends.kubernetes import KubernetesBackend

        pods = [r.name for r in KubernetesBackend.list_sandboxes() if r.server_pid == os.getpid()]
        assert not pods, f"kernel pods left behind: {pods}"
    try:
        client = docker.from_env()
    except docker.errors.DockerException:
        return
    # Sandboxes of child processes the tests killed (e.g. a crashed server mid-launch).
    from sandbox_kernel.backends.docker import DockerBackend

    DockerBackend.remove_orphans()
    leftovers = [c for c in our_containers(client, pooled=True) if container_exists(client, c.id)]
    assert not leftovers, f"containers left behind: {[c.attrs.get('Names') for c in leftovers]}"


@pytest.fixture(scope="session")
def rootless() -> Iterator[Rootless]:
    """A real ordinary user (created here, removed after) whose Jupyter processes run with
    the shared venv and this checkout's package: the rootless runsc backend's setting."""
    from sandbox_kernel.backends.cgroups import remove_delegation

    root = Path(tempfile.mkdtemp(prefix="sk-rootless-"))
    root.chmod(0o755)
    user = create_user()
    leftover: list[int] = []
    left: list[str] = []
    try:
        user.pythonpath = shared_python(root)
        rootless = Rootless(user, write_kernelspecs(root / "kernels", ROOTLESS_SPECS), root)
        yield rootless
        left = rootless.leftovers()
    finally:
        remove_delegation(user.name)
        leftover = remove_user(user)
        shutil.rmtree(root, ignore_errors=True)
    assert not leftover, f"processes of the test user left running: {leftover}"
    assert not left, f"the test user's runsc state, bundles or cgroups left behind: {left}"


@pytest.fixture
def test_host() -> Iterator[NetnsHost]:
    with NetnsHost() as host:
        assert host.reachable_from_host(), "the test host must be live, or the test proves nothing"
        yield host


@pytest.fixture
def daemon_without_runsc() -> Iterator[str]:
    with second_dockerd({}) as sock:
        yield sock


@pytest.fixture
def daemon_with_unfiltered_runsc() -> Iterator[str]:
    """The default gVisor runtime registered without --oci-seccomp: the seccomp profile
    would be ignored."""
    runsc = find_runsc(DEFAULT_RUNTIME)
    config = {"runtimes": {DEFAULT_RUNTIME: {"path": runsc, "runtimeArgs": ["--network=none"]}}}
    with second_dockerd(config) as sock:
        yield sock


@pytest.fixture
def daemon_with_networked_runsc() -> Iterator[str]:
    """The default gVisor runtime registered without --network=none (with --oci-seccomp):
    gVisor would serve the network of the container's namespace; only Docker's network mode
    would stop it."""
    runsc = find_runsc(DEFAULT_RUNTIME)
    config = {"runtimes": {DEFAULT_RUNTIME: {"path": runsc, "runtimeArgs": ["--oci-seccomp"]}}}
    with second_dockerd(config) as sock:
        yield sock
