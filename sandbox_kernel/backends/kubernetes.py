"""The ``kubernetes`` backend: one gVisor pod per kernel, the relay over its attach stream.

Who calls what: see ``base.py``. The pod is ``kubernetes_pod.kernel_pod`` of the policy
(its RuntimeClass the ``runtime_class`` setting, in the ``namespace`` setting's
namespace), labelled with its owner (``kubernetes_inventory.pod_labels``); ``create``
makes it (the kubelet starts it at once: the agent's bootstrap waits on stdin),
``attach`` waits until it runs and connects the session to its attach stream
(``kubernetes_attach``), ``start`` has nothing left to do, ``kill`` and ``remove``
delete it (``remove`` until the API server no longer has it). Every API call is the
official client's, blocking, so each runs in a worker thread; waits are asyncio sleeps,
so a launch timeout cancels them. ``ps`` and ``gc`` look in the namespaces of the
kubernetes kernelspecs Jupyter finds here and the configuration's own.

What the server cannot know is which gVisor release the node runs (no API says, and
gVisor's kernel reports a fixed Linux version): ``doctor`` holds a pod to the gaps every
release has, and reports the release-dependent ones as seen (docs/kubernetes.md).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from ..errors import PolicyError, SandboxError
from ..policy import SandboxPolicy
from ..relay.session import AgentSession
from ..relay.thread import RelayThread
from ..settings import check
from .base import Preflight, SandboxBackend, SandboxInfo
from .capabilities import check_accepted, refuse_unenforced
from .kubernetes_attach import attach_pod
from .kubernetes_cluster import (
    ApiError,
    Cluster,
    NoCluster,
    access_problems,
    api_error,
    call,
    connect,
)
from .kubernetes_inventory import BACKEND, pod_labels, remove_orphan_pods
from .kubernetes_pod import CONTAINER, SECCOMP_PROFILE, check_name, check_subdomain, kernel_pod
from .owner import LABEL_BACKEND, LABEL_MANAGED, Owner

POLL = 0.25  # seconds between looks at a starting pod
REMOVE_TIMEOUT = 60.0  # seconds remove() waits for the API server to drop a deleted pod
# A container that waits for one of these will not start by itself: end the launch now,
# with the kubelet's words, rather than at the launch timeout.
STUCK = {
    "ErrImageNeverPull": "the node does not have the image and image_pull_policy is Never: "
    "import it into the node's container runtime, or allow pulls",
    "ErrImagePull": "the node cannot pull the image: push it to a registry the node reaches",
    "ImagePullBackOff": "the node cannot pull the image: push it to a registry the node reaches",
    "InvalidImageName": "fix the image setting",
    "CreateContainerConfigError": "the pod's configuration is refused by the node (does "
    f"its kubelet's seccomp folder hold {SECCOMP_PROFILE}? docs/kubernetes.md)",
    "CreateContainerError": "the node's runtime could not create the container (does its "
    f"kubelet's seccomp folder hold {SECCOMP_PROFILE}? docs/kubernetes.md)",
    "RunContainerError": "the node's runtime could not start the container (is the "
    "RuntimeClass's handler installed on the node?)",
}

# What a pod spec cannot say and nothing else sets: a pids cap of the pod's own (the
# kubelet's podPidsLimit is the node's setting). Refused unless accepted, as the pipe
# backends do. (Per-container rlimits, which a pod spec cannot say either, the agent
# sets on the kernel: Preflight.agent_rlimits.)
UNENFORCED = {
    "pids_limit": "a pod has no pids cap of its own (the node's podPidsLimit, if set, is "
    "the kubelet's); nproc_limit bounds the kernel's processes inside gVisor",
}


def waiting_problem(pod: Any) -> str | None:
    """Why a created kernel pod will never run, from its status (the client's ``V1Pod``;
    pure), or None while it may still start."""
    status = pod.status
    phase = getattr(status, "phase", None)
    if phase in ("Succeeded", "Failed"):
        why = " ".join(x for x in (status.reason, status.message) if x)
        return f"the pod ended ({phase}{': ' + why if why else ''}) before the relay attached"
    for container in getattr(status, "container_statuses", None) or ():
        waiting = container.state.waiting if container.state else None
        if waiting is not None and waiting.reason in STUCK:
            return f"{waiting.reason}: {waiting.message or ''} ({STUCK[waiting.reason]})"
        terminated = container.state.terminated if container.state else None
        if terminated is not None:
            return f"the kernel container ended ({terminated.reason}, exit {terminated.exit_code})"
    return None


def is_running(pod: Any) -> bool:
    """The kernel's container runs: its attach stream can be opened (pure)."""
    if getattr(pod.status, "phase", None) != "Running":
        return False
    return any(
        c.name == CONTAINER and c.state is not None and c.state.running is not None
        for c in pod.status.container_statuses or ()
    )


