"""Docker backends: one container per kernel, gVisor (``runsc``) by default
(``docker``), or runc on the host's kernel (``docker-runc``, a weaker tier).

Who calls what: see ``base.py``. Docker SDK calls block, so each runs in a worker thread
(``asyncio.to_thread``); the attach stream (``docker_attach.py``) runs on the relay
loop. The sandbox's owner is stored as container labels (``owner.py``); a pooled
container, whose labels cannot change, is renamed when a kernel claims it, and ``ps``
reads the kernel id from that name.
"""

from __future__ import annotations

import asyncio
import errno
import grp
import logging
import os
import pwd
import re
import socket
import stat
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from .. import endings
from ..errors import PolicyError, SandboxError
from ..policy import GVISOR_RUNTIMES, MAX_NPROC, SandboxPolicy
from ..relay.session import AgentSession
from ..relay.thread import RelayThread
from .base import Preflight, SandboxBackend, SandboxInfo
from .docker_attach import attach_stream
from .gvisor import AGENT_CAPABILITIES, REQUIRED_RUNSC_ARGS
from .owner import LABEL_BACKEND, LABEL_HOST, LABEL_MANAGED, LABEL_SERVER_PID, Owner
from .seccomp import seccomp_security_opt

__all__ = ["AGENT_CAPABILITIES", "REQUIRED_RUNSC_ARGS", "DockerBackend", "DockerRuncBackend"]


_WITHOUT_RUNSC_ARG = {
    "--network=none": "gVisor would serve the network of the container's namespace, and "
    "Docker's network_mode=none would be the only lock left",
    "--oci-seccomp": "the sandbox's seccomp profile would be ignored",
}
SETUP_HINT = "run `sudo sandbox-kernel setup-host` (installs Docker + gVisor, starts dockerd)"


def unreachable_message(
    where: str,
    probe_errno: int | None,
    detail: str,
    *,
    user: str,
    socket_owner: tuple[str, str, int] = ("?", "?", 0),
    docker_host: str | None = None,
) -> str:
    """Why the Docker daemon at ``where`` cannot be used and what to do (pure).

    ``probe_errno`` is what connecting to its unix socket gave (None: not probed or it
    connected); ``socket_owner`` is the socket's (user, group, mode). A socket this process
    may not open is not a stopped daemon: telling a user to start dockerd would be wrong.
    ``docker_host``: the DOCKER_HOST this process has, if any, which chose ``where``; a
    wrong one looks just like a stopped daemon, so the message names it."""
    if docker_host is not None:
        return (
            unreachable_message(where, probe_errno, detail, user=user, socket_owner=socket_owner)
            + f". {where} comes from DOCKER_HOST={docker_host!r} in this environment: if that "
            "is not where dockerd listens, fix or unset DOCKER_HOST"
        )
    if probe_errno in (errno.EACCES, errno.EPERM):
        owner, group, mode = socket_owner
        return (
            f"permission denied on the Docker socket {where} ({owner}:{group}, mode {mode:o}): "
            f"this process runs as {user}, which may not use Docker. That is deliberate on a "
            "shared host: whoever can use the Docker socket is root on it. Either use a "
            "backend without a daemon (`sandbox-kernel install --backend runsc`: gVisor as "
            "this user; docs/jupyterhub.md, recipe (a)), or run this server as a login-less "
            f"account in the {group!r} group (recipe (b))"
        )
    if probe_errno in (errno.ENOENT, errno.ECONNREFUSED):
        state = "no socket" if probe_errno == errno.ENOENT else "nothing listens on the socket"
        return (
            f"cannot reach the Docker daemon at {where}: {state}, dockerd is not running. "
            f"Start it: {SETUP_HINT} (or `systemctl start docker`)"
        )
    return (
        f"cannot reach the Docker daemon at {where}: {detail}. "
        f"Start it: {SETUP_HINT} (or `systemctl start docker`)"
    )


