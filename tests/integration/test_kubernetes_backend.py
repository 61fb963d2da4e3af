"""The ``kubernetes`` backend on a real cluster: a kernel in a gVisor pod through
jupyter_client (execute, interrupt, restart, shutdown), ``sandbox-kernel run`` of the demo
notebook, ``ps`` and ``gc`` of kernel pods, and preflight's refusals.

Needs a cluster with a gVisor RuntimeClass and the kernel image on its node
(``scripts/dev-cluster.sh up`` makes one and prints the KUBECONFIG to export). Without
KUBECONFIG the module is skipped, saying so; with it, nothing here skips. The kernels'
pods live in a namespace of this module's own, deleted at the end (and asserted gone).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from jupyter_client.kernelspec import KernelSpecManager

from sandbox_kernel.backends.kubernetes import KubernetesBackend
from sandbox_kernel.backends.kubernetes_inventory import pod_labels
from sandbox_kernel.backends.kubernetes_pod import kernel_pod
from sandbox_kernel.backends.owner import LABEL_KERNEL_ID, Owner
from sandbox_kernel.backends.registry import make_backend
from sandbox_kernel.errors import SandboxError
from sandbox_kernel.image.recipe import DEFAULT_IMAGE
from sandbox_kernel.kernelspec import build_kernelspec
from sandbox_kernel.policy import build_policy
from tests.helpers import (
    K8S_POD_TIMEOUT,
    K8S_RUNTIME_CLASS,
    REPO,
    cli,
    kube_namespace,
    running_kernel,
)

if not os.environ.get("KUBECONFIG"):
    pytest.skip(
        "no Kubernetes cluster: KUBECONFIG is unset (scripts/dev-cluster.sh up starts one "
        "and prints the export)",
        allow_module_level=True,
    )

from kubernetes import client, config

KERNEL = "sandbox-k8s"


@pytest.fixture(scope="module")
def core() -> client.CoreV1Api:
    config.load_kube_config()
    return client.CoreV1Api()


@pytest.fixture(scope="module")
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    with kube_namespace(core, "skb") as name:
        yield name


def k8s_config(namespace: str, **more: Any) -> dict[str, Any]:
    """A kubernetes kernelspec's settings: the node has the image (the dev cluster imports
    it: Never pull), and what a pod cannot enforce accepted, as doctor would list it."""
    return {
        "backend": "kubernetes",
        "image": DEFAULT_IMAGE,
        "namespace": namespace,
        "runtime_class": K8S_RUNTIME_CLASS,
        "image_pull_policy": "Never",
        "accept_unenforced": ["pids_limit"],
        "pool_size": 0,
        "memory_limit": "512m",
        "tmp_size": "64m",
        "home_size": "64m",
        "launch_timeout": 120,  # a cold gVisor pod on a loaded 2-core node
        **more,
    }


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory: pytest.TempPathFactory, namespace: str) -> Path:
    """A Jupyter data folder with the kubernetes kernelspec ``sandbox-k8s``."""
    root = tmp_path_factory.mktemp("jupyter")
    folder = root / "kernels" / KERNEL
    folder.mkdir(parents=True)
    (folder / "kernel.json").write_text(json.dumps(build_kernelspec(k8s_config(namespace))))
    return root


def kernel_pods(core: client.CoreV1Api, namespace: str, kernel_id: str) -> list[str]:
    """The names of the pods of ``kernel_id`` the API server still has (ending ones too)."""
    listed = core.list_namespaced_pod(namespace, label_selector=f"{LABEL_KERNEL_ID}={kernel_id}")
    return [str(p.metadata.name) for p in listed.items if p.metadata]


def test_a_kernel_in_a_pod_through_jupyter_client(
    core: client.CoreV1Api, namespace: str, jupyter_path: Path
) -> None:
    """Start, execute, interrupt, restart (a new pod), shut down: no pod left."""
    ksm = KernelSpecManager(kernel_dirs=[str(jupyter_path / "kernels")])
    with running_kernel(ksm, KERNEL, timeout=K8S_POD_TIMEOUT) as kernel:
        kernel_id = str(kernel.km.kernel_id)
        first = kernel_pods(core, namespace, kernel_id)
        assert len(first) == 1 and first == [kernel.sandbox_id], first
        pod = core.read_namespaced_pod(first[0], namespace)
        assert pod.spec is not None and pod.spec.runtime_class_name == K8S_RUNTIME_CLASS
        facts = kernel.value(
            "import json, os, platform, resource, socket\n"
            "print(json.dumps({'release': platform.release(), 'uid': os.getuid(),\n"
            "  'version': open('/proc/version').read(),\n"
            "  'ifaces': [n for _, n in socket.if_nameindex()],\n"
            "  'rlimits': [resource.getrlimit(getattr(resource, 'RLIMIT_' + n))\n"
            "              for n in ('NPROC', 'NOFILE', 'CORE')],\n"
            "  'api': sorted(k for k in os.environ if k.startswith('KUBERNETES_'))}))",
            timeout=K8S_POD_TIMEOUT,
        )
        assert facts["release"] != os.uname().release and "gvisor" in facts["version"], facts
        assert facts["uid"] == 1000 and facts["ifaces"] == ["lo"], facts
        # set by the agent (a pod spec has no rlimits): the policy's, as Docker's ulimits
        policy = build_policy(memory_limit="512m")
        assert facts["rlimits"] == [[policy.nproc] * 2, [policy.nofile] * 2, [0, 0]], facts
        # the kubelet's variables naming the API server stay with the agent
        assert facts["api"] == [], facts
        _, reply = kernel.interrupt_running_cell()
        assert reply["content"]["status"] == "error", reply["content"]
        assert reply["content"]["ename"] == "KeyboardInterrupt", reply["content"]
        assert kernel.value("mine = 1; print(6 * 7)") == 42
        kernel.km.restart_kernel(now=True)
        kernel.kc.wait_for_ready(timeout=K8S_POD_TIMEOUT)
        second = kernel_pods(core, namespace, kernel_id)
        assert second == [kernel.sandbox_id] and second != first, (first, second)
        assert kernel.value("import json; print(json.dumps('mine' in globals()))") is False
    assert kernel_pods(core, namespace, kernel_id) == [], "a kernel pod is left after shutdown"


def test_sandbox_kernel_run_executes_the_demo_in_a_pod(
    core: client.CoreV1Api, namespace: str, jupyter_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "demo.out.ipynb"
    done = cli(
        "run", str(REPO / "notebooks" / "demo.ipynb"), "--kernel", KERNEL, "--output", str(out),
        env={"JUPYTER_PATH": str(jupyter_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "gVisor, not the host kernel" in done.stdout and "ALLOWED" not in done.stdout
    assert "blocked" in done.stdout and "Monte Carlo estimate of pi" in done.stdout
    assert json.loads(out.read_text())["cells"], "no output notebook"
    left = core.list_namespaced_pod(namespace, label_selector="org.sandbox-kernel.managed=1")
    assert [p.metadata.name for p in left.items if p.metadata] == []


def test_ps_lists_a_kernel_pod_and_gc_removes_a_dead_servers(
    core: client.CoreV1Api, namespace: str, jupyter_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ps`` and ``gc`` find the namespace through the kernelspec Jupyter finds here.
    (``gc``'s kubernetes part, ``KubernetesBackend.remove_orphans``: the whole command
    would also remove other backends' leftovers on this shared machine.)"""
    env = {"JUPYTER_PATH": str(jupyter_path)}
    ksm = KernelSpecManager(kernel_dirs=[str(jupyter_path / "kernels")])
    with running_kernel(ksm, KERNEL, timeout=K8S_POD_TIMEOUT) as kernel:
        ps = cli("ps", "--json", env=env)
        rows = [r for r in json.loads(ps.stdout) if r["backend"] == "kubernetes"]
        assert [r["name"] for r in rows] == [f"{namespace}/{kernel.sandbox_id}"], ps.stdout
        assert rows[0]["kernel_id"] == kernel.km.kernel_id and rows[0]["server_pid"] == os.getpid()
        assert rows[0]["memory_mib"] is None and rows[0]["uptime_s"] >= 0
        # a pod whose Jupyter process on this host is gone
        child = subprocess.Popen(["true"])
        child.wait()
        orphan = kernel_pod(
            "orphan", build_policy_small(), runtime_class=K8S_RUNTIME_CLASS, command=["sleep", "600"],
            labels=pod_labels(Owner(child.pid, "1", socket.gethostname(), "jo", "k-orphan")),
            agent=False, image_pull_policy="Never",
        )  # fmt: skip
        core.create_namespaced_pod(namespace, cast(client.V1Pod, orphan))
        monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
        removed = KubernetesBackend.remove_orphans()
        assert f"{namespace}/orphan" in removed, removed
        assert not [r for r in removed if str(kernel.sandbox_id) in r]  # a live server's stays
        deadline = time.monotonic() + K8S_POD_TIMEOUT
        while "orphan" in {
            p.metadata and p.metadata.name for p in core.list_namespaced_pod(namespace).items
        }:
            assert time.monotonic() < deadline, "gc's pod is still there"
            time.sleep(0.5)
        assert kernel.value("print(1)") == 1


