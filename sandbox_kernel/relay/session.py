"""The host end of one sandbox's pipe, on the relay loop.

The provisioner (or the warm pool) creates one :class:`AgentSession` per sandbox; the
sandbox's backend connects it to a byte channel: the sandbox process's stdin and stdout
(:meth:`AgentSession.attach_pipes`), or any asyncio transport of its own (it calls
:meth:`AgentSession.prepare`, then the protocol methods; Docker's attach stream does, in
``backends/docker_attach.py``). If the channel needs the agent's stdin escaped, the
backend sets ``escape_stdin`` (see ``protocol.escape_stdin``).

The session writes the agent bundle, then carries frames. Everything
the agent sends is untrusted: a protocol error ends the session, and so does a sandbox
that stops reading while more than MAX_PIPE_BACKLOG bytes wait for it (replies to its
own requests could otherwise grow without bound). The agent may report one ``error``;
it is logged once, escaped and cut. Streams from the kernel's own ports pass through a
ZMTP size check (``zmtp.py``): a ZeroMQ message over ``max_message`` resets that
connection before its header reaches the client.

The kernel's IOPub and shell connections are also watched (``iopub.py``): when the
kernel's end of one closes, the client's connection is held (at most HOLD_SECONDS, until
the sandbox is removed) so that :meth:`AgentSession.explain` can still tell the client
why the sandbox ended (an error on IOPub, the running request's reply on shell).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from ..errors import SandboxError
from ..inside import ops
from ..inside import protocol as p
from ..inside.mux import PIPE_HIGH_WATER, PIPE_LOW_WATER, Mux, Requests, Stream, abort_transport
from ..inside.protocol import INSIDE_PORTS, KERNEL_INSIDE_PORTS
from .console import one_line
from .iopub import (
    CAPTURE_BYTES,
    CAPTURE_FRAMES,
    IopubWatch,
    ShellWatch,
    idle_message,
    stopped_message,
    stopped_reply,
)
from .zmtp import ZmtpError, ZmtpLimiter, encode_message

# Bytes the host may hold for a sandbox that does not read its pipe. Relayed data stops at
# PIPE_HIGH_WATER (1 MiB) and copy-in paces itself, so only a sandbox that stops reading
# while it keeps asking (replies pile up) ever gets here.
MAX_PIPE_BACKLOG = 8 * 1024 * 1024
# Largest ZeroMQ message from the kernel passed to the client, unless the provisioner
# says otherwise (its max_message_size setting).
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
# What the agent may ask of the host (for the kernel's ``sandboxed`` module); the
# provisioner's exchange decides (see exchange/host.py).
AGENT_REQUESTS = frozenset({ops.EXPOSE, ops.EXPORT_BEGIN, ops.EXPORT_DATA, ops.EXPORT_END})
# How long a client's IOPub connection is held after the kernel's end closed, waiting
# for why (jupyter_client's restarter looks every 3 s; the sandbox's removal ends it).
HOLD_SECONDS = 10.0
IOPUB_INSIDE_PORT = INSIDE_PORTS["iopub_port"]
SHELL_INSIDE_PORT = INSIDE_PORTS["shell_port"]


class SessionError(SandboxError):
    """The sandbox's pipe ended, or its agent failed or broke the protocol (the agent's
    ProtocolError, which the inside code cannot make a SandboxError, ends up here)."""


class _Iopub:
    """One client's IOPub connection: its framing, the request it last saw answered."""

    def __init__(self, max_message: int) -> None:
        self.watch = IopubWatch()
        self.limiter = ZmtpLimiter(
            max_message, self.watch.on_message, CAPTURE_BYTES, CAPTURE_FRAMES
        )
        self.held = False


class _Shell:
    """One client's shell connection: its framing, whose requests it carries."""

    def __init__(self, max_message: int) -> None:
        self.watch = ShellWatch()
        self.limiter = ZmtpLimiter(
            max_message, self.watch.on_message, CAPTURE_BYTES, CAPTURE_FRAMES
        )
        self.held = False


class _PipeWriter(asyncio.Protocol):
    """The write side of a pipe transport: flow control goes to the session; its loss is
    seen on the read side (the sandbox closes both when it ends)."""

    def __init__(self, session: AgentSession) -> None:
        self.session = session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.session.connection_made(transport)

    def pause_writing(self) -> None:
        self.session.pause_writing()

    def resume_writing(self) -> None:
        self.session.resume_writing()


