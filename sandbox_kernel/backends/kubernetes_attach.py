"""A pod's attach stream: how a kernel pod's stdin/stdout become an agent's pipe.

:func:`attach_pod` (on the relay loop) opens the attach stream of a running pod's
container through the official ``kubernetes`` client (its websocket handshake blocks, so
in a worker thread) and connects the session to it through :class:`PodStream`, an
asyncio write transport whose blocking socket work runs in two threads of its own: one
reads the stream's messages and hands stdout's bytes to the session on the relay loop,
one sends what the session wrote. The relay loop never blocks on the API server.

The stream's messages are the remotecommand channel protocol (``v4``/``v5.channel.k8s.io``:
one channel byte, then the payload; :func:`split_message` is pure). No detach keys: the
session's frames go to stdin unescaped. The pod is created with ``stdinOnce``, so when the
stream closes (the server died, or the session ended it) the agent's stdin closes and the
agent ends the pod, as Docker's attach does on one host.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable
from typing import Any

from ..errors import SandboxError
from ..relay.session import AgentSession

STDIN, STDOUT, STDERR, ERROR, CLOSE = 0, 1, 2, 3, 255  # the protocol's channels
MAX_CHUNK = 64 * 1024  # stdin bytes per websocket message


class PodStreamError(SandboxError):
    """The attach stream is malformed (the session ends on it)."""


def split_message(data: bytes) -> tuple[int, bytes]:
    """A stream message's channel and payload."""
    if not data:
        raise PodStreamError("an empty message on the attach stream (no channel byte)")
    return data[0], data[1:]


def stdin_message(data: bytes) -> bytes:
    return bytes((STDIN,)) + data


class PodStream(asyncio.WriteTransport):
    """The session's transport over one attach websocket (``sock``: websocket-client's
    ``WebSocket``, connected). Created and used on the relay loop; its two threads
    call back into the loop only through ``call_soon_threadsafe``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: Any, session: AgentSession) -> None:
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._session = session
        self._pending: collections.deque[bytes] = collections.deque()
        self._size = 0  # bytes written and not yet sent
        self._high, self._low = 64 * 1024, 16 * 1024
        self._paused = False
        self._closing = False
        self._lost = False
        self._cond = threading.Condition()

    def start(self) -> None:
        """Start reading and sending (after the session's ``connection_made``)."""
        for target, what in ((self._read, "read"), (self._send, "send")):
            threading.Thread(target=target, name=f"sandbox-kernel-pod-{what}", daemon=True).start()

    # -- the transport, on the relay loop ------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        with self._cond:
            self._pending.append(bytes(data))
            self._size += len(data)
            size = self._size
            self._cond.notify()
        if size > self._high and not self._paused:
            self._paused = True
            self._session.pause_writing()

    def get_write_buffer_size(self) -> int:
        return self._size

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = 64 * 1024 if high is None else high
        self._low = self._high // 4 if low is None else low

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Send what is queued, then close the stream (the agent's stdin closes)."""
        with self._cond:
            self._closing = True
            self._cond.notify()

    def abort(self) -> None:
        """Drop the stream at once, unsent bytes with it."""
        with self._cond:
            self._closing = True
            self._pending.clear()
            self._size = 0
            self._cond.notify()
        self._sock.abort()

    def can_write_eof(self) -> bool:
        return False

    # -- the threads ---------------------------------------------------------------------
    def _read(self) -> None:
        import websocket

        error: Exception | None = None
        try:
            while True:
                opcode, frame = self._sock.recv_data_frame(True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    break
                if opcode not in (websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_TEXT):
                    continue  # ping, pong
                channel, payload = split_message(bytes(frame.data))
                if channel == STDOUT and payload:
                    self._post(self._session.data_received, payload)
                # stderr is not part of the pipe (the agent writes nothing there); ERROR
                # carries the container's end status, CLOSE (v5) a channel's end
        except PodStreamError as exc:
            self._post(self._session.fail, str(exc))
        except Exception as exc:  # the socket closed under us (abort) or the server went
            error = None if self._closing else exc
        self._sock.shutdown()
        self._post(self._connection_lost, error)

    def _send(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:  # closing, all sent
                    break
                chunk = bytearray()
                while self._pending and len(chunk) < MAX_CHUNK:
                    chunk += self._pending.popleft()
            try:
                for i in range(0, len(chunk), MAX_CHUNK):
                    self._sock.send_binary(stdin_message(bytes(chunk[i : i + MAX_CHUNK])))
            except Exception:
                break  # the reader sees the socket's end and reports it
            with self._cond:
                self._size = max(0, self._size - len(chunk))
                size = self._size
            if size <= self._low:
                self._post(self._maybe_resume)
        try:  # the server answers with its own close, which the reader sees
            self._sock.send_close()
        except Exception:
            self._sock.abort()

    def _post(self, callback: Callable[..., object], *args: Any) -> None:
        """From a thread: ``callback`` on the loop, unless the loop is gone (its owner
        closed it: nothing there waits for this stream any more)."""
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass

    def _maybe_resume(self) -> None:
        if self._paused and self._size <= self._low:
            self._paused = False
            self._session.resume_writing()

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self.close()  # stop the sender
        self._session.connection_lost(exc)


def open_attach(core: Any, namespace: str, pod: str, container: str) -> Any:
    """The attach websocket (stdin and stdout) of a running pod's container, as the
    official client opens it (blocking: call it in a worker thread). Returns the
    connected websocket-client ``WebSocket``."""
    from kubernetes.client import ApiException
    from kubernetes.stream import stream

    try:
        ws = stream(
            core.connect_get_namespaced_pod_attach,
            pod,
            namespace,
            container=container,
            stdin=True,
            stdout=True,
            stderr=False,
            tty=False,
            binary=True,
            _preload_content=False,
        )
    except ApiException as exc:
        raise SandboxError(
            f"the API server refused to attach to pod {namespace}/{pod}: {exc.reason} (the "
            "server's service account needs get and create on pods/attach in that namespace: "
            "kubernetes_pod.SERVER_RULES)"
        ) from None
    return ws.sock


async def attach_pod(
    session: AgentSession, core: Any, namespace: str, pod: str, container: str
) -> PodStream:
    """On the relay loop: connect ``session`` to the attach stream of ``pod``'s running
    ``container``."""
    loop = asyncio.get_running_loop()
    sock = await asyncio.to_thread(open_attach, core, namespace, pod, container)
    session.prepare()
    session.escape_stdin = False  # the channel protocol has no detach keys
    transport = PodStream(loop, sock, session)
    session.connection_made(transport)
    transport.start()
    return transport