class KubernetesBackend(SandboxBackend):
    name = "kubernetes"
    label = "sandboxed, Kubernetes pod"
    # namespaces whose orphans this process has removed (once each, at a first launch
    # there, as the other backends' reap_orphans_once)
    _reaped: ClassVar[set[str]] = set()

    def __init__(
        self,
        log: logging.Logger | None = None,
        *,
        namespace: str = "",
        runtime_class: str = "gvisor",
        image_pull_policy: str = "IfNotPresent",
        accept_unenforced: Iterable[str] = (),
        **_other: Any,
    ) -> None:
        super().__init__(log)
        if not isinstance(namespace, str) or (namespace and not _is_label(namespace)):
            raise PolicyError(
                f"namespace: {namespace!r} is not a namespace name (lower-case letters, "
                "digits and '-', at most 63 characters); empty: the configuration's own"
            )
        if not isinstance(runtime_class, str):
            raise PolicyError(f"runtime_class: {runtime_class!r} is not a name")
        self.namespace_setting = namespace
        self.runtime_class = check_subdomain(runtime_class, "runtime_class")
        self.image_pull_policy = check("image_pull_policy", image_pull_policy)
        self.accept_unenforced = check_accepted(accept_unenforced)
        self._cluster: Cluster | None = None
        self._core: Any = None

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "namespace": self.namespace_setting,
            "runtime_class": self.runtime_class,
            "image_pull_policy": self.image_pull_policy,
            "accept_unenforced": sorted(self.accept_unenforced),
        }

    @property
    def namespace(self) -> str:
        """The kernels' namespace: the setting, else the configuration's (after connect)."""
        if self.namespace_setting:
            return self.namespace_setting
        return self._cluster.namespace if self._cluster else "default"

    def gaps(self, policy: SandboxPolicy) -> Mapping[str, str]:
        return dict(UNENFORCED)

    # -- blocking parts (worker threads) ---------------------------------------------------
    def _connect(self) -> tuple[Cluster, Any]:
        if self._cluster is None:
            from kubernetes import client

            cluster = connect()
            self._core = client.CoreV1Api(cluster.api())
            self._cluster = cluster
        return self._cluster, self._core

    def _preflight(self, policy: SandboxPolicy) -> Preflight:
        from kubernetes import client

        warnings = refuse_unenforced(self.name, self.gaps(policy), self.accept_unenforced)
        cluster, core = self._connect()
        ns = self.namespace
        nodes = client.NodeV1Api(core.api_client)
        try:
            call(cluster, ns, "read RuntimeClasses", nodes.read_runtime_class, self.runtime_class)
        except ApiError as exc:
            if exc.status == 404:
                raise SandboxError(
                    f"the cluster has no RuntimeClass {self.runtime_class!r}: create one "
                    "whose handler runs gVisor with no network and oci-seccomp "
                    "(docs/kubernetes.md, 'What a cluster must provide'), or set "
                    "runtime_class to the cluster's gVisor class"
                ) from None
            if exc.status != 403:
                raise
            # The server's Role need not read cluster objects: the API server's RuntimeClass
            # admission refuses a pod naming a class that does not exist anyway.
            warnings += (
                f"cannot read RuntimeClass {self.runtime_class!r} (forbidden): a pod naming "
                "a missing class is refused at creation",
            )
        try:
            call(cluster, ns, "read the namespace", core.read_namespace, ns)
        except ApiError as exc:
            if exc.status == 404:
                raise SandboxError(
                    f"the kernels' namespace {ns!r} does not exist: create it, or set the "
                    "namespace setting to one that does"
                ) from None
            if exc.status != 403:  # forbidden: the Role is namespaced; create will say
                raise
        denied = access_problems(cluster, core.api_client, ns)
        if denied:
            raise SandboxError(
                f"this server's Kubernetes account may not {', '.join(denied)} in namespace "
                f"{ns!r}: bind it to the Role kubernetes_pod.server_role there "
                "(docs/kubernetes.md shows it)"
            )
        return Preflight(
            runtime=self.runtime_class,
            warnings=warnings,
            foreign_kernel=True,  # the RuntimeClass must be gVisor: the hello's release says
            kernel_user_apart=True,  # the agent is root of gVisor's kernel, as under docker
            agent_rlimits=True,  # a pod spec has no rlimits
        )

    def _create(self, manifest: dict[str, Any]) -> str:
        cluster, core = self._connect()
        ns = self.namespace
        call(cluster, ns, "create pods", core.create_namespaced_pod, ns, manifest)
        return str(manifest["metadata"]["name"])

    def _read(self, name: str) -> Any:
        cluster, core = self._connect()
        return call(
            cluster, self.namespace, "get pods", core.read_namespaced_pod, name, self.namespace
        )

    def _delete(self, name: str) -> bool:
        """Delete the pod at once; False if it was already gone."""
        cluster, core = self._connect()
        ns = self.namespace
        try:
            call(
                cluster, ns, "delete pods", core.delete_namespaced_pod, name, ns,
                grace_period_seconds=0,
            )  # fmt: skip
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def _remove(self, name: str) -> None:
        """Delete the pod and wait until the API server no longer has it."""
        if not self._delete(name):
            return
        deadline = time.monotonic() + REMOVE_TIMEOUT
        while time.monotonic() < deadline:
            try:
                self._read(name)
            except ApiError as exc:
                if exc.status == 404:
                    return
                raise
            time.sleep(POLL)
        raise SandboxError(
            f"kernel pod {self.namespace}/{name} was deleted but is still there after "
            f"{REMOVE_TIMEOUT:.0f} s (its node may be unreachable: the cluster removes it "
            "once the node answers or is gone)"
        )

    # -- SandboxBackend --------------------------------------------------------------------
    async def preflight(self, policy: SandboxPolicy) -> Preflight:
        found = await asyncio.to_thread(self._preflight, policy)
        await self._reap_once()
        return found

    async def _reap_once(self) -> None:
        """At the first launch in this process for a namespace: remove the pods of this
        host's dead Jupyter processes there (a failure to look is logged)."""
        if self.namespace in self._reaped:
            return
        self._reaped.add(self.namespace)
        cluster, core = self._connect()
        try:
            removed = await asyncio.to_thread(_remove_orphans, cluster, core, self.namespace)
        except SandboxError as exc:
            self.log.warning("could not look for leftover kernel pods: %s", exc)
            return
        if removed:
            self.log.warning("removed kernel pods left by dead Jupyter processes: %s", removed)

    async def create(
        self,
        policy: SandboxPolicy,
        preflight: Preflight,
        *,
        command: list[str],
        owner: Owner,
        name: str,
    ) -> str:
        manifest = kernel_pod(
            check_name(name),
            policy,
            runtime_class=preflight.runtime,
            command=command,
            labels=pod_labels(owner),
            image_pull_policy=self.image_pull_policy,
        )
        made = asyncio.ensure_future(asyncio.to_thread(self._create, manifest))
        try:
            return await asyncio.shield(made)
        except asyncio.CancelledError:
            # A launch timeout while the API call is under way: the pod may be made after
            # all, and boot() has no id to remove yet.
            await asyncio.shield(self._remove_when_made(made, name))
            raise

    async def _remove_when_made(self, made: asyncio.Future[str], name: str) -> None:
        try:
            await made
        except SandboxError:
            return  # the API server refused it: nothing to remove
        await self.remove(name)

    async def attach(self, sandbox_id: str, session: AgentSession) -> None:
        """Wait until the pod's container runs (or cannot), then open its attach stream
        with a client of its own (``Cluster.api``)."""
        from kubernetes import client

        while True:
            pod = await asyncio.to_thread(self._read, sandbox_id)
            if is_running(pod):
                break
            problem = waiting_problem(pod)
            if problem:
                raise SandboxError(f"kernel pod {self.namespace}/{sandbox_id}: {problem}")
            await asyncio.sleep(POLL)
        cluster, _ = self._connect()
        core = client.CoreV1Api(cluster.api())
        await RelayThread.get().run(
            attach_pod(session, core, self.namespace, sandbox_id, CONTAINER)
        )

    async def start(self, sandbox_id: str) -> None:
        """Nothing: the pod runs since ``create``, its agent waiting on the attach stream."""

    def inspect(self, sandbox_id: str) -> dict[str, str]:
        return {"runtime": str(self._read(sandbox_id).spec.runtime_class_name)}

    async def kill(self, sandbox_id: str) -> None:
        await asyncio.to_thread(self._delete, sandbox_id)

    async def remove(self, sandbox_id: str) -> None:
        try:
            await asyncio.to_thread(self._remove, sandbox_id)
        except RuntimeError:  # interpreter shutdown (atexit drain): no worker threads, block
            self._remove(sandbox_id)

    # -- ps and gc (blocking) ----------------------------------------------------------------
    @classmethod
    def list_sandboxes(cls) -> list[SandboxInfo]:
        """Kernel pods in the namespaces :func:`namespaces` names (none where no cluster is
        configured). Memory and CPU: unknown (the API has them only through a metrics
        server)."""
        found = _cluster_or_none()
        if found is None:
            return []
        cluster, core = found
        now = datetime.datetime.now(datetime.timezone.utc)
        rows = []
        selector = f"{LABEL_MANAGED}=1,{LABEL_BACKEND}={BACKEND}"
        for ns in namespaces(cluster.namespace):
            pods = call(
                cluster, ns, "list pods", core.list_namespaced_pod, ns, label_selector=selector
            )
            for pod in pods.items:
                owner = Owner.from_labels(pod.metadata.labels or {})
                if owner is None:
                    continue
                started = pod.status.start_time or pod.metadata.creation_timestamp or now
                rows.append(
                    SandboxInfo(
                        backend=BACKEND,
                        name=f"{ns}/{pod.metadata.name}",
                        id=str(pod.metadata.uid or "")[:12],
                        kernel_id=owner.kernel_id,
                        pooled=owner.pooled,
                        user=owner.user,
                        server_pid=owner.server_pid,
                        uptime_s=(now - started).total_seconds(),
                        memory_mib=None,
                        cpu_percent=None,
                    )
                )
        return rows

    @classmethod
    def remove_orphans(cls) -> list[str]:
        """Delete the kernel pods of this host's dead Jupyter processes in the namespaces
        :func:`namespaces` names; nothing where no cluster is configured."""
        found = _cluster_or_none()
        if found is None:
            return []
        cluster, core = found
        removed: list[str] = []
        for ns in namespaces(cluster.namespace):
            removed += [f"{ns}/{n}" for n in _remove_orphans(cluster, core, ns)]
        return removed


def _is_label(name: str) -> bool:
    try:
        check_name(name, "namespace")
    except PolicyError:
        return False
    return True


def _remove_orphans(cluster: Cluster, core: Any, namespace: str) -> list[str]:
    from kubernetes.client import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return remove_orphan_pods(core, namespace)
    except (ApiException, HTTPError, OSError) as exc:
        raise api_error(exc, "list and delete pods", namespace, cluster.host) from None


def _cluster_or_none() -> tuple[Cluster, Any] | None:
    """The configured cluster and a client, or None where there is none (or no client)."""
    try:
        cluster = connect()
    except NoCluster:
        return None
    from kubernetes import client

    return cluster, client.CoreV1Api(cluster.api())


def namespaces(default: str) -> list[str]:
    """Where ``ps`` and ``gc`` look: the namespaces of the kubernetes kernelspecs Jupyter
    finds here (their ``namespace`` setting, else ``default``: the configuration's)."""
    from ..kernelspec import effective_kernelspecs

    found = {default}
    for _folder, config in effective_kernelspecs().values():
        if config and config.get("backend") == BACKEND:
            found.add(str(config.get("namespace") or default))
    return sorted(found)
