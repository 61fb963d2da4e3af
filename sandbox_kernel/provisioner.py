"""SandboxProvisioner: a jupyter_client kernel provisioner for sandboxed kernels.

jupyter_client's ``KernelManager`` creates one instance per kernel (entry
point ``sandbox-provisioner`` in group ``jupyter_client.kernel_provisioners``)
and drives it through this lifecycle, the same instance across restarts:

``pre_launch``
    builds and validates the policy, checks the host (daemon, runtime, image),
    binds the five host ports on 127.0.0.1 (once; kept across restarts) and
    writes the host-side connection file with a fresh HMAC key.
``launch_kernel``
    creates the container, attaches to its stdin/stdout, starts it, sends the
    agent, waits for ``hello`` and ``started``; on any failure removes the
    container and the ports before raising.
``poll``/``wait``/``send_signal``/``terminate``/``kill``
    answered from the relay's state (no Docker call in ``poll``); SIGINT and
    SIGTERM go to the kernel through the agent, SIGKILL to the container.
``cleanup``
    removes the container; unless restarting, also closes the ports.

Docker calls run in worker threads and the relay on its own loop, so nothing
here blocks the caller's event loop.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import re
import secrets
import signal
from typing import Any, cast

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from traitlets import Bool, Dict, Enum, Float, Int, List, Unicode, Union

from .backends.base import Preflight, SandboxBackend
from .backends.docker import LABEL_KERNEL_ID, LABEL_OWNER, server_labels
from .backends.registry import BACKENDS, DEFAULT_BACKEND, docker_runtime, make_backend
from .boot import boot, check_kernel, start_kernel
from .errors import PolicyError, SandboxError
from .exchange.files_in import CopyItem, plan_copy_in, send_copy_in
from .exchange.host import HostExchange
from .exchange.policy import DEFAULT_EXPORT_DIR, ExchangePolicy, build_exchange_policy
from .image.recipe import DEFAULT_IMAGE
from .inside import ops
from .kernel_slots import SLOTS, KernelLimitReached
from .policy import (
    INSIDE_CONNECTION_FILE,
    INSIDE_PORTS,
    SandboxPolicy,
    build_policy,
    format_size,
    parse_size,
)
from .pool import WarmPool
from .prewarm import prewarm_command
from .relay.console import ConsoleSink
from .relay.listeners import HOST, HostListeners
from .relay.session import AgentSession, SessionError
from .relay.thread import RelayThread

_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_]+)\}")


class SandboxProvisioner(KernelProvisionerBase):
    """Starts each kernel in a gVisor container with no host files and no network."""

    backend = Enum(
        list(BACKENDS),
        default_value=DEFAULT_BACKEND,
        help="Isolation backend: docker (gVisor, default); runsc (gVisor without Docker, as "
        "root or rootless); the weaker tiers docker-runc, bwrap and firejail share the host's "
        "kernel with the sandbox (see docs/backends.md).",
    ).tag(config=True)
    accept_unenforced = List(
        Unicode(),
        default_value=[],
        help="DANGEROUS: policy properties the backend may leave unenforced on this host "
        "(e.g. ['memory_limit']); anything else it cannot enforce refuses the launch.",
    ).tag(config=True)
    rootfs = Unicode(
        "",
        help="runsc/bwrap/firejail: the kernel root filesystem directory (default: the export of "
        "`image` by `sandbox-kernel image export-rootfs`).",
    ).tag(config=True)
    image = Unicode(DEFAULT_IMAGE, help="Docker image with python3 and ipykernel.").tag(config=True)
    runtime = Unicode(
        "runsc", help="Docker runtime; anything but gVisor needs allow_weaker_runtime."
    ).tag(config=True)
    allow_weaker_runtime = Bool(
        False,
        help="DANGEROUS: run without gVisor (runc) when runsc is missing or another runtime "
        "is set. "
        "The host kernel's whole syscall surface is then exposed to untrusted code.",
    ).tag(config=True)
    memory_limit = Union([Unicode(), Int()], default_value="2g", help="Memory cap, e.g. '2g'.").tag(
        config=True
    )
    cpu_limit = Float(1.0, help="CPUs the kernel may use.").tag(config=True)
    nproc_limit = Int(
        None,
        allow_none=True,
        help="RLIMIT_NPROC (processes + threads) inside the sandbox, so a fork bomb gets EAGAIN. "
        "Default: memory_limit / 32 MiB (64 for 2g), which fits forks of a kernel in memory.",
    ).tag(config=True)
    pids_limit = Int(4096, help="Host cgroup pids limit: the backstop behind nproc_limit.").tag(
        config=True
    )
    nofile_limit = Int(4096, help="RLIMIT_NOFILE inside the sandbox.").tag(config=True)
    tmp_size = Union(
        [Unicode(), Int()], default_value="256m", help="Size cap of /tmp (tmpfs)."
    ).tag(config=True)
    home_size = Union(
        [Unicode(), Int()], default_value="512m", help="Size cap of the home (tmpfs)."
    ).tag(config=True)
    env_allow = List(
        Unicode(),
        default_value=["TZ"],
        help="Server environment variables passed into the sandbox.",
    ).tag(config=True)
    env = Dict(value_trait=Unicode(), help="Fixed environment variables for the kernel.").tag(
        config=True
    )
    launch_timeout = Float(60.0, help="Seconds from container creation to a running kernel.").tag(
        config=True
    )
    pool_size = Int(
        1,
        help="Sandboxes kept started ahead (kernel initialised, waiting for its key) for this "
        "kernelspec's policy; "
        "a launch or restart claims one and never reuses it. 0 disables the pool.",
    ).tag(config=True)
    expose_ports = List(
        Union([Int(), Unicode()]),
        help="Sandbox ports reachable from the host's 127.0.0.1 (only) through the relay: "
        "INSIDE (any free host port) or 'HOST:INSIDE'. Connections go host -> sandbox only.",
    ).tag(config=True)
    max_runtime_ports = Int(
        4,
        help="Ports the kernel may expose itself at run time (sandboxed.expose); 0 disables.",
    ).tag(config=True)
    copy_in = List(
        Unicode(),
        help="Host files or folders copied into the sandbox's home at each start (never "
        "mounted); absolute or relative to the notebook's folder. Symbolic links are skipped.",
    ).tag(config=True)
    copy_in_limit = Union(
        [Unicode(), Int()], default_value="64m", help="Most bytes copy_in may copy."
    ).tag(config=True)
    export_limit = Union(
        [Unicode(), Int()],
        default_value="64m",
        help="Most bytes the kernel may export to the host (sandboxed.export) per kernel; "
        "0 disables exports.",
    ).tag(config=True)
    export_dir = Unicode(
        DEFAULT_EXPORT_DIR,
        help="Folder, inside the notebook's folder, that receives exported files.",
    ).tag(config=True)
    max_kernels = Int(
        0, help="Most sandboxed kernels this Jupyter process runs at once; 0: no limit."
    ).tag(config=True)
    console_output = Enum(
        ["stderr", "discard"],
        default_value="stderr",
        help="Where the kernel's own stdout/stderr go (not its cell output, which goes to "
        "the notebook): the server's stderr, escaped and prefixed with the kernel's id, "
        "or nowhere.",
    ).tag(config=True)
    console_limit = Union(
        [Unicode(), Int()],
        default_value="1m",
        help="Most bytes of the kernel's own stdout/stderr passed to the server's stderr per "
        "kernel (also rate-limited); the rest is dropped and the drop logged once.",
    ).tag(config=True)
    max_message_size = Union(
        [Unicode(), Int()],
        default_value="64m",
        help="Largest ZeroMQ message the kernel may send to its clients (output, replies); "
        "a larger one resets that connection before the client allocates it, and the "
        "message is lost (logged).",
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        known = set(self.class_trait_names()) | {"parent", "config", "log"}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise PolicyError(
                f"unknown sandbox-provisioner config key(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(self.class_own_traits(config=True)))}"
            )
        super().__init__(**kwargs)
        self.sandboxes: SandboxBackend = make_backend(
            self.backend, self.log, accept_unenforced=self.accept_unenforced, rootfs=self.rootfs
        )
        self.relay = RelayThread.get()
        self.policy: SandboxPolicy | None = None
        self._preflight: Preflight | None = None
        self._listeners: HostListeners | None = None
        self._exchange: HostExchange | None = None
        self._copy_items: list[CopyItem] = []
        self._session: AgentSession | None = None
        self._container_id: str | None = None
        self._key: bytes | None = None
        self._launch_count = 0
        self._slot: int | None = None  # a max_kernels slot, held from launch to cleanup
        self.last_start_warm = False
        self.console: ConsoleSink | None = None  # one per kernel, across restarts
        self._max_message = 0

    # -- policy ----------------------------------------------------------------------
    def build_policy(self) -> SandboxPolicy:
        runtime, weaker = docker_runtime(self.backend, self.runtime, self.allow_weaker_runtime)
        return build_policy(
            image=self.image,
            runtime=runtime,
            allow_weaker_runtime=weaker,
            memory_limit=self.memory_limit,
            cpu_limit=self.cpu_limit,
            nproc_limit=self.nproc_limit,
            pids_limit=self.pids_limit,
            nofile_limit=self.nofile_limit,
            tmp_size=self.tmp_size,
            home_size=self.home_size,
            env_allow=self.env_allow,
            env=self.env,
            launch_timeout=self.launch_timeout,
        )

    def build_exchange_policy(self) -> ExchangePolicy:
        return build_exchange_policy(
            expose_ports=self.expose_ports,
            max_runtime_ports=self.max_runtime_ports,
            copy_in=self.copy_in,
            copy_in_limit=self.copy_in_limit,
            export_limit=self.export_limit,
            export_dir=self.export_dir,
        )

    # -- KernelProvisionerBase: launch --------------------------------------------------
    @property
    def has_process(self) -> bool:
        return self._container_id is not None

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        policy = self.policy = self.build_policy()
        exchange_policy = self.build_exchange_policy()
        check_pool_size(self.pool_size)
        self._max_message = check_message_size(self.max_message_size)
        console_limit = parse_size(self.console_limit, "console_limit")
        if self.console is None:
            self.console = ConsoleSink(
                str(self.kernel_id or ""), self.console_output, console_limit, self.log
            )
        self._preflight = await self.sandboxes.preflight(policy)
        argv = self._inside_argv(kwargs.pop("extra_arguments", []))
        spec_env = dict(getattr(self.kernel_spec, "env", None) or {})
        kernel_env = policy.kernel_env(os.environ, spec_env)
        notebook_dir = str(kwargs.get("cwd") or os.getcwd())
        # Fresh copies at every start: read the host files now, before any sandbox exists.
        self._copy_items = await asyncio.to_thread(
            plan_copy_in,
            exchange_policy.copy_in,
            notebook_dir,
            exchange_policy.copy_in_bytes,
            self.log,
            os.path.join(notebook_dir, exchange_policy.export_dir),
        )
        if self._listeners is None:
            listeners = HostListeners(INSIDE_PORTS)
            await self.relay.run(listeners.open())
            self._listeners = listeners
            self._exchange = HostExchange(
                exchange_policy, listeners, notebook_dir, self.log, str(self.kernel_id or "")
            )
            try:
                await self.relay.run(self._exchange.open_configured())
            except BaseException:
                await self._close_listeners()
                raise
        try:
            self._write_connection_info(kwargs.get("env") or {})
        except BaseException:
            await self._close_listeners()
            raise
        return {"cmd": argv, "sandbox_env": kernel_env}

    def _inside_argv(self, extra: list[str]) -> list[str]:
        argv = list(self.kernel_spec.argv) + list(extra)
        if not argv:
            raise SandboxError("the kernelspec has an empty argv")

        def sub(m: re.Match[str]) -> str:
            if m.group(1) == "connection_file":
                return INSIDE_CONNECTION_FILE
            raise SandboxError(
                f"kernelspec argv uses {{{m.group(1)}}}, which has no meaning inside the sandbox; "
                "only {connection_file} is substituted"
            )

        return [_PLACEHOLDER.sub(sub, arg) for arg in argv]

    def _write_connection_info(self, env: dict[str, str]) -> None:
        km = self.parent
        assert self._listeners is not None
        if self._key is None:
            self._key = secrets.token_hex(32).encode()
        if km is None:
            self.connection_info = self._host_connection_info()
            return
        km.transport = "tcp"
        km.ip = HOST
        km.session.key = self._key
        for name in INSIDE_PORTS:
            setattr(km, name, self._listeners.ports[name])
        km.write_connection_file(jupyter_session=env.get("JPY_SESSION_NAME", ""))
        self.connection_info = km.get_connection_info()

    def _host_connection_info(self) -> KernelConnectionInfo:
        assert self._listeners is not None and self._key is not None
        ports = {name: self._listeners.ports[name] for name in INSIDE_PORTS}
        info = {**ports, "ip": HOST, "transport": "tcp", "key": self._key}
        info["signature_scheme"] = "hmac-sha256"
        return cast(KernelConnectionInfo, info)

    def _inside_connection_info(self) -> dict[str, Any]:
        scheme = self.connection_info.get("signature_scheme", "hmac-sha256")
        key = self._key.decode() if self._key else ""
        return {
            **INSIDE_PORTS,
            "ip": "127.0.0.1",
            "transport": "tcp",
            "key": key,
            "signature_scheme": scheme,
            "kernel_name": "",
        }

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        policy, preflight = self.policy, self._preflight
        assert policy is not None and preflight is not None and self._listeners is not None
        env: dict[str, str] = kwargs.get("sandbox_env") or {}
        for warning in preflight.warnings:
            self.log.warning("sandbox-kernel %s: %s", self.kernel_id, warning)
        start = {
            "op": ops.START,
            "argv": cmd,
            "env": env,
            "cwd": env.get("HOME"),
            "connection_file": INSIDE_CONNECTION_FILE,
            "connection": self._inside_connection_info(),
        }
        pool = self._pool(env, cmd)
        try:
            if self._slot is None:  # a restart keeps its slot
                self._slot = SLOTS.acquire(self.max_kernels)
            warm = await asyncio.wait_for(self._start_warm(start, pool), policy.launch_timeout)
            if not warm:
                await asyncio.wait_for(self._start_cold(start), policy.launch_timeout)
        except BaseException as exc:
            error = self._launch_error(exc, policy)
            await self._teardown(restart=False)
            if isinstance(exc, (SandboxError, asyncio.TimeoutError, SessionError)):
                raise error from None
            raise
        assert self._session is not None
        self._listeners.session = self._session
        self.last_start_warm = warm
        if pool is not None:  # this policy starts kernels: keep its pool full
            self.relay.loop.call_soon_threadsafe(pool.refill)
        self.log.info(
            "sandbox-kernel %s: started %s%s (runtime %s, image %s) on ports %s",
            self.kernel_id,
            self._session.name,
            " from the warm pool" if warm else "",
            preflight.runtime,
            policy.image,
            self._listeners.ports,
        )
        return self.connection_info

    def _pool(self, env: dict[str, str], cmd: list[str]) -> WarmPool | None:
        """The warm pool for this kernel; None when disabled or when the kernel command is
        not ipykernel_launcher (the pool pre-initialises exactly that command)."""
        prewarm_cmd = prewarm_command(cmd)
        if self.pool_size <= 0 or prewarm_cmd is None:
            return None
        assert self.policy is not None and self._preflight is not None
        return WarmPool.get(
            self.sandboxes, self.policy, self._preflight, prewarm_cmd, env, self.pool_size, self.log
        )

    async def _start_warm(self, start: dict[str, Any], pool: WarmPool | None) -> bool:
        if pool is None:
            return False
        sandbox = await self.relay.run(pool.claim())
        if sandbox is None:
            return False  # the pool is (re)filling: this launch starts cold
        self._container_id, self._session = sandbox.container_id, sandbox.session
        self._own(sandbox.session)
        await self.relay.run(self._start_in(sandbox.session, start))
        return True

    def _own(self, session: AgentSession) -> None:
        """Make a session this kernel's: its console sink, its message limit, its id in logs
        (a pooled sandbox had none of them)."""
        assert self.console is not None
        session.console = self.console
        session.max_message = self._max_message
        session.kernel_id = str(self.kernel_id or "")

    async def _start_cold(self, start: dict[str, Any]) -> None:
        assert self.policy is not None and self._preflight is not None
        self._launch_count += 1
        kid = (self.kernel_id or "anon")[:12]
        name = f"sandbox-kernel-{kid}-{self._launch_count}-{secrets.token_hex(3)}"
        labels = {
            **server_labels(),
            LABEL_KERNEL_ID: str(self.kernel_id or ""),
            LABEL_OWNER: _owner(),
        }
        session = AgentSession(name, console=self._discard, log=self.log)
        self._own(session)
        self._session = session
        self._container_id = await boot(
            self.sandboxes, self.policy, self._preflight, session, name=name, labels=labels
        )
        await self.relay.run(self._start_in(session, start))

    async def _start_in(self, session: AgentSession, start: dict[str, Any]) -> None:
        """On the relay loop: connect the sandbox to this kernel's exchange (exposed ports,
        exports), copy the configured files in, then start the kernel."""
        exchange = self._exchange
        assert exchange is not None and self.policy is not None
        exchange.attach(session)
        if self._copy_items:
            sent = await send_copy_in(session, self._copy_items, self.policy.home)
            self.log.info(
                "sandbox-kernel %s: copied %d item(s), %d bytes, into the sandbox",
                self.kernel_id,
                len(self._copy_items),
                sent,
            )
        exposed = {str(inside): host for inside, host in exchange.exposed().items()}
        facts = await start_kernel(session, {**start, "exposed": exposed})
        assert self._preflight is not None
        check_kernel(facts, session.hello_info, self._preflight)

    def _launch_error(self, exc: BaseException, policy: SandboxPolicy) -> SandboxError:
        if isinstance(exc, KernelLimitReached):
            return exc  # nothing ran: no kernel output to add
        tail = self.console.tail if self.console is not None else ""
        detail = f"\nkernel output:\n{tail}" if tail else ""
        if isinstance(exc, asyncio.TimeoutError):
            return SandboxError(
                "the sandboxed kernel did not start within "
                f"launch_timeout={policy.launch_timeout:g}s; the container was removed{detail}"
            )
        if isinstance(exc, SessionError):
            return SandboxError(
                f"the sandbox ended during start-up ({exc}); does image {policy.image!r} have "
                f"python3 and ipykernel?{detail}"
            )
        return SandboxError(f"{exc}{detail}")

    @staticmethod
    def _discard(_data: bytes) -> None:
        pass

    # -- KernelProvisionerBase: running kernel ----------------------------------------------
    async def poll(self) -> int | None:
        if self._container_id is None:
            return 0
        session = self._session
        if session is None:
            return 1  # loaded from saved state: the pipe is gone, so is the kernel for us
        if not session.dead.is_set():
            return None
        return session.exit_status if session.exit_status is not None else -signal.SIGKILL

    async def wait(self) -> int | None:
        # Polling, as LocalProvisioner does: poll() reads state the relay thread sets.
        while (status := await self.poll()) is None:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        return status

    async def send_signal(self, signum: int) -> None:
        session = self._session
        if self._container_id is None or session is None or session.dead.is_set():
            return
        if signum == signal.SIGKILL:
            await self.sandboxes.kill(self._container_id)
            return
        self.relay.loop.call_soon_threadsafe(
            session.send_control, {"op": ops.SIGNAL, "signum": int(signum)}
        )

    async def kill(self, restart: bool = False) -> None:
        if self._container_id is not None:
            await self.sandboxes.kill(self._container_id)

    async def terminate(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGTERM)

    async def cleanup(self, restart: bool = False) -> None:
        await self._teardown(restart=restart)

    async def _teardown(self, restart: bool) -> None:
        """Remove the container and end the session; unless restarting, free the ports."""
        cid, self._container_id = self._container_id, None
        session, self._session = self._session, None
        if self._listeners is not None:
            self._listeners.session = None
        exchange = self._exchange
        if exchange is not None:
            self.relay.loop.call_soon_threadsafe(exchange.detach)
        try:
            if cid is not None:
                await self.sandboxes.remove(cid)
        finally:
            if session is not None:
                self.relay.loop.call_soon_threadsafe(session.close)
            if not restart:
                SLOTS.release(self._slot)
                self._slot = None
                await self._close_listeners()

    async def _close_listeners(self) -> None:
        listeners, self._listeners = self._listeners, None
        self._exchange = None
        if listeners is not None:
            await self.relay.run(listeners.close())

    def exposed_ports(self) -> dict[int, int]:
        """Sandbox port -> host 127.0.0.1 port, for every port exposed so far."""
        return self._exchange.exposed() if self._exchange is not None else {}

    # -- KernelProvisionerBase: state ---------------------------------------------------------
    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        return max(recommended, 5.0)

    async def get_provisioner_info(self) -> dict[str, Any]:
        info: dict[str, Any] = await super().get_provisioner_info()
        info.update(
            container_id=self._container_id,
            host_ports=dict(self._listeners.ports) if self._listeners else {},
            exposed_ports=self.exposed_ports(),
            runtime=self._preflight.runtime if self._preflight else None,
            backend=self.backend,
            image=self.image,
        )
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        self._container_id = provisioner_info.get("container_id")


MAX_POOL_SIZE = 64


MAX_MESSAGE_SIZE_CAP = 64 * 2**30


def check_message_size(value: object) -> int:
    """``max_message_size`` in bytes: at least 1 MiB (a kernel's replies must fit)."""
    if not isinstance(value, (str, int)):
        raise PolicyError(f"max_message_size: expected a size like '64m', got {value!r}")
    size = parse_size(value, "max_message_size")
    if not 2**20 <= size <= MAX_MESSAGE_SIZE_CAP:
        raise PolicyError(
            f"max_message_size: {format_size(size)} is outside [1 MiB, "
            f"{format_size(MAX_MESSAGE_SIZE_CAP)}]; use e.g. '64m'"
        )
    return size


def check_pool_size(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_POOL_SIZE:
        raise PolicyError(f"pool_size: {size!r} must be a whole number from 0 to {MAX_POOL_SIZE}")
    return size


def _owner() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return str(os.getuid())
