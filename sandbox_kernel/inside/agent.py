"""The in-sandbox agent: PID 1 of the sandbox, standard library only.

It arrives over the sandbox's stdin (see ``bundle.py``; no file of the host is
mounted), then speaks the frame protocol of ``protocol.py`` on its
stdin/stdout:

1. sends ``hello`` (versions, uid, kernel release) so the host knows the
   sandbox is up;
2. on ``start``: copies ``/etc/skel`` into the fresh home, writes the kernel's
   connection file, launches the kernel in its own session, forwards the
   kernel's console output on stream 0, answers ``started``;
3. on ``OPEN``: connects to ``127.0.0.1:<port>`` inside the sandbox (retrying
   while the kernel is still binding its own ports) and relays the stream;
4. on ``signal``: signals the kernel's process group (interrupt, terminate);
5. on ``put_*``: writes files the host copies in; for the kernel's ``sandboxed``
   module it asks the host to expose a port or take a file (``exchange.py``);
6. on ``resume``: answers ``resumed`` with the facts of its hello and of the
   pre-initialised kernel waiting for its key (the warm pool asks before it checkpoints
   the sandbox, and again in every sandbox restored from that checkpoint, whose agent
   continues on new pipes: nothing restarts, no hello is sent again);
7. when the kernel exits: reports ``exited`` and ends the sandbox; when its
   stdin closes (the host side is gone): kills the kernel and ends.

Who runs as whom: where the backend starts the agent as root of the sandbox (the
gVisor backends: root of gVisor's own kernel, holding only CAP_SETUID, CAP_SETGID and
CAP_KILL), the agent starts the kernel under the policy's unprivileged uid, so kernel
code can neither open the agent's pipe through ``/proc/1/fd`` nor signal or trace the
agent (gVisor does not honour ``PR_SET_DUMPABLE`` or init's signal protection). Every
file the agent writes for the kernel (home skeleton, connection file, files copied in) is
written with the kernel's uid as its effective uid, never as root. Elsewhere (the
host-kernel backends) the agent and the kernel share an unprivileged uid; Linux itself
then hides an undumpable PID 1's file descriptors and ignores its signals from inside.

Runs on the image's Python (>= 3.8).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from typing import Any, Callable, Iterator

from . import exchange as x
from . import mux as m
from . import ops as o
from . import protocol as p

READY_FD_ENV = "SANDBOX_KERNEL_READY_FD"  # see prewarm.py
CONNECT_RETRY_SECONDS = 30.0
CONNECT_RETRY_INTERVAL = 0.02


def exit_code(status: int) -> int:
    """Popen-style code: the exit status, or minus the signal number."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


class _PipeIn(asyncio.Protocol):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.unescape = p.StdinUnescaper() if agent.escaped_stdin else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.max_size = m.PIPE_READ  # type: ignore[attr-defined]  # asyncio's read size

    def data_received(self, data: bytes) -> None:
        try:
            if self.unescape is not None:
                data = self.unescape.feed(data)
            self.agent.mux.feed(data)
        except p.ProtocolError as exc:
            self.agent.fatal("protocol error from host: %s" % exc)

    def eof_received(self) -> bool | None:
        self.agent.finish(None, "host closed the pipe")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.agent.finish(None, "host pipe lost")


class _PipeOut(asyncio.Protocol):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The host's bounds for the same pipe. asyncio's default (64 KiB) is one frame:
        # every 256 KiB read from the kernel paused and resumed all local sockets (two
        # epoll_ctl each), most of the agent's syscalls while output streams.
        assert isinstance(transport, asyncio.WriteTransport)
        transport.set_write_buffer_limits(high=m.PIPE_HIGH_WATER, low=m.PIPE_LOW_WATER)

    def pause_writing(self) -> None:
        self.agent.mux.pipe_pause()

    def resume_writing(self) -> None:
        self.agent.mux.pipe_resume()

    def connection_lost(self, exc: Exception | None) -> None:
        self.agent.finish(None, "host pipe lost")