class AgentSession(asyncio.Protocol):
    def __init__(
        self,
        name: str,
        *,
        console: Callable[[bytes], None],
        log: logging.Logger,
        kernel_id: str = "",
        max_message: int = DEFAULT_MAX_MESSAGE,
    ) -> None:
        self.name = name
        self.kernel_id = kernel_id  # for log lines; a pooled sandbox gets it on claim
        self.max_message = max_message  # replaceable on claim, like ``console``
        self.log = log
        self.console = console  # replaceable: a pooled sandbox gets its kernel's sink on claim
        self.mux = Mux(self._write, on_control=self._on_control, on_console=self._on_console)
        self.transport: asyncio.Transport | asyncio.WriteTransport | None = None
        self._reader: asyncio.BaseTransport | None = None  # a pipe's read side (attach_pipes)
        # The channel's backend says whether frames to the agent need Docker's stdin
        # escaping (protocol.escape_stdin); the agent is told so in its bundle.
        self.escape_stdin = False
        self.hello: asyncio.Future[dict[str, Any]] | None = None
        self.started: asyncio.Future[dict[str, Any]] | None = None
        self.prewarmed: asyncio.Future[dict[str, Any]] | None = None
        self.resumed: asyncio.Future[dict[str, Any]] | None = None
        self.ready = False  # the agent bundle is sent: frames may flow
        self.exit_status: int | None = None
        self.error: str | None = None
        self.hello_info: dict[str, Any] = {}  # the agent's hello, once checked
        self._agent_error_seen = False
        self._failed = False
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            ops.HELLO: self._on_hello,
            ops.STARTED: self._on_started,
            ops.PREWARMED: self._on_prewarmed,
            ops.RESUMED: self._on_resumed,
            ops.REPLY: self._on_reply,
            ops.EXITED: self._on_exited,
            ops.ERROR: self._on_error,
            **dict.fromkeys(AGENT_REQUESTS, self._on_request),
        }
        self.dead = threading.Event()  # set when the pipe is gone; read from any thread
        self.requests: Requests | None = None  # ours to the agent (created on the relay loop)
        # Handles AGENT_REQUESTS (on the relay loop); None refuses them.
        self.on_request: Callable[[dict[str, Any]], None] | None = None
        # The kernel's IOPub and shell connections, or held (see explain).
        self._watched: dict[Stream, _Iopub | _Shell] = {}
        # The requests explain answered on shell (their msg_ids; read from any thread once
        # ``explained`` is set, which explain does before it writes a reply).
        self.answered: set[str] = set()
        self.explained = threading.Event()
        self._explained = False

    # -- opening -----------------------------------------------------------------
    async def attach_pipes(self, stdin_w: int, stdout_r: int) -> None:
        """Use the sandbox process's stdin (we write ``stdin_w``) and stdout (we read
        ``stdout_r``): raw bytes both ways. Takes ownership of both fds."""
        loop = asyncio.get_running_loop()
        self.prepare()
        writer = _PipeWriter(self)
        try:
            await loop.connect_write_pipe(lambda: writer, os.fdopen(stdin_w, "wb", buffering=0))
        except BaseException:
            os.close(stdout_r)
            raise
        await loop.connect_read_pipe(lambda: self, os.fdopen(stdout_r, "rb", buffering=0))

    def prepare(self) -> None:
        """On the relay loop, before any channel is connected: the start-up futures and the
        request/reply table (a backend with a channel of its own calls this first)."""
        loop = asyncio.get_running_loop()
        self.requests = Requests(loop, self.send_control)
        self.hello = loop.create_future()
        self.started = loop.create_future()

    def send_agent(self, payload: bytes) -> None:
        assert self.transport is not None
        if self.ready:  # a restored agent runs already: a bundle would be read as frames
            raise SessionError("the agent already runs; no bundle may follow")
        self.transport.write(payload)
        self.ready = True

    def send_control(self, message: dict[str, Any]) -> None:
        self.mux.send_control(message)

    async def prewarm(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Warm pool: start a kernel initialised up to its key (``argv``, ``env``, ``cwd``,
        ``connection_file``, placeholder ``connection``; see inside/prewarm_kernel.py); return the
        agent's ``prewarmed`` report (pid, uid)."""
        self.prewarmed = asyncio.get_running_loop().create_future()
        self.send_control({**spec, "op": ops.PREWARM})
        return await self.prewarmed

    async def resume(self) -> dict[str, Any]:
        """Ask the agent for its facts (``resumed``) and return them. Before a checkpoint:
        everything sent so far has then been consumed. For a sandbox restored from a
        snapshot: its agent already runs (it gets no bundle and sends no hello), so this
        also opens the session for frames."""
        self.resumed = asyncio.get_running_loop().create_future()
        self.ready = True
        self.send_control({"op": ops.RESUME})
        return await self.resumed

    async def pipe_writable(self) -> None:
        """Wait until the pipe's write buffer has room again (bulk senders pace themselves
        with this); raises SessionError if the sandbox is gone."""
        await self.mux.drained()
        if self.dead.is_set() or self.mux.closed:
            raise SessionError(self.error or "the sandbox's pipe closed")

    def open_stream(self, inside_port: int) -> Stream:
        """A new local connection to relay to ``inside_port`` in the sandbox. On the
        kernel's own ports, what comes back is checked as ZeroMQ traffic (message size)."""
        stream = self.mux.new_stream()
        if inside_port in (IOPUB_INSIDE_PORT, SHELL_INSIDE_PORT):
            # Forget connections that ended without being held (clients reconnect).
            self._watched = {s: w for s, w in self._watched.items() if w.held or not s.closed}
            kind = _Iopub if inside_port == IOPUB_INSIDE_PORT else _Shell
            watched = self._watched[stream] = kind(self.max_message)
            stream.inspect = self._zmtp_check(watched.limiter, inside_port)
            stream.on_peer_end = self._hold
        elif inside_port in KERNEL_INSIDE_PORTS:
            stream.inspect = self._zmtp_check(ZmtpLimiter(self.max_message), inside_port)
        self.mux.send(p.encode_open(stream.sid, inside_port))
        return stream

    def _zmtp_check(self, limiter: ZmtpLimiter, inside_port: int) -> Callable[[bytes], None]:
        def check(data: bytes) -> None:
            try:
                limiter.feed(data)
            except ZmtpError as exc:
                self.log.warning(
                    "%s: connection to the kernel's port %d reset: %s",
                    self.describe(),
                    inside_port,
                    exc,
                )
                raise

        return check

    # -- why it ended, on the kernel's IOPub and shell (see iopub.py) ----------------------
    def _hold(self, stream: Stream) -> bool:
        """The kernel's end of an IOPub or shell connection closed: keep the client's
        connection (not read from) until :meth:`explain`, the session's end or
        HOLD_SECONDS, if a message can still be written into it; else let the stream
        close it."""
        watched = self._watched.get(stream)
        t = stream.transport
        if (
            watched is None
            or self._explained
            or not watched.limiter.between_messages
            # A shell connection only while its client waits for a reply: held, what the
            # client sends is lost, where a closed one has ZeroMQ keep it for the restart.
            or (
                isinstance(watched, _Shell)
                and not any(map(watched.watch.waits_for, self._running()))
            )
            or not isinstance(t, asyncio.Transport)
            or t.is_closing()
        ):
            self._watched.pop(stream, None)
            return False
        t.pause_reading()
        watched.held = True
        asyncio.get_running_loop().call_later(HOLD_SECONDS, self._let_go, stream)
        return True

    def _let_go(self, stream: Stream) -> None:
        watched = self._watched.pop(stream, None)
        if watched is not None and watched.held and stream.transport is not None:
            abort_transport(stream.transport)

    def explain(self, reason: str, key: bytes, signature_scheme: str) -> None:
        """On the relay loop, once: write into every IOPub client connection, between two
        messages, an error saying ``reason`` and an idle status (signed with ``key``,
        parented to the request the kernel last answered there); into the shell
        connection of the client that sent the latest of those requests, if it has no
        reply yet, that reply with the same error; then close those connections."""
        if self._explained:
            return
        self._explained = True
        running = self._running()
        watched, self._watched = self._watched, {}
        writes: list[tuple[asyncio.WriteTransport, list[list[bytes]]]] = []
        for stream, w in watched.items():
            stream.release("the sandbox ended")
            t = stream.transport
            if not isinstance(t, asyncio.WriteTransport) or t.is_closing():
                continue
            told = w.limiter.between_messages
            writes.append(
                (t, self._stopped(w, running, reason, key, signature_scheme) if told else [])
            )
        # Known as answered before any client can read a reply (batch.py waits for this).
        self.explained.set()
        for t, messages in writes:
            for message in messages:
                t.write(encode_message(message))
            t.close()  # after what is buffered
        self.log.info("%s: told its clients: %s", self.describe(), one_line(reason))

    def _running(self) -> list[dict[str, Any]]:
        """The requests the kernel last answered on each IOPub connection (one each)."""
        found = (w.watch.parent for w in self._watched.values() if isinstance(w, _Iopub))
        return list({str(p.get("msg_id")): p for p in found if p is not None}.values())

    def _stopped(
        self,
        w: _Iopub | _Shell,
        running: list[dict[str, Any]],
        reason: str,
        key: bytes,
        scheme: str,
    ) -> list[list[bytes]]:
        """What explain writes into one client connection (noting the requests answered)."""
        if isinstance(w, _Iopub):
            parent = w.watch.parent
            if parent is None:
                return []
            return [stopped_message(reason, parent, key, scheme), idle_message(parent, key, scheme)]
        waiting = [p for p in running if w.watch.waits_for(p)]
        self.answered.update(str(p.get("msg_id")) for p in waiting)
        return [stopped_reply(reason, p, key, scheme) for p in waiting]

    def describe(self) -> str:
        """How log lines name this sandbox: its name and, once known, its kernel."""
        if self.kernel_id:
            return f"sandbox {self.name} (kernel {self.kernel_id})"
        return f"sandbox {self.name}"

    # -- asyncio protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is not None:  # a pipe's read side; writes go to self.transport
            self._reader = transport
            return
        assert isinstance(transport, (asyncio.Transport, asyncio.WriteTransport))
        self.transport = transport
        transport.set_write_buffer_limits(high=PIPE_HIGH_WATER, low=PIPE_LOW_WATER)

    def data_received(self, data: bytes) -> None:
        """Bytes the agent wrote (raw, whatever the channel)."""
        try:
            self.mux.feed(data)
        except p.ProtocolError as exc:
            self.fail(str(exc))

    def pause_writing(self) -> None:
        self.mux.pipe_pause()

    def resume_writing(self) -> None:
        self.mux.pipe_resume()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._reader is not None and self.transport is not None:
            self.transport.close()  # the sandbox's stdout is gone: so is its stdin
        self.mux.close()
        why = self.error or "the sandbox's pipe closed"
        for fut in (self.hello, self.started, self.prewarmed, self.resumed):
            if fut is not None and not fut.done():
                fut.set_exception(SessionError(why))
                fut.exception()  # whoever awaits it sees the error; nobody else is warned
        if self.requests is not None:
            self.requests.fail_all(why)
        self.dead.set()

    # -- frames from the agent -------------------------------------------------------
    def _on_console(self, data: bytes) -> None:
        self.console(data)

    def _write(self, data: bytes) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        # Frames are binary: escape Docker's detach sequence (see protocol.DETACH_KEYS).
        t.write(p.escape_stdin(data) if self.escape_stdin else data)
        queued = t.get_write_buffer_size()
        if queued > MAX_PIPE_BACKLOG:
            self.fail(
                f"the sandbox stopped reading its pipe while {queued} bytes wait for it "
                f"(at most {MAX_PIPE_BACKLOG}): ending it"
            )

    def _on_control(self, msg: dict[str, Any]) -> None:
        """A CONTROL message from the agent: checked against ``ops.AGENT_OPS`` (anything
        else is a protocol error that ends the sandbox), then handled by op."""
        handler = self._handlers[ops.check(msg, ops.AGENT_OPS)["op"]]
        handler(msg)

    @staticmethod
    def _settle(fut: asyncio.Future[dict[str, Any]] | None, msg: dict[str, Any]) -> None:
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def _on_hello(self, msg: dict[str, Any]) -> None:
        self._settle(self.hello, msg)

    def _on_started(self, msg: dict[str, Any]) -> None:
        self._settle(self.started, msg)

    def _on_prewarmed(self, msg: dict[str, Any]) -> None:
        self._settle(self.prewarmed, msg)

    def _on_resumed(self, msg: dict[str, Any]) -> None:
        self._settle(self.resumed, msg)

    def _on_reply(self, msg: dict[str, Any]) -> None:
        if self.requests is not None:
            self.requests.on_reply(msg)

    def _on_request(self, msg: dict[str, Any]) -> None:
        """``expose``/``export_*``: for the provisioner's exchange, if one is attached."""
        if self.on_request is not None:
            self.on_request(msg)
        elif "req" in msg:
            self.send_control(
                {"op": ops.REPLY, "req": msg["req"], "ok": False, "error": "not available"}
            )

    def _on_exited(self, msg: dict[str, Any]) -> None:
        self.exit_status = msg["status"]

    def _on_error(self, msg: dict[str, Any]) -> None:
        # An agent reports at most one error, then ends: a second is hostile.
        if self._agent_error_seen:
            raise p.ProtocolError("a second error message")
        self._agent_error_seen = True
        self.error = one_line(msg["message"], 2000)
        self.log.error("%s: agent error: %s", self.describe(), self.error)
        for fut in (self.started, self.prewarmed, self.resumed):
            if fut is not None and not fut.done():
                fut.set_exception(SessionError(self.error))
                fut.exception()

    def fail(self, why: str) -> None:
        """End the session on a broken or hostile peer: logged once (escaped and cut:
        ``why`` may quote the peer), then the pipe is aborted."""
        if self._failed:
            return  # one log line per session
        self._failed = True
        why = one_line(why, 500)
        self.error = self.error or why
        self.log.error("%s: %s", self.describe(), why)
        self.close()

    def close(self) -> None:
        for transport in (self.transport, self._reader):
            if transport is not None and not transport.is_closing():
                abort_transport(transport)
        for stream in [s for s, w in self._watched.items() if w.held]:
            self._let_go(stream)
