"""SandboxProvisioner: a jupyter_client kernel provisioner for sandboxed kernels.

jupyter_client's ``KernelManager`` creates one instance per kernel (entry point
``sandbox-provisioner`` in group ``jupyter_client.kernel_provisioners``) and drives it
through this lifecycle, the same instance across restarts:

``pre_launch``
    validates every setting (``configured.configure``), checks the host (the backend's
    preflight), binds the five host ports on 127.0.0.1 (once; kept across restarts) and
    writes the host-side connection file with a fresh HMAC key.
``launch_kernel``
    takes a sandbox from the warm pool or boots one (``sandbox.RunningSandbox``), copies
    the configured files in and starts the kernel; on any failure removes the sandbox
    and the ports before raising.
``poll``/``wait``/``send_signal``/``terminate``/``kill``
    answered from the running sandbox (``poll`` reads state the relay thread sets);
    SIGINT and SIGTERM go to the kernel through the agent, SIGKILL ends the sandbox.
    When a sandbox ended for a reason the host knows (its memory limit, a protocol
    error), ``end_reason`` says it in words (``sandbox-kernel run`` prints it).
``cleanup``
    removes the sandbox; unless restarting, also closes the ports.

The settings are the traits below, one per line, each declared (type, default, help)
once in ``settings.py``. Nothing here blocks the caller's event loop: backends run
blocking calls in worker threads, and the relay runs on its own loop.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
from typing import Any, cast

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase

from . import endings
from .backends.base import Preflight, SandboxBackend
from .configured import Configured, configure
from .errors import PolicyError, SandboxError
from .exchange.files_in import plan_kernel_files
from .exchange.host import HostExchange
from .inside import ops
from .inside.protocol import INSIDE_PORTS
from .kernel_slots import SLOTS, KernelLimitReached
from .kernelspec import host_spec_argv, names_provisioner
from .policy import INSIDE_CONNECTION_FILE, SandboxPolicy
from .pool import WarmPool
from .prewarm import prewarm_command
from .relay.console import ConsoleSink
from .relay.listeners import HOST, HostListeners
from .relay.session import AgentSession, SessionError
from .relay.thread import RelayThread
from .sandbox import KernelLink, RunningSandbox
from .settings import SETTINGS, trait

_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_]+)\}")


class SandboxProvisioner(KernelProvisionerBase):
    """Starts each kernel in a sandbox (gVisor by default) with no host files and no
    network."""

    # One trait per setting (settings.py holds type, default and help; a test checks
    # that this list and the table agree).
    backend = trait("backend")
    image = trait("image")
    runtime = trait("runtime")
    allow_weaker_runtime = trait("allow_weaker_runtime")
    rootfs = trait("rootfs")
    platform = trait("platform")
    namespace = trait("namespace")
    runtime_class = trait("runtime_class")
    image_pull_policy = trait("image_pull_policy")
    accept_unenforced = trait("accept_unenforced")
    memory_limit = trait("memory_limit")
    cpu_limit = trait("cpu_limit")
    nproc_limit = trait("nproc_limit")
    pids_limit = trait("pids_limit")
    nofile_limit = trait("nofile_limit")
    tmp_size = trait("tmp_size")
    home_size = trait("home_size")
    launch_timeout = trait("launch_timeout")
    env_allow = trait("env_allow")
    env = trait("env")
    pool_size = trait("pool_size")
    pool_snapshots = trait("pool_snapshots")
    pool_snapshot_restores = trait("pool_snapshot_restores")
    pool_snapshot_age = trait("pool_snapshot_age")
    expose_ports = trait("expose_ports")
    max_runtime_ports = trait("max_runtime_ports")
    copy_in = trait("copy_in")
    copy_in_limit = trait("copy_in_limit")
    copy_in_notebook_folder = trait("copy_in_notebook_folder")
    export_limit = trait("export_limit")
    export_dir = trait("export_dir")
    console_output = trait("console_output")
    console_limit = trait("console_limit")
    max_message_size = trait("max_message_size")
    max_kernels = trait("max_kernels")

    def __init__(self, **kwargs: Any) -> None:
        known = {s.name for s in SETTINGS} | {"parent", "config", "log"}
        unknown = sorted(set(kwargs) - known - set(KernelProvisionerBase.class_trait_names()))
        if unknown:
            raise PolicyError(
                f"unknown sandbox-provisioner config key(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(s.name for s in SETTINGS))}"
            )
        super().__init__(**kwargs)
        self.relay = RelayThread.get()
        self.configured: Configured | None = None
        self.sandbox_backend: SandboxBackend | None = None
        self._preflight: Preflight | None = None
        self._listeners: HostListeners | None = None
        self._link: KernelLink | None = None  # what each sandbox of this kernel is given
        self._running: RunningSandbox | None = None
        self._saved_sandbox_id: str | None = None  # only from saved state (load_provisioner_info)
        self._key: bytes | None = None
        self._launch_count = 0
        self._slot: int | None = None  # a max_kernels slot, held from launch to cleanup
        self.last_start_warm = False
        self.last_start_restored = False  # ... and restored from the pool's snapshot
        self.console: ConsoleSink | None = None  # one per kernel, across restarts
        # Why the last sandbox ended, if the host knows ("it hit its memory limit (1g)");
        # None while it runs, or when it ended on its own or was ended by a request.
        self.end_reason: str | None = None

    def values(self) -> dict[str, Any]:
        """Every setting's current value (kernelspec config over Jupyter config over the
        defaults)."""
        return {s.name: getattr(self, s.name) for s in SETTINGS}

    @property
    def policy(self) -> SandboxPolicy | None:
        """The isolation policy of this kernel's sandboxes (known from ``pre_launch``)."""
        return self.configured.policy if self.configured is not None else None

    @property
    def session(self) -> AgentSession | None:
        """The running sandbox's session (the relay's end of its pipe)."""
        return self._running.session if self._running is not None else None

    @property
    def sandbox_id(self) -> str | None:
        """The running sandbox's id in its backend (a container id, a runsc name...)."""
        return self._running.id if self._running is not None else self._saved_sandbox_id

    # -- KernelProvisionerBase: launch --------------------------------------------------
    @property
    def has_process(self) -> bool:
        return self.sandbox_id is not None

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        # Not super().pre_launch(): the base class would hand the kernel the server's whole
        # environment (kwargs["env"]). Here the kernel's environment is built from the
        # policy alone (policy.kernel_env); nothing else of the server's reaches it.
        conf = self.configured = configure(self.values(), self.log)
        if self.sandbox_backend is None:  # the settings of one kernel do not change: one backend
            self.sandbox_backend = conf.sandbox_backend
        if self.console is None:
            self.console = ConsoleSink(
                str(self.kernel_id or ""), conf.console_output, conf.console_limit, self.log
            )
        self._preflight = await self.sandbox_backend.preflight(conf.policy)
        argv = self._inside_argv(kwargs.pop("extra_arguments", []))
        spec_env = dict(getattr(self.kernel_spec, "env", None) or {})
        kernel_env = conf.policy.kernel_env(os.environ, spec_env)
        notebook_dir = str(kwargs.get("cwd") or os.getcwd())
        # Fresh copies at every start: read the host files now, before any sandbox exists.
        copy_items = await asyncio.to_thread(
            plan_kernel_files, conf.exchange, notebook_dir, self.log
        )
        if self._listeners is None:
            listeners = HostListeners(INSIDE_PORTS, label=f"kernel {self.kernel_id}")
            await self.relay.run(listeners.open())
            self._listeners = listeners
            exchange = HostExchange(
                conf.exchange, listeners, notebook_dir, self.log, str(self.kernel_id or "")
            )
            self._link = KernelLink(
                str(self.kernel_id or ""), self.console, conf.max_message, exchange, []
            )
            try:
                await self.relay.run(exchange.open_configured())
            except BaseException:
                await self._close_listeners()
                raise
        assert self._link is not None
        self._link.copy_items = copy_items
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
        if not names_provisioner(getattr(self.kernel_spec, "metadata", None)):  # the default
            argv = host_spec_argv(argv, str(getattr(self.kernel_spec, "name", "") or "?"))

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
        conf, preflight, link = self.configured, self._preflight, self._link
        assert conf is not None and preflight is not None and link is not None
        assert self.sandbox_backend is not None and self._listeners is not None
        env: dict[str, str] = kwargs.get("sandbox_env") or {}
        self.end_reason = None  # a new sandbox: the last one's end is told
        for warning in preflight.warnings:
            self.log.warning("sandbox-kernel %s: %s", self.kernel_id, warning)
        start = {
            "op": ops.START,
            "argv": prewarm_command(cmd) or cmd,  # ipykernel's cold start too: see prewarm.py
            "env": env,
            "cwd": env.get("HOME"),
            "connection_file": INSIDE_CONNECTION_FILE,
            "connection": self._inside_connection_info(),
        }
        pool = self._pool(env, cmd)
        try:
            if self._slot is None:  # a restart keeps its slot
                self._slot = SLOTS.acquire(conf.max_kernels)
            facts = await asyncio.wait_for(self._start(pool, start), conf.policy.launch_timeout)
        except BaseException as exc:
            error = self._launch_error(exc)
            await self._teardown(restart=False)
            if isinstance(exc, (SandboxError, asyncio.TimeoutError)):
                raise error from None
            raise
        running = self._running
        assert running is not None
        self._listeners.session = running.session
        # A backend that learns why it ends the sandbox (its OOM watcher) says so here at
        # once: the notebook hears it before the restarter sees the kernel gone.
        endings.listen(running.id, lambda why: self._tell(running, self._words(why)))
        if pool is not None:  # this policy starts kernels: keep its pool full
            self.relay.loop.call_soon_threadsafe(pool.refill)
        if facts.get("copied"):
            self.log.info(
                "sandbox-kernel %s: copied %d item(s), %d bytes, into the sandbox",
                self.kernel_id,
                len(link.copy_items),
                facts["copied"],
            )
        self.log.info(
            "sandbox-kernel %s: started %s%s (%s, image %s) on ports %s",
            self.kernel_id,
            running.session.name,
            (" from the warm pool" if self.last_start_warm else "")
            + (" (restored from its snapshot)" if self.last_start_restored else ""),
            preflight.runtime,
            conf.policy.image,
            self._listeners.ports,
        )
        return self.connection_info

    async def _start(self, pool: WarmPool | None, start: dict[str, Any]) -> dict[str, Any]:
        """A sandbox from the pool, else a new one; then its kernel."""
        conf, link, backend = self.configured, self._link, self.sandbox_backend
        assert conf is not None and link is not None and backend is not None
        assert self._preflight is not None
        running = await RunningSandbox.claim(pool, backend, link) if pool is not None else None
        self.last_start_warm = running is not None
        self.last_start_restored = running is not None and running.restored
        if running is None:
            self._launch_count += 1
            running = await RunningSandbox.boot(
                backend, conf.policy, self._preflight, link, self._launch_count
            )
        self._running = running
        return await running.start_kernel(link, start, conf.policy.home, self._preflight)

    def _pool(self, env: dict[str, str], cmd: list[str]) -> WarmPool | None:
        """The warm pool for this kernel; None when disabled or when the kernel command is
        not ipykernel_launcher (the pool pre-initialises exactly that command)."""
        conf = self.configured
        assert conf is not None and self.sandbox_backend is not None and self._preflight is not None
        prewarm_cmd = prewarm_command(cmd)
        if conf.pool_size <= 0 or prewarm_cmd is None:
            return None
        return WarmPool.get(
            self.sandbox_backend,
            conf.policy,
            self._preflight,
            prewarm_cmd,
            env,
            conf.pool_size,
            self.log,
        )

    def _launch_error(self, exc: BaseException) -> SandboxError:
        if isinstance(exc, KernelLimitReached):
            return exc  # nothing ran: no kernel output to add
        conf = self.configured
        assert conf is not None
        tail = self.console.tail if self.console is not None else ""
        detail = f"\nkernel output:\n{tail}" if tail else ""
        if isinstance(exc, asyncio.TimeoutError):
            return SandboxError(
                "the sandboxed kernel did not start within "
                f"launch_timeout={conf.policy.launch_timeout:g}s; the sandbox was removed{detail}"
            )
        if isinstance(exc, SessionError):
            return SandboxError(
                f"the sandbox ended during start-up ({exc}); does image {conf.policy.image!r} "
                f"have python3 and ipykernel?{detail}"
            )
        return SandboxError(f"{exc}{detail}")

    # -- KernelProvisionerBase: running kernel ----------------------------------------------
    async def poll(self) -> int | None:
        if self._running is None:
            return 1 if self._saved_sandbox_id is not None else 0  # saved state: not ours now
        status = self._running.poll()
        if status is not None:
            self._note_end(self._running)
        return status

    def _note_end(self, running: RunningSandbox) -> None:
        """Keep why ``running`` ended, if a backend or its session knows, in words, and
        have its session tell the kernel's clients on IOPub (relay/iopub.py)."""
        if self.end_reason is not None:
            return
        why = endings.reason(running.id)
        if why is not None:
            self.end_reason = self._words(why)
        elif running.session.error:
            self.end_reason = f"the host ended it: {running.session.error}"
        if self.end_reason is not None:
            self._tell(running, self.end_reason)

    def _words(self, why: str) -> str:
        """A backend's reason (endings.py) as people read it."""
        if why == endings.MEMORY_LIMIT:
            limit = self.configured.values.get("memory_limit") if self.configured else None
            return f"it hit its memory limit ({limit})" if limit else "it hit its memory limit"
        return why

    def _tell(self, running: RunningSandbox, text: str) -> None:
        """Have ``running``'s session tell the kernel's IOPub clients (once; any thread)."""
        if self._key is not None:
            scheme = str(self.connection_info.get("signature_scheme", "hmac-sha256"))
            self.relay.loop.call_soon_threadsafe(running.session.explain, text, self._key, scheme)

    async def wait(self) -> int | None:
        # Polling, as LocalProvisioner does: poll() reads state the relay thread sets.
        while (status := await self.poll()) is None:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        return status

    async def send_signal(self, signum: int) -> None:
        if self._running is not None:
            await self._running.signal(signum)

    async def kill(self, restart: bool = False) -> None:
        if self._running is not None:
            await self._running.kill()

    async def terminate(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGTERM)

    async def cleanup(self, restart: bool = False) -> None:
        await self._teardown(restart=restart)

    async def _teardown(self, restart: bool) -> None:
        """Remove the sandbox and end its session; unless restarting, free the ports and
        the kernel's max_kernels slot."""
        running, self._running = self._running, None
        self._saved_sandbox_id = None
        if self._listeners is not None:
            self._listeners.session = None
        if running is not None:
            endings.unlisten(running.id)
            if running.poll() is not None:
                self._note_end(running)
        try:
            if running is not None:
                await running.remove(self._link.exchange if self._link else None)
        finally:
            if not restart:
                SLOTS.release(self._slot)
                self._slot = None
                await self._close_listeners()

    async def _close_listeners(self) -> None:
        listeners, self._listeners = self._listeners, None
        self._link = None
        if listeners is not None:
            await self.relay.run(listeners.close())

    def exposed_ports(self) -> dict[int, int]:
        """Sandbox port -> host 127.0.0.1 port, for every port exposed so far."""
        return self._link.exchange.exposed() if self._link is not None else {}

    # -- KernelProvisionerBase: state ---------------------------------------------------------
    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        return max(recommended, 5.0)

    async def get_provisioner_info(self) -> dict[str, Any]:
        info: dict[str, Any] = await super().get_provisioner_info()
        info.update(
            sandbox_id=self.sandbox_id,
            host_ports=dict(self._listeners.ports) if self._listeners else {},
            exposed_ports=self.exposed_ports(),
            runtime=self._preflight.runtime if self._preflight else None,
            backend=self.backend,
            image=self.image,
        )
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        self._saved_sandbox_id = provisioner_info.get("sandbox_id")