def build_policy_small() -> Any:
    return build_policy(memory_limit="256m", tmp_size="16m", home_size="16m")


@pytest.mark.parametrize(
    ("setting", "refusal"),
    [
        ({"namespace": "skb-absent"}, "namespace 'skb-absent' does not exist: create it"),
        ({"runtime_class": "no-such-class"}, "has no RuntimeClass 'no-such-class': create one"),
    ],
)
def test_preflight_refuses_what_the_cluster_lacks(
    namespace: str, setting: dict[str, str], refusal: str
) -> None:
    values = {**k8s_config(namespace), **setting}
    values = {k: v for k, v in values.items() if k in ("namespace", "runtime_class",
                                                       "image_pull_policy", "accept_unenforced")}  # fmt: skip
    backend = make_backend("kubernetes", logging.getLogger("test"), values)
    with pytest.raises(SandboxError, match=refusal):
        asyncio.run(backend.preflight(build_policy_small()))


def test_a_warm_pod_is_claimed_once(core: client.CoreV1Api, namespace: str, tmp_path: Path) -> None:
    """pool_size 1: after a cold start the pool starts a pod ahead; the next kernel claims
    it (its kernel initialised before, now with this kernel's key), and no pod is left once
    the kernels are shut down and the pool drained."""
    from sandbox_kernel.pool import WarmPool

    (tmp_path / "warm").mkdir()
    spec = build_kernelspec(k8s_config(namespace, pool_size=1))
    (tmp_path / "warm" / "kernel.json").write_text(json.dumps(spec))
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path)])
    selector = "org.sandbox-kernel.managed=1"
    with running_kernel(ksm, "warm", timeout=K8S_POD_TIMEOUT) as first:
        assert not first.km.provisioner.last_start_warm  # type: ignore[union-attr]
        deadline = time.monotonic() + K8S_POD_TIMEOUT
        while len(core.list_namespaced_pod(namespace, label_selector=selector).items) < 2:
            assert time.monotonic() < deadline, "the pool did not start a pod ahead"
            time.sleep(1)
        time.sleep(5)  # the pooled kernel's pre-initialisation
        with running_kernel(ksm, "warm", timeout=K8S_POD_TIMEOUT) as warm:
            assert warm.km.provisioner.last_start_warm  # type: ignore[union-attr]
            assert warm.value("print(6 * 7)") == 42
    WarmPool.drain_all()
    deadline = time.monotonic() + K8S_POD_TIMEOUT
    while core.list_namespaced_pod(namespace, label_selector=selector).items:
        assert time.monotonic() < deadline, "kernel pods left after the pool's drain"
        time.sleep(1)


def test_doctor_passes_on_the_cluster() -> None:
    """``sandbox-kernel doctor --backend kubernetes`` (the kubeconfig context's namespace
    and the default pull policy): the host checks, a kernel pod, gVisor seen from outside
    (its RuntimeClass) and inside, and the self-contained attacks as the gap table says,
    the release-dependent ones reported as seen."""
    done = cli("doctor", "--backend", "kubernetes", "--json")
    report = json.loads(done.stdout)
    failed = [c for c in report["checks"] if c["ok"] is not True]
    # python3 may be unsandboxed on this test host: not the kubernetes backend's check
    assert [c["name"] for c in failed] in ([], ["notebooks naming python3 run sandboxed"]), failed
    names = [c["name"] for c in report["checks"]]
    assert "attack subset as documented" in names and "seen from outside" in names, names
