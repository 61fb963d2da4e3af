"""The ``kubernetes`` backend without a cluster (backends/kubernetes.py, kubernetes_cluster.py):
its settings and their refusals, what it says it cannot enforce, how it reads a starting
pod's status, its errors, and that ``ps``/``gc`` find nothing (and do not fail) where no
cluster is configured. tests/integration/test_kubernetes_backend.py runs it on a cluster."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from sandbox_kernel.backends import kubernetes_cluster
from sandbox_kernel.backends.kubernetes import (
    STUCK,
    UNENFORCED,
    KubernetesBackend,
    is_running,
    waiting_problem,
)
from sandbox_kernel.backends.kubernetes_cluster import (
    NoCluster,
    api_error,
    connect,
    needed_access,
)
from sandbox_kernel.backends.kubernetes_pod import SERVER_RULES, check_subdomain, kernel_pod
from sandbox_kernel.backends.registry import make_backend
from sandbox_kernel.errors import PolicyError, SandboxError
from sandbox_kernel.kernelspec import build_kernelspec
from sandbox_kernel.security.expectations import CLOSED_IN, GAPS, gaps_of, undecided
from tests.helpers import policy

LOG = logging.getLogger("test")


def backend(**settings: Any) -> KubernetesBackend:
    made = make_backend("kubernetes", LOG, settings)
    assert isinstance(made, KubernetesBackend)
    return made


def test_settings_are_checked_with_the_fix() -> None:
    made = backend(namespace="kernels", runtime_class="gvisor", image_pull_policy="Never")
    assert made.describe() == {
        "backend": "kubernetes",
        "namespace": "kernels",
        "runtime_class": "gvisor",
        "image_pull_policy": "Never",
        "accept_unenforced": [],
    }
    assert backend().namespace_setting == "" and backend().runtime_class == "gvisor"
    with pytest.raises(PolicyError, match="namespace: 'Kernels'"):
        backend(namespace="Kernels")
    with pytest.raises(PolicyError, match="runtime_class: 'g_visor'"):
        backend(runtime_class="g_visor")
    assert check_subdomain("gvisor.example.com", "runtime_class") == "gvisor.example.com"
    with pytest.raises(PolicyError, match="image_pull_policy: 'never' is not one of"):
        backend(image_pull_policy="never")
    with pytest.raises(PolicyError, match="accept_unenforced: unknown"):
        backend(accept_unenforced=["everything"])
    # the backend's settings belong to it only (the registry refuses them elsewhere)
    with pytest.raises(PolicyError, match="namespace: applies to the kubernetes backend"):
        make_backend("docker", LOG, {"namespace": "kernels", "runtime_class": "gvisor"})
    spec = build_kernelspec({"backend": "kubernetes", "namespace": "kernels"})
    assert spec["display_name"] == "Python 3 (sandboxed, Kubernetes pod)"
    assert spec["metadata"]["kernel_provisioner"]["config"]["namespace"] == "kernels"


def test_what_a_pod_cannot_enforce_refuses_the_launch_unless_accepted() -> None:
    """A pod has no pids cap of its own: preflight refuses (fail closed) before it connects
    to anything, naming it and accept_unenforced. The rlimits a pod spec cannot say either
    are the agent's to set (boot.kernel_rlimits)."""
    import asyncio

    assert set(backend().gaps(policy())) == set(UNENFORCED)
    with pytest.raises(SandboxError, match=r"cannot enforce this policy.*pids_limit.*accept_unenf"):
        asyncio.run(backend().preflight(policy()))


def test_the_pull_policy_reaches_the_pod() -> None:
    pod = kernel_pod(
        "k", policy(), runtime_class="gvisor", command=["x"], labels={}, image_pull_policy="Never"
    )
    assert pod["spec"]["containers"][0]["imagePullPolicy"] == "Never"