class Agent:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pipe_in: int,
        pipe_out: int,
        escaped_stdin: bool = False,
        helpers: dict[str, str] | None = None,
        kernel_user: str | None = None,
        kernel_rlimits: dict[str, int] | None = None,
    ) -> None:
        self.loop = loop
        self.escaped_stdin = escaped_stdin
        # (uid, gid) the kernel runs as when the agent is root; None: the agent's own.
        self.kernel_ids = parse_user(kernel_user) if os.getuid() == 0 else None
        # Soft and hard limits the kernel starts with, where the sandbox sets none itself
        # (a pod spec cannot): name ("nproc", "nofile", "core") -> value.
        self.kernel_rlimits = dict(kernel_rlimits or {})
        self.pipe_in = pipe_in
        self.pipe_out = pipe_out
        self.mux = m.Mux(self._write, on_control=self.on_control, on_open=self.on_open)
        self.out: asyncio.WriteTransport | None = None
        self.kernel: subprocess.Popen[bytes] | None = None
        self.kernel_pgid: int | None = None
        self.done: asyncio.Future[int] = loop.create_future()
        self.status: int | None = None
        self.undumpable = False
        self.prewarmed = False
        self.tasks: set[asyncio.Task[None]] = set()  # keep references until done
        self.helpers = dict(helpers or {})
        self.requests = m.Requests(loop, self.mux.send_control)
        self.helper_server = x.HelperServer(self)
        self.files: x.FileReceiver | None = None
        self.kernel_ports: set[int] = set()
        self.handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            o.START: self._launch,
            o.PREWARM: self._launch,
            o.SIGNAL: lambda msg: self.signal_kernel(msg["signum"]),
            o.REPLY: self.requests.on_reply,
            o.PUT_START: self._put_start,
            o.PUT_DIR: self._put,
            o.PUT_BEGIN: self._put,
            o.PUT_DATA: self._put,
            o.PUT_END: self._put,
            o.PUT_DONE: self._put_done,
            o.SHUTDOWN: lambda msg: self.finish(0, "shutdown requested"),
            o.RESUME: self._resume,
        }
        self.helpers_ok = False

    def _write(self, data: bytes) -> None:
        if self.out is not None and not self.out.is_closing():
            self.out.write(data)

    async def run(self) -> int:
        loop = self.loop
        self.out, _ = await loop.connect_write_pipe(
            lambda: _PipeOut(self), os.fdopen(self.pipe_out, "wb", buffering=0)
        )
        try:
            x.install_helpers(self.helpers)
            await self.helper_server.start(shared=self.kernel_ids is not None)
            self.helpers_ok = True
        except OSError:
            pass  # a kernel still runs; only the sandboxed module fails
        await loop.connect_read_pipe(
            lambda: _PipeIn(self), os.fdopen(self.pipe_in, "rb", buffering=0)
        )
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, self.forward_signal, signum)
        self.mux.send_control({"op": o.HELLO, **self.facts()})
        code = await self.done
        # Let the last frames (exited, console tail) reach the host.
        for _ in range(100):
            if self.out is None or self.out.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.01)
        return code

    def facts(self) -> dict[str, Any]:
        """What ``hello`` (and ``resumed``) report of the agent."""
        return {
            "version": p.VERSION,
            "python": sys.version.split()[0],
            "release": os.uname().release,
            "uid": os.getuid(),
            "kernel_uid": self.kernel_ids[0] if self.kernel_ids else os.getuid(),
            "pid": os.getpid(),
            "undumpable": self.undumpable,
            "helpers": self.helpers_ok,
        }

    # -- control messages ------------------------------------------------------
    def on_control(self, msg: dict[str, Any]) -> None:
        """A CONTROL message from the host, checked against ``ops.HOST_OPS`` (anything else
        is a protocol error: the agent reports it and ends), then handled by op."""
        self.handlers[o.check(msg, o.HOST_OPS)["op"]](msg)

    def _launch(self, msg: dict[str, Any]) -> None:
        try:
            (self.start_kernel if msg["op"] == o.START else self.prewarm)(msg)
        except Exception as exc:  # report, then end: the host sees a clean error
            self.mux.send_control({"op": o.ERROR, "message": "%s: %s" % (type(exc).__name__, exc)})
            self.finish(127, "kernel failed to start")

    def _resume(self, msg: dict[str, Any]) -> None:
        """Before a checkpoint, and in a sandbox restored from one (on its new pipes): say
        that the agent runs, what it is, and which pre-initialised kernel waits."""
        running = self.kernel is not None and self.status is None
        self.mux.send_control(
            {
                "op": o.RESUMED,
                **self.facts(),
                "prewarmed": self.prewarmed and running,
                "kernel_pid": self.kernel.pid if running and self.kernel else -1,
                "kernel_process_uid": (
                    process_uid(self.kernel.pid) if running and self.kernel else -1
                ),
            }
        )

    def _put_start(self, msg: dict[str, Any]) -> None:
        self.files = x.FileReceiver(msg["home"])

    def _put(self, msg: dict[str, Any]) -> None:
        if self.files is not None:
            with self.as_kernel():
                self.files.handle(msg)

    def _put_done(self, msg: dict[str, Any]) -> None:
        result, self.files = (self.files.result() if self.files else {"ok": True}), None
        self.mux.send_control(dict(result, op=o.REPLY, req=msg["req"]))

    def spawn(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        stdin: Any,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        """Start the kernel process (or its pre-warmed stand-in) in its own session,
        its stdout and stderr forwarded to the host on stream 0. Its environment is the
        host's ``env`` alone (:func:`kernel_environment`)."""
        self.kernel = subprocess.Popen(
            argv,
            env=kernel_environment(env),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            pass_fds=pass_fds,
            # The agent is single-threaded, so a pre-exec hook is safe here. It runs after
            # the fork: drop to the kernel's uid first, then enter its (0700) home.
            preexec_fn=_become(self.kernel_ids, cwd, self.kernel_rlimits),
        )
        self.kernel_pgid = self.kernel.pid
        console = m.Stream(self.mux, p.CONSOLE_STREAM)
        self.mux.register(console)
        assert self.kernel.stdout is not None
        self.loop.create_task(self.loop.connect_read_pipe(lambda: console, self.kernel.stdout))

    def prewarm(self, msg: dict[str, Any]) -> None:
        """Warm pool: start a kernel initialised with a placeholder key, waiting on its
        stdin for the real one (sent by ``start``; see prewarm.py)."""
        if self.kernel is not None:
            raise RuntimeError("this sandbox already runs a kernel")
        env = {k: str(v) for k, v in dict(msg.get("env") or {}).items()}
        home = env.get("HOME") or os.environ.get("HOME") or "/tmp"
        with self.as_kernel():
            populate_home(home)
            write_connection_file(str(msg["connection_file"]), msg["connection"])
        argv = [str(a) for a in msg["argv"]]
        # The kernel reports on this pipe: "i" once initialised, "k" once it holds the key.
        ready_r, ready_w = os.pipe()
        env[READY_FD_ENV] = str(ready_w)
        try:
            self.spawn(argv, env, str(msg.get("cwd") or home), subprocess.PIPE, (ready_w,))
        finally:
            os.close(ready_w)
        self.prewarmed = True
        self.loop.add_reader(ready_r, self._prewarm_progress, ready_r)

    def _prewarm_progress(self, fd: int) -> None:
        try:
            data = os.read(fd, 16)
        except OSError:
            data = b""
        if not data:  # the kernel exited (reaped separately) or closed the pipe
            self.loop.remove_reader(fd)
            os.close(fd)
            return
        assert self.kernel is not None
        if b"i" in data:
            self.mux.send_control({"op": o.PREWARMED, **self.kernel_facts()})
        if b"k" in data and self.status is None:
            self.mux.send_control({"op": o.STARTED, **self.kernel_facts()})

    def start_kernel(self, msg: dict[str, Any]) -> None:
        env: dict[str, str] = {k: str(v) for k, v in dict(msg.get("env") or {}).items()}
        home = env.get("HOME") or os.environ.get("HOME") or "/tmp"
        with self.as_kernel():
            write_connection_file(str(msg["connection_file"]), msg["connection"])
        argv: list[str] = [str(a) for a in msg["argv"]]
        cwd = str(msg.get("cwd") or home)
        connection = msg["connection"]
        self.kernel_ports = {
            int(v) for k, v in connection.items() if k.endswith("_port") and isinstance(v, int)
        }
        for inside, host in dict(msg.get("exposed") or {}).items():
            self.helper_server.exposed[int(inside)] = int(host)
        if self.prewarmed:
            kernel = self.kernel
            assert kernel is not None and kernel.stdin is not None
            if self.status is not None:
                raise RuntimeError("the pre-warmed interpreter has exited")
            spec = {
                "env": kernel_environment(env),
                "cwd": cwd,
                "key": connection["key"],
                "signature_scheme": connection.get("signature_scheme", "hmac-sha256"),
            }
            line = json.dumps(spec) + "\n"
            kernel.stdin.write(line.encode())
            kernel.stdin.close()
            self.prewarmed = False
            # "started" comes from _prewarm_progress once the kernel holds the real key:
            # a client subscribing earlier would get ipykernel's iopub welcome signed
            # with the placeholder.
            return
        else:
            if self.kernel is not None:
                raise RuntimeError("a kernel is already running in this sandbox")
            with self.as_kernel():
                populate_home(home)
            self.spawn(argv, env, cwd, subprocess.DEVNULL)
        self.mux.send_control({"op": o.STARTED, **self.kernel_facts()})

    def kernel_facts(self) -> dict[str, Any]:
        """The running kernel's pid and uid as the sandbox's /proc reports them (the host
        checks the uid: never root, and never the agent's where the agent is root)."""
        assert self.kernel is not None
        return {"pid": self.kernel.pid, "uid": process_uid(self.kernel.pid)}

    @contextlib.contextmanager
    def as_kernel(self) -> Iterator[None]:
        """Act on the file system with the kernel's uid and gid (a root agent never
        creates or follows anything in the kernel's folders as root)."""
        ids = self.kernel_ids
        if ids is None:
            yield
            return
        os.setegid(ids[1])
        os.seteuid(ids[0])
        try:
            yield
        finally:
            os.seteuid(0)
            os.setegid(0)

    def signal_kernel(self, signum: int) -> None:
        if self.kernel is None or self.status is not None:
            return
        try:
            os.killpg(self.kernel_pgid or self.kernel.pid, signum)
        except OSError:
            try:
                os.kill(self.kernel.pid, signum)
            except OSError:
                pass

    def forward_signal(self, signum: int) -> None:
        if self.kernel is None:
            self.finish(128 + signum, "signal %d before the kernel started" % signum)
        else:
            self.signal_kernel(signum)

    # -- streams ---------------------------------------------------------------
    def on_open(self, sid: int, port: int) -> None:
        stream = m.Stream(self.mux, sid)
        self.mux.register(stream)
        task = self.loop.create_task(self.connect(stream, port))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def connect(self, stream: m.Stream, port: int) -> None:
        deadline = self.loop.time() + CONNECT_RETRY_SECONDS
        while not stream.closed:
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                try:
                    await self.loop.sock_connect(sock, ("127.0.0.1", port))
                    if sock.getsockname() == sock.getpeername():
                        # TCP self-connect (source port == the port): not the kernel.
                        raise ConnectionRefusedError(errno.ECONNREFUSED, "self-connect")
                except BaseException:
                    sock.close()
                    raise
                await self.loop.create_connection(lambda: stream, sock=sock)
                return
            except OSError as exc:
                # Refused while the kernel is still binding its ports: retry while it
                # lives. Any other port (a server the kernel exposed) answers now or never.
                kernel_alive = self.kernel is not None and self.status is None
                if (
                    exc.errno != errno.ECONNREFUSED
                    or not kernel_alive
                    or port not in self.kernel_ports
                    or self.loop.time() > deadline
                ):
                    stream.abort("connect to port %d failed: %s" % (port, exc))
                    return
                await asyncio.sleep(CONNECT_RETRY_INTERVAL)

    # -- process bookkeeping -----------------------------------------------------
    def reap(self) -> None:
        """As PID 1, reap every child, orphans included; note the kernel's exit."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.kernel is not None and pid == self.kernel.pid:
                self.kernel.returncode = exit_code(status)
                self.finish(self.kernel.returncode, "kernel exited")

    def finish(self, code: int | None, why: str) -> None:
        if self.done.done():
            return
        if code is None:
            code = self.status if self.status is not None else 0
        self.status = code
        # End whatever the kernel left running: as PID 1 of the sandbox's pid
        # namespace, everything; otherwise only the kernel's process group.
        try:
            if os.getpid() == 1:
                os.kill(-1, signal.SIGKILL)
            elif self.kernel_pgid:
                os.killpg(self.kernel_pgid, signal.SIGKILL)
        except OSError:
            pass
        self.mux.send_control({"op": o.EXITED, "status": code, "why": why})
        self.done.set_result(code)

    def fatal(self, message: str) -> None:
        self.mux.send_control({"op": o.ERROR, "message": message})
        self.finish(125, message)


def kernel_environment(env: dict[str, str]) -> dict[str, str]:
    """The kernel's whole environment: what the host sent (the policy's, policy.kernel_env)
    and the helper's path and socket. Not the agent's own: that is the container runtime's
    (Docker's HOSTNAME, the kubelet's KUBERNETES_SERVICE_* naming the API server, a
    tool's), which the policy never chose, so one rule holds under every backend."""
    return x.with_helper_path(env)


def parse_user(user: str | None) -> tuple[int, int] | None:
    """``"1000:1000"`` (or ``"1000"``) -> (1000, 1000). The host decides which user; it
    also checks the uid the kernel really got (``kernel_facts``), root refused."""
    if not user:
        return None
    uid, _, gid = str(user).partition(":")
    return int(uid), int(gid or uid)


def _become(ids: tuple[int, int] | None, cwd: str, rlimits: dict[str, int] | None = None) -> Any:
    """The kernel's pre-exec hook: set ``rlimits`` (soft and hard: the kernel cannot raise
    them), with a root agent drop every group and become the kernel's uid/gid
    (capabilities go with it); then enter ``cwd``."""
    import resource

    limits = [(getattr(resource, "RLIMIT_" + k.upper()), v) for k, v in (rlimits or {}).items()]

    def setup() -> None:
        for which, value in limits:
            resource.setrlimit(which, (value, value))
        if ids is not None:
            clear_bounding_set()
            os.setgroups([])
            os.setresgid(ids[1], ids[1], ids[1])
            os.setresuid(ids[0], ids[0], ids[0])
        os.chdir(cwd)

    return setup


def clear_bounding_set() -> None:
    """Drop every capability from this process's bounding set (needs CAP_SETPCAP), so the
    kernel holds none in any set: the uid change clears the others."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(64):
        if libc.prctl(24, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP %d" % cap)


def process_uid(pid: int) -> int:
    """The real uid of ``pid`` from /proc (-1 when it cannot be read)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return -1


def write_connection_file(path: str, connection: dict[str, Any]) -> None:
    """The kernel's connection file (it holds the HMAC key): mode 0600 in a 0700 folder."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(connection, f)


def populate_home(home: str, skel: str = "/etc/skel") -> None:
    """Copy the image's skeleton (e.g. matplotlib's font cache, IPython's startup files)
    into the tmpfs home. Called as the kernel's user (``as_kernel``: the effective ids), so
    the check is on those: a root agent without CAP_DAC_OVERRIDE (gVisor) fails the real
    uid's check on the kernel's 0700 home, and nothing was ever copied."""
    if not os.path.isdir(skel) or not os.access(home, os.W_OK, effective_ids=True):
        return
    for name in os.listdir(skel):
        src, dst = os.path.join(skel, name), os.path.join(home, name)
        if os.path.exists(dst):
            continue
        if os.path.isdir(src):
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy2(src, dst)


def make_undumpable() -> bool:
    """PR_SET_DUMPABLE 0: on the host's kernel /proc/1/fd, mem, environ, maps and ptrace of
    the agent become root-only, so the kernel (same uid) cannot open the protocol pipe or
    inject frames through it (gVisor 20240729 shows environ, auxv, maps, smaps and the fd
    listing to every uid anyway: info-agent-proc)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(4, 0, 0, 0, 0) == 0)  # 4 = PR_SET_DUMPABLE
    except (OSError, AttributeError):
        return False


def main(
    escaped_stdin: bool = False,
    helpers: dict[str, str] | None = None,
    kernel_user: str | None = None,
    kernel_rlimits: dict[str, int] | None = None,
) -> None:
    """``escaped_stdin``: the host escapes Docker's detach sequence on stdin (Docker backend);
    ``helpers``: module name -> source of the kernel-side helpers (``sandboxed.py``);
    ``kernel_user``: ``uid:gid`` the kernel runs as if the agent starts as root;
    ``kernel_rlimits``: the kernel's resource limits, where the sandbox sets none."""
    undumpable = make_undumpable()
    # Keep the protocol pipe away from fds 0-2 so nothing else (the kernel, a
    # stray print) can write into it; the kernel gets its own pipes.
    pipe_in = os.dup(0)
    pipe_out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    agent = Agent(
        loop,
        pipe_in,
        pipe_out,
        escaped_stdin=escaped_stdin,
        helpers=helpers,
        kernel_user=kernel_user,
        kernel_rlimits=kernel_rlimits,
    )
    agent.undumpable = undumpable
    code = loop.run_until_complete(agent.run())
    os._exit(code if code >= 0 else 128 - code)