class DockerForbidden(SandboxError):
    """This process may not use the Docker socket: it has no Docker sandboxes to look at
    (``gc`` and ``ps`` note it; nothing was missed)."""


def daemon_error(exc: BaseException) -> SandboxError:
    """:func:`daemon_unreachable` as the error to raise (blocking: it probes the socket)."""
    message = daemon_unreachable(exc)
    forbidden = message.startswith("permission denied on the Docker socket")
    return DockerForbidden(message) if forbidden else SandboxError(message)


def daemon_unreachable(exc: BaseException) -> str:
    """:func:`unreachable_message` for this process and the configured endpoint, after
    probing the unix socket (blocking: a connect to a local socket)."""
    docker_host = os.environ.get("DOCKER_HOST") or None
    where = docker_host or "unix:///var/run/docker.sock"
    probe: int | None = None
    owner = ("?", "?", 0)
    url = urlparse(where)
    if url.scheme == "unix":
        where = url.path
        try:
            st = os.stat(url.path)
            owner = (
                _name(pwd.getpwuid, st.st_uid),
                _name(grp.getgrgid, st.st_gid),
                stat.S_IMODE(st.st_mode),
            )
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(url.path)
        except OSError as err:
            probe = err.errno
    user = f"{_name(pwd.getpwuid, os.geteuid())} (uid {os.geteuid()})"
    return unreachable_message(
        where, probe, str(exc), user=user, socket_owner=owner, docker_host=docker_host
    )


def _name(lookup: Any, ident: int) -> str:
    try:
        return str(lookup(ident)[0])
    except KeyError:
        return str(ident)


def container_spec(
    policy: SandboxPolicy,
    *,
    runtime: str,
    command: list[str],
    labels: Mapping[str, str],
    name: str,
) -> dict[str, Any]:
    """Keyword arguments for ``docker.containers.create``: the policy in Docker's terms.

    Pure, so every isolation property is unit-testable: no mounts, volumes or
    devices (not even gVisor's /dev/net/tun); no network; read-only rootfs with
    capped tmpfs; unprivileged user with no capabilities; memory/CPU/process caps;
    no logging of the relay stream.
    """
    uid_gid = policy.user.split(":")
    tmpfs_opts = "rw,nosuid,nodev,noexec"
    gvisor = runtime in GVISOR_RUNTIMES
    if gvisor:
        # gVisor counts RLIMIT_NPROC per sandbox (a fork bomb meets EAGAIN inside), while
        # a host pids limit hit kills the whole sandbox: keep it as a looser backstop.
        nproc, pids = policy.nproc, policy.pids_limit
    else:
        # Under runc RLIMIT_NPROC counts every process of the uid on the host, across all
        # sandboxes: the pids cgroup is the per-sandbox limit there (fork gets EAGAIN).
        nproc, pids = MAX_NPROC, policy.nproc
    return {
        "image": policy.image,
        "command": command,
        "name": name,
        "labels": dict(labels),
        "runtime": runtime,
        "stdin_open": True,
        "tty": False,
        # detach=False makes the SDK set StdinOnce: when our attach connection drops
        # (the server died), the sandbox's stdin closes and the agent ends it.
        "detach": False,
        # Under gVisor the agent is root of the sandbox's own kernel, with only the
        # capabilities it needs to run the kernel under the policy's uid (which then holds
        # none) and to signal it: kernel code cannot reach the agent's pipe or process,
        # and gVisor stands between that root and the host. Under runc, container root
        # would be the host's root: the agent keeps the policy's uid there, and the host
        # kernel protects PID 1 (see inside/agent.py).
        "user": "0:0" if gvisor else policy.user,
        **({"cap_add": list(AGENT_CAPABILITIES)} if gvisor else {}),
        "working_dir": "/" if gvisor else policy.home,
        "environment": {"HOME": policy.home, "LANG": "C.UTF-8"},
        "hostname": "sandbox",
        "network_mode": "none",
        # Docker would copy in the host's /etc/resolv.conf (naming the host's resolver);
        # the sandbox gets its own loopback, where nothing answers.
        "dns": ["127.0.0.1"],
        "read_only": True,
        "tmpfs": {
            "/tmp": f"{tmpfs_opts},size={policy.tmp_bytes},mode=1777",
            policy.home: f"{tmpfs_opts},size={policy.home_bytes},uid={uid_gid[0]},"
            f"gid={uid_gid[-1]},mode=0700",
            # gVisor puts /dev/net/tun in every sandbox; an empty read-only tmpfs hides it
            # (mount and device mknod are refused by seccomp, so it cannot be uncovered).
            "/dev/net": "ro,nosuid,nodev,noexec,size=4k,mode=0755",
        },
        "volumes": {},
        "mounts": [],
        "devices": [],
        "privileged": False,
        "cap_drop": ["ALL"],
        "security_opt": [
            "no-new-privileges",
            seccomp_security_opt(host_kernel=runtime not in GVISOR_RUNTIMES),
        ],
        "mem_limit": policy.memory_bytes,
        "memswap_limit": policy.memory_bytes,  # no swap beyond the memory cap
        "nano_cpus": int(policy.cpus * 1e9),
        "pids_limit": pids,
        "ulimits": [
            {"Name": "nproc", "Soft": nproc, "Hard": nproc},
            {"Name": "nofile", "Soft": policy.nofile, "Hard": policy.nofile},
            {"Name": "core", "Soft": 0, "Hard": 0},
        ],
        "log_config": {"Type": "none", "Config": {}},
        # If the server dies, stdin closes, the agent exits and Docker removes the container.
        "auto_remove": True,
        "init": False,  # the agent is PID 1 and reaps
    }