def _pod(phase: str, state: client.V1ContainerState | None = None, **status: Any) -> Any:
    statuses = [client.V1ContainerStatus(name="kernel", state=state, image="i", image_id="",
                                         ready=False, restart_count=0)] if state else None  # fmt: skip
    return client.V1Pod(
        status=client.V1PodStatus(phase=phase, container_statuses=statuses, **status)
    )


def test_a_starting_pod_is_waited_for_and_a_stuck_one_named() -> None:
    waiting = client.V1ContainerState(waiting=client.V1ContainerStateWaiting(reason="x"))
    running = client.V1ContainerState(running=client.V1ContainerStateRunning())
    assert waiting_problem(_pod("Pending")) is None
    assert waiting_problem(_pod("Pending", waiting)) is None  # e.g. ContainerCreating
    assert not is_running(_pod("Pending", waiting)) and not is_running(_pod("Running"))
    assert (
        is_running(_pod("Running", running)) and waiting_problem(_pod("Running", running)) is None
    )
    never = client.V1ContainerState(
        waiting=client.V1ContainerStateWaiting(reason="ErrImageNeverPull", message="no image")
    )
    problem = waiting_problem(_pod("Pending", never))
    assert problem and problem.startswith("ErrImageNeverPull: no image") and "import it" in problem
    assert "ImagePullBackOff" in STUCK and "RunContainerError" in STUCK
    ended = waiting_problem(_pod("Failed", reason="Evicted", message="memory"))
    assert ended == "the pod ended (Failed: Evicted memory) before the relay attached"
    done = client.V1ContainerState(
        terminated=client.V1ContainerStateTerminated(exit_code=1, reason="Error")
    )
    assert waiting_problem(_pod("Running", done)) == "the kernel container ended (Error, exit 1)"


def test_api_errors_name_the_fix() -> None:
    forbidden = api_error(client.ApiException(status=403, reason="Forbidden"), "create pods",
                          "kernels", "https://k")  # fmt: skip
    assert (
        forbidden.status == 403
        and "server_role" in str(forbidden)
        and "'kernels'" in str(forbidden)
    )
    down = api_error(ConnectionRefusedError(111, "refused"), "get pods", "k", "https://k:6443")
    assert down.status == 0 and "cannot reach the Kubernetes API server at https://k:6443" in str(
        down
    )
    assert "401" in str(api_error(client.ApiException(status=401), "get pods", "k", "h"))
    gone = api_error(client.ApiException(status=404, reason="Not Found"), "get pods", "k", "h")
    assert gone.status == 404 and "404 Not Found" in str(gone)


def test_preflight_asks_for_exactly_the_roles_permissions() -> None:
    """The access review covers every verb of the Role the docs give (one declaration)."""
    asked = needed_access()
    assert len(asked) == sum(len(r["resources"]) * len(r["verbs"]) for r in SERVER_RULES)
    assert ("pods", "", "create") in asked and ("pods", "attach", "get") in asked


def test_without_a_cluster_ps_and_gc_find_nothing_and_a_launch_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CI's unit tier has no cluster: ``sandbox-kernel ps``/``gc`` iterate over every
    backend, and this one must neither fail them nor pretend to have looked."""
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(NoCluster, match="KUBECONFIG"):
        connect()
    assert KubernetesBackend.list_sandboxes() == []
    assert KubernetesBackend.remove_orphans() == []
    # a broken kubeconfig is an error, not "no cluster"
    bad = tmp_path / "kubeconfig"
    bad.write_text("apiVersion: v1\nkind: Config\ncurrent-context: nowhere\n")
    monkeypatch.setenv("KUBECONFIG", str(bad))
    with pytest.raises(SandboxError, match="cannot use the kubeconfig") as caught:
        connect()
    assert not isinstance(caught.value, NoCluster)
    # in a pod without a service account token: no cluster either
    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setattr(kubernetes_cluster, "IN_CLUSTER_ACCOUNT", str(tmp_path / "none"))
    with pytest.raises(NoCluster):
        connect()


def test_gaps_of_a_pod_are_gvisors_of_any_release() -> None:
    """The node's gVisor release is unknown to the server: its table is gVisor's widest,
    the release-dependent attacks undecided (doctor reports them as seen)."""
    assert set(GAPS["docker"]) < set(GAPS["kubernetes"])
    assert gaps_of("kubernetes") == GAPS["kubernetes"]
    # where the release is known (the tests' dev cluster): docker's of it, the pod's own,
    # and fs-noexec-loader whatever the release (no noexec mount in a pod)
    pod_only = {"fs-mount-census", "fs-tmpfs-caps", "fs-noexec-tmpfs", "net-interface-config"}
    assert set(gaps_of("kubernetes", 20260905)) == set(gaps_of("docker", 20260905)) | pod_only | {
        "fs-noexec-loader"
    }
    assert undecided("kubernetes") == frozenset(CLOSED_IN) - {"fs-noexec-loader"}
    assert undecided("docker") == frozenset()


def test_doctor_reports_release_dependent_attacks_as_seen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under kubernetes, an attack a later gVisor closes may end either way (the node's
    release is unknown): reported, not failed; every other attack is held as always."""
    from sandbox_kernel import doctor

    verdicts: dict[str, dict[str, Any]] = {
        "info-agent-proc": {"blocked": True},  # closed by the node's release
        "net-userns-address": {"blocked": False},  # not closed by it
        "fs-noexec-memory": {"blocked": False},  # a gap of every release
        "net-lan-host": {"blocked": True},
    }
    monkeypatch.setattr(doctor, "_verdicts", lambda kc, say: verdicts)
    report = doctor.Report()
    args = ("kubernetes", gaps_of("kubernetes"), lambda _msg: None)
    doctor._judge_attacks(report, None, *args, either=undecided("kubernetes"))
    (check,) = report.checks
    assert check.ok, check.detail
    assert "info-agent-proc blocked" in check.detail
    assert "net-userns-address NOT blocked" in check.detail
    verdicts["net-lan-host"] = {"blocked": False, "detail": "connected"}
    report = doctor.Report()
    doctor._judge_attacks(report, None, *args, either=undecided("kubernetes"))
    assert not report.checks[0].ok and "net-lan-host (connected)" in report.checks[0].detail


def test_ps_and_gc_look_where_the_kubernetes_kernelspecs_put_their_pods(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sandbox_kernel import kernelspec
    from sandbox_kernel.backends.kubernetes import namespaces

    found = {
        "a": ("/k/a", {"backend": "kubernetes", "namespace": "kernels"}),
        "b": ("/k/b", {"backend": "kubernetes"}),  # the configuration's namespace
        "c": ("/k/c", {"backend": "docker"}),
        "d": ("/k/d", None),  # not sandboxed
    }
    monkeypatch.setattr(kernelspec, "effective_kernelspecs", lambda: found)
    assert namespaces("team") == ["kernels", "team"]


def test_a_launch_cancelled_while_the_pod_is_created_removes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """boot() removes a sandbox only once create() has returned its id: a cancellation
    (the launch timeout) during the API call must not leave the pod behind."""
    import asyncio
    import threading
    import time

    from sandbox_kernel.backends.base import Preflight
    from sandbox_kernel.backends.owner import Owner

    made, removed = threading.Event(), list[str]()
    made_backend = backend()

    def slow_create(manifest: dict[str, Any]) -> str:
        time.sleep(0.3)  # the API call, still under way when the launch is cancelled
        made.set()
        return str(manifest["metadata"]["name"])

    monkeypatch.setattr(made_backend, "_create", slow_create)
    monkeypatch.setattr(made_backend, "_remove", removed.append)

    async def launch() -> None:
        task = asyncio.ensure_future(
            made_backend.create(
                policy(),
                Preflight(runtime="gvisor"),
                command=["python3"],
                owner=Owner.current(kernel_id="k"),
                name="kernel-x",
            )
        )
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.6)  # the shielded removal finishes

    asyncio.run(launch())
    assert made.is_set() and removed == ["kernel-x"]