def docker_endpoint() -> tuple[str, Any]:
    """Where the Docker API listens, from DOCKER_HOST as the Docker SDK reads it."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if os.environ.get("DOCKER_TLS_VERIFY"):
        raise SandboxError(
            "DOCKER_TLS_VERIFY is set: the relay supports local unix:// or plain tcp:// only"
        )
    url = urlparse(host)
    if url.scheme == "unix":
        return ("unix", url.path)
    if url.scheme == "tcp" and url.hostname:
        return ("tcp", (url.hostname, url.port or 2375))
    raise SandboxError(
        f"DOCKER_HOST={host!r} is not supported by the relay (use unix:// or tcp://)"
    )


CLAIMED = "-kernel-"  # in a claimed pooled container's name, before the kernel id


def claimed_name(name: str, kernel_id: str) -> str:
    return f"{name}{CLAIMED}{kernel_id}"


def list_containers() -> list[SandboxInfo]:
    """Running sandboxes on this daemon (blocking; for ``ps``): name, kernel, owner,
    uptime, memory and CPU use from one Docker stats sample each."""
    import datetime

    import docker

    try:
        client = docker.from_env(timeout=30)
        containers = client.containers.list(filters={"label": f"{LABEL_MANAGED}=1"})
    except docker.errors.DockerException as exc:
        raise daemon_error(exc) from None
    rows = []
    now = datetime.datetime.now(datetime.timezone.utc)
    for c in containers:
        owner = Owner.from_labels(c.labels or {})
        if owner is None:
            continue
        try:
            stats = c.stats(stream=False)
        except (docker.errors.NotFound, ValueError):
            # Removed since the listing (a kernel shut down meanwhile); while the removal is
            # under way the daemon may answer with an empty body (ValueError: not JSON).
            continue
        cpu, pre = stats.get("cpu_stats", {}), stats.get("precpu_stats", {})
        used = cpu.get("cpu_usage", {}).get("total_usage", 0) - pre.get("cpu_usage", {}).get(
            "total_usage", 0
        )
        system = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
        cpus = cpu.get("online_cpus") or 1
        started = c.attrs["State"]["StartedAt"][:26].rstrip("Z")
        start = datetime.datetime.fromisoformat(started).replace(tzinfo=datetime.timezone.utc)
        kernel_id, pooled = owner.kernel_id, owner.pooled
        if pooled and CLAIMED in c.name:  # a pooled sandbox a kernel has claimed
            kernel_id, pooled = c.name.rsplit(CLAIMED, 1)[1], False
        rows.append(
            SandboxInfo(
                backend=c.labels.get(LABEL_BACKEND, "docker"),
                name=c.name,
                id=c.id[:12],
                kernel_id=kernel_id,
                pooled=pooled,
                user=owner.user,
                server_pid=owner.server_pid,
                uptime_s=(now - start).total_seconds(),
                memory_mib=stats.get("memory_stats", {}).get("usage", 0) / 2**20,
                cpu_percent=100.0 * used / system * cpus if system > 0 else 0.0,
            )
        )
    return rows


class OomWatcher:
    """Ends a sandbox as soon as the host's OOM killer strikes inside it.

    Under gVisor the OOM killer may pick one of the sandbox's helper processes
    rather than the whole sandbox, which then hangs at its memory cap for a
    minute or more. Watching Docker's ``oom`` events for this server's
    containers and killing the container at once turns that into a prompt
    death that jupyter_client's restarter sees. One daemon thread per process,
    started by the first preflight.
    """

    _lock = threading.Lock()
    _thread: threading.Thread | None = None

    @classmethod
    def ensure_running(cls, log: logging.Logger) -> None:
        with cls._lock:
            if cls._thread is None or not cls._thread.is_alive():
                cls._thread = threading.Thread(
                    target=cls._run, args=(log,), name="sandbox-kernel-oom", daemon=True
                )
                cls._thread.start()

    @staticmethod
    def _run(log: logging.Logger) -> None:
        import time

        import docker

        filters = {
            "type": "container",
            "event": "oom",
            "label": [f"{LABEL_MANAGED}=1", f"{LABEL_SERVER_PID}={os.getpid()}"],
        }
        since = int(time.time())
        while True:
            try:
                client = docker.from_env(timeout=3600)
                for event in client.api.events(since=since, filters=filters, decode=True):
                    since = int(event.get("time", since))
                    sandbox_id = event.get("id", "")
                    name = (
                        (event.get("Actor") or {})
                        .get("Attributes", {})
                        .get("name", sandbox_id[:12])
                    )
                    log.warning("sandbox %s hit its memory limit: ending it", name)
                    endings.report(sandbox_id, endings.MEMORY_LIMIT)
                    try:
                        client.api.kill(sandbox_id)
                    except docker.errors.APIError:
                        pass  # already gone
            except Exception as exc:  # daemon restarted or unreachable: retry quietly
                log.debug("OOM watcher reconnecting: %s", exc)
                time.sleep(2)


class DockerBackend(SandboxBackend):
    name = "docker"
    label = "sandboxed"

    def __init__(
        self,
        log: logging.Logger | None = None,
        *,
        runtime: str = "runsc",
        allow_weaker_runtime: bool = False,
        **_other: Any,
    ) -> None:
        super().__init__(log)
        if not isinstance(runtime, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", runtime):
            raise PolicyError(f"runtime: {runtime!r} is not a runtime name (e.g. 'runsc')")
        if runtime not in GVISOR_RUNTIMES and not allow_weaker_runtime:
            raise PolicyError(
                f"runtime: {runtime!r} is not gVisor; the sandbox refuses weaker isolation "
                "unless the operator sets allow_weaker_runtime=True"
            )
        self.runtime = runtime
        self.allow_weaker_runtime = bool(allow_weaker_runtime)
        self._client: Any = None
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "runtime": self.runtime,
            "allow_weaker_runtime": self.allow_weaker_runtime,
        }

    # -- the Docker client (blocking; only ever called in worker threads) ---------
    def _docker(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = docker_client(timeout=60)
            return self._client

    def _preflight(self, policy: SandboxPolicy) -> Preflight:
        import docker

        client = self._docker()
        try:
            info = client.info()
        except docker.errors.DockerException as exc:
            self._client = None
            raise SandboxError(
                f"the Docker daemon stopped answering: {exc}. {SETUP_HINT}"
            ) from None
        runtimes = sorted((info.get("Runtimes") or {}).keys())
        runtime = self.runtime
        warnings: list[str] = []
        if runtime not in runtimes:
            if runtime in GVISOR_RUNTIMES and self.allow_weaker_runtime:
                warnings.append(
                    f"Docker has no {runtime!r} runtime; allow_weaker_runtime=True, so this kernel "
                    "runs under runc WITHOUT gVisor: the host kernel is exposed to it"
                )
                runtime = "runc"
            else:
                raise SandboxError(
                    f"the Docker daemon has no {runtime!r} runtime "
                    f"(it has: {', '.join(runtimes)}). Register gVisor: {SETUP_HINT}; it adds "
                    "runsc to /etc/docker/daemon.json. Refusing to start a weaker sandbox "
                    "(set allow_weaker_runtime=True to override)."
                )
        elif runtime in GVISOR_RUNTIMES:
            args = (info["Runtimes"][runtime] or {}).get("runtimeArgs") or []
            missing = [a for a in REQUIRED_RUNSC_ARGS if a not in args]
            if missing:
                why = "; ".join(f"without {a}, {_WITHOUT_RUNSC_ARG[a]}" for a in missing)
                raise SandboxError(
                    f"the Docker daemon runs {runtime!r} without {' '.join(missing)} "
                    f"(runtimeArgs: {args}): {why}. Refusing to start a weaker sandbox. "
                    f"Fix /etc/docker/daemon.json (runsc's runtimeArgs must include "
                    f"{' and '.join(REQUIRED_RUNSC_ARGS)}): {SETUP_HINT}"
                )
        else:
            warnings.append(
                f"runtime {runtime!r} is not gVisor: weaker isolation (allow_weaker_runtime=True)"
            )
        try:
            client.images.get(policy.image)
        except docker.errors.ImageNotFound:
            raise SandboxError(
                f"kernel image {policy.image!r} is not on this host. Build the default one with "
                "`sudo sandbox-kernel image build`, or `docker pull`/`docker build` it "
                "(see sandbox_kernel/image/Dockerfile)"
            ) from None
        except docker.errors.DockerException as exc:
            raise SandboxError(f"cannot inspect image {policy.image!r}: {exc}") from None
        gvisor = runtime in GVISOR_RUNTIMES
        return Preflight(
            runtime=runtime,
            warnings=tuple(warnings),
            foreign_kernel=gvisor,
            kernel_user_apart=gvisor,
        )

    def _create(self, spec: dict[str, Any]) -> str:
        import docker

        try:
            container = self._docker().containers.create(**spec)
        except docker.errors.APIError as exc:
            raise SandboxError(
                f"Docker could not create the sandbox: {exc.explanation or exc}"
            ) from None
        return str(container.id)

    def _start(self, sandbox_id: str) -> None:
        import docker

        try:
            self._docker().api.start(sandbox_id)
        except docker.errors.APIError as exc:
            raise SandboxError(
                f"Docker could not start the sandbox: {exc.explanation or exc}"
            ) from None

    def _rename(self, sandbox_id: str, kernel_id: str) -> None:
        import docker

        try:
            container = self._docker().containers.get(sandbox_id)
            container.rename(claimed_name(container.name, kernel_id))
        except docker.errors.DockerException as exc:  # ps shows it as pooled: cosmetic
            self.log.debug("could not rename %s for ps: %s", sandbox_id[:12], exc)

    def _kill(self, sandbox_id: str) -> None:
        import docker

        try:
            self._docker().api.kill(sandbox_id)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: not running
                raise

    def _remove(self, sandbox_id: str) -> None:
        _remove(self._docker(), sandbox_id)

    # -- SandboxBackend -------------------------------------------------------------
    async def preflight(self, policy: SandboxPolicy) -> Preflight:
        preflight = await asyncio.to_thread(self._preflight, policy)
        OomWatcher.ensure_running(self.log)
        await self.reap_orphans_once()
        return preflight

    @classmethod
    def remove_orphans(cls) -> list[str]:
        """Remove sandboxes left by Jupyter processes of this host that died (a sandbox
        killed before its agent ran cannot notice by itself). Blocking."""
        import docker

        host = socket.gethostname()
        removed: list[str] = []
        try:
            client = docker_client(timeout=60)
            # sparse: one call, no per-container inspect that races with removals (404)
            found = client.containers.list(
                all=True,
                sparse=True,
                filters={"label": [f"{LABEL_MANAGED}=1", f"{LABEL_HOST}={host}"]},
            )
        except docker.errors.DockerException as exc:
            raise daemon_error(exc) from None
        for container in found:
            owner = Owner.from_labels(container.attrs.get("Labels") or {})
            if owner is not None and owner.server_gone(host):
                _remove(client, container.id)
                removed.append(str((container.attrs.get("Names") or ["?"])[0]).lstrip("/"))
        return removed

    @classmethod
    def list_sandboxes(cls) -> list[SandboxInfo]:
        return list_containers()

    async def create(
        self,
        policy: SandboxPolicy,
        preflight: Preflight,
        *,
        command: list[str],
        owner: Owner,
        name: str,
    ) -> str:
        labels = {**owner.labels(), LABEL_BACKEND: self.name}
        spec = container_spec(
            policy, runtime=preflight.runtime, command=command, labels=labels, name=name
        )
        return await asyncio.to_thread(self._create, spec)

    async def attach(self, sandbox_id: str, session: AgentSession) -> None:
        endpoint = docker_endpoint()
        version = await asyncio.to_thread(lambda: str(self._docker().api.api_version))
        await RelayThread.get().run(attach_stream(session, endpoint, version, sandbox_id))

    async def start(self, sandbox_id: str) -> None:
        await asyncio.to_thread(self._start, sandbox_id)

    def inspect(self, sandbox_id: str) -> dict[str, str]:
        runtime = self._docker().containers.get(sandbox_id).attrs["HostConfig"].get("Runtime")
        return {"runtime": str(runtime)}

    async def claimed(self, sandbox_id: str, owner: Owner) -> None:
        await asyncio.to_thread(self._rename, sandbox_id, owner.kernel_id)

    async def kill(self, sandbox_id: str) -> None:
        await asyncio.to_thread(self._kill, sandbox_id)

    async def remove(self, sandbox_id: str) -> None:
        try:
            await asyncio.to_thread(self._remove, sandbox_id)
        except RuntimeError:  # interpreter shutdown (atexit drain): no worker threads, block
            self._remove(sandbox_id)


class DockerRuncBackend(DockerBackend):
    """Docker on the host's kernel (runc), hardened the same way: a weaker tier, chosen by
    naming it (that choice is the opt-in to a runtime without gVisor)."""

    name = "docker-runc"
    label = "sandboxed, Docker runc: weaker, host kernel"

    def __init__(self, log: logging.Logger | None = None, **_other: Any) -> None:
        super().__init__(log, runtime="runc", allow_weaker_runtime=True)


def docker_client(timeout: int) -> Any:
    """A Docker client, or a SandboxError saying why the daemon cannot be used."""
    import docker

    try:
        return docker.from_env(timeout=timeout)
    except docker.errors.DockerException as exc:
        raise daemon_error(exc) from None


def _remove(client: Any, sandbox_id: str) -> None:
    import docker

    try:
        client.api.remove_container(sandbox_id, force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # 409: removal already in progress (auto_remove)
            raise
