"""Carry many TCP connections over one byte pipe, with per-stream flow control.

Standard-library asyncio only: the same code runs on the host (the relay,
where the pipe is Docker's attach stream) and inside the sandbox (the agent,
where the pipe is its stdin/stdout). Each side wraps its local sockets in
:class:`Stream` protocols; the :class:`Mux` owns the frame decoder, routes
frames to streams and applies back-pressure in both directions:

* a stream never sends more than its peer granted (``SendWindow``), so the
  pipe reader never has to stop for one slow consumer and memory stays
  bounded per stream;
* when the pipe's own write buffer is full, every local socket stops reading.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any, BinaryIO

from . import protocol as p

# Local write buffer bounds; HIGH <= INITIAL_WINDOW - CREDIT_BATCH keeps credit flowing.
REQUEST_TIMEOUT = 120.0
# Raw bytes per bulk-data CONTROL frame (files in and out): its base64 fits in one frame.
FILE_CHUNK = 32 * 1024
LOCAL_HIGH_WATER = 256 * 1024
LOCAL_LOW_WATER = 64 * 1024
PIPE_HIGH_WATER = 1024 * 1024
PIPE_LOW_WATER = 256 * 1024
# What one read of a local socket can take (asyncio's own read size). Streams read into
# one buffer per Mux, reused: a fresh 256 KiB bytes object per read costs glibc an mmap,
# an mremap and a munmap, which gVisor's sentry handles (half the agent's syscalls per
# cell; docs/performance.md).
READ_BUFFER = 256 * 1024
# What one read of the pipe takes. asyncio's pipe transport allocates a bytes object per
# read; below glibc's mmap threshold (128 KiB) it comes from the heap, without that mmap,
# mremap and munmap. A pipe holds 64 KiB, so reads are no smaller for it.
PIPE_READ = 64 * 1024
# Relayed connections open at once per pipe: a client's five channels, reconnects and an
# exposed server's browser connections fit; each holds a socket on the host.
MAX_STREAMS = 64


def abort_transport(transport: asyncio.BaseTransport) -> None:
    """Drop a connection at once (RST for sockets); read-only pipes can only close."""
    abort = getattr(transport, "abort", None)
    if abort is not None:
        abort()
    else:
        transport.close()


class Stream(asyncio.BufferedProtocol):
    """One relayed connection on this side of the pipe (an asyncio protocol). Socket
    transports read into the Mux's reused buffer (``get_buffer``, ``buffer_updated``);
    a pipe (the kernel's console output) calls ``data_received``."""

    def __init__(self, mux: Mux, sid: int) -> None:
        self.mux = mux
        self.sid = sid
        self.transport: asyncio.BaseTransport | None = None
        self.send_window = p.SendWindow()
        self.recv_window = p.RecvWindow()
        self.pending_out = bytearray()  # local bytes waiting for credit
        self.pending_in = bytearray()  # peer bytes waiting for the local connection
        self.local_eof = False
        self.eof_sent = False
        self.remote_eof = False
        self.reading_paused = False
        self.writing_paused = False
        self.closed = False
        # Host side: checks the peer's bytes before they are passed on (the kernel's
        # ZeroMQ framing); raising ValueError resets this stream only.
        self.inspect: Callable[[bytes], None] | None = None
        # Host side: offered the local connection when the peer's end closes (EOF, RESET,
        # the pipe gone); True means its owner took it over (it closes it later).
        self.on_peer_end: Callable[[Stream], bool] | None = None

    # -- local side (asyncio callbacks) --------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self.closed:
            abort_transport(transport)
            return
        if isinstance(transport, asyncio.WriteTransport):
            transport.set_write_buffer_limits(high=LOCAL_HIGH_WATER, low=LOCAL_LOW_WATER)
        if self.pending_in:
            data, self.pending_in = bytes(self.pending_in), bytearray()
            self._write_local(data)
        if self.remote_eof:
            self._local_write_eof()
        self.pump()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.mux.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        # Copied out at once: the next read of any stream of this Mux reuses the buffer.
        self.data_received(self.mux.read_buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        self.pending_out += data
        self.pump()

    def eof_received(self) -> bool:
        self.local_eof = True
        self.pump()
        return True  # keep our write half open: the peer may still send

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            clean = self.eof_sent and self.remote_eof and not self.pending_out
            if not clean:
                self.mux.send(p.encode_reset(self.sid, "local connection closed"))
            self._forget()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._settle()

    # -- frames from the peer --------------------------------------------------
    def on_data(self, data: bytes) -> None:
        self.recv_window.received(len(data))
        if self.remote_eof:
            raise p.ProtocolError("DATA after EOF on stream %d" % self.sid)
        if self.inspect is not None:
            try:
                self.inspect(data)
            except ValueError as exc:
                self.abort(str(exc))
                return
        if self.transport is None:
            self.pending_in += data
        else:
            self._write_local(data)

    def on_eof(self) -> None:
        self.remote_eof = True
        if self._hand_over():
            return
        if self.transport is not None:
            self._local_write_eof()
        self._maybe_finish()

    def on_reset(self) -> None:
        if self._hand_over():
            return
        self._forget()
        if self.transport is not None:
            abort_transport(self.transport)

    def on_credit(self, amount: int) -> None:
        self.send_window.grant(amount)
        self.pump()

    # -- internals -------------------------------------------------------------
    def pump(self) -> None:
        """Send what credit and the pipe allow; pause local reading otherwise."""
        if self.closed:
            return
        mux = self.mux
        while self.pending_out and not mux.pipe_paused:
            n = self.send_window.take(min(len(self.pending_out), p.MAX_PAYLOAD))
            if not n:
                break
            chunk = bytes(self.pending_out[:n])
            del self.pending_out[:n]
            mux.send(p.HEADER.pack(p.DATA, self.sid, n) + chunk)
        if self.local_eof and not self.pending_out and not self.eof_sent:
            self.eof_sent = True
            mux.send(p.encode(p.EOF, self.sid))
            self._maybe_finish()
        self._set_reading(not self.pending_out and not mux.pipe_paused)

    def _set_reading(self, on: bool) -> None:
        t = self.transport
        if t is None or self.closed or self.local_eof or not isinstance(t, asyncio.ReadTransport):
            return
        if on and self.reading_paused:
            self.reading_paused = False
            t.resume_reading()
        elif not on and not self.reading_paused:
            self.reading_paused = True
            t.pause_reading()

    def _write_local(self, data: bytes) -> None:
        t = self.transport
        if not isinstance(t, asyncio.WriteTransport):
            raise p.ProtocolError("stream %d cannot take data" % self.sid)
        if t.is_closing():
            return
        t.write(data)
        self._settle()

    def _settle(self) -> None:
        t = self.transport
        buffered = len(self.pending_in)
        if isinstance(t, asyncio.WriteTransport):
            buffered += t.get_write_buffer_size()
        credit = self.recv_window.settle(buffered)
        if credit and not self.closed:
            self.mux.send(p.encode_credit(self.sid, credit))

    def _local_write_eof(self) -> None:
        t = self.transport
        if isinstance(t, asyncio.WriteTransport) and t.can_write_eof() and not t.is_closing():
            try:
                t.write_eof()
            except OSError:
                # The local peer is already gone (ENOTCONN): this stream ends, the pipe
                # and every other stream carry on.
                self.abort("local connection lost")

    def _maybe_finish(self) -> None:
        if self.eof_sent and self.remote_eof and self.transport is not None:
            self._forget()
            self.transport.close()  # flushes what is buffered, then closes

    def _hand_over(self) -> bool:
        """The peer's end is gone: give the local connection to ``on_peer_end`` if it
        takes it (this stream is then done with it)."""
        take = self.on_peer_end
        if take is None or self.transport is None or self.closed or not take(self):
            return False
        self._forget()
        return True

    def _forget(self) -> None:
        self.closed = True
        self.mux.forget(self.sid)

    def release(self, reason: str) -> None:
        """Reset this stream from our side, leaving the local connection to the caller."""
        if not self.closed:
            self.mux.send(p.encode_reset(self.sid, reason))
            self._forget()

    def abort(self, reason: str) -> None:
        """Reset this stream from our side."""
        if not self.closed:
            self.mux.send(p.encode_reset(self.sid, reason))
            self._forget()
        if self.transport is not None:
            abort_transport(self.transport)


class Mux:
    """Routes frames between the pipe and local streams.

    ``write`` puts bytes on the pipe (an asyncio transport's ``write``: it
    buffers and handles short writes). The owner calls :meth:`feed` with bytes
    read from the pipe and :meth:`pipe_pause`/:meth:`pipe_resume` from the pipe
    transport's flow-control callbacks.
    """

    def __init__(
        self,
        write: Callable[[bytes], None],
        *,
        on_control: Callable[[dict[str, Any]], None],
        on_open: Callable[[int, int], None] | None = None,
        on_console: Callable[[bytes], None] | None = None,
        max_streams: int = MAX_STREAMS,
    ) -> None:
        self._write = write
        self._on_control = on_control
        self._on_open = on_open
        self._on_console = on_console
        self._console_window = p.RecvWindow()
        self.decoder = p.FrameDecoder()
        # Shared by this Mux's streams: the loop calls get_buffer, reads, then
        # buffer_updated, with nothing in between.
        self.read_buffer = memoryview(bytearray(READ_BUFFER))
        self.streams: dict[int, Stream] = {}
        self.max_streams = max_streams
        self.pipe_paused = False
        self.closed = False
        self._next_sid = 1
        self._resumed: asyncio.Event | None = None

    def send(self, frame: bytes) -> None:
        if not self.closed:
            self._write(frame)

    def send_control(self, message: dict[str, Any]) -> None:
        self.send(p.encode_control(message))

    def new_stream(self) -> Stream:
        """A locally initiated stream (host side); the caller sends OPEN."""
        if self._relayed_streams() >= self.max_streams:
            raise p.ProtocolError("too many streams")
        sid = self._next_sid
        self._next_sid += 2
        stream = Stream(self, sid)
        self.streams[sid] = stream
        return stream

    def register(self, stream: Stream) -> None:
        if stream.sid in self.streams:
            raise p.ProtocolError("stream %d is already open" % stream.sid)
        if self._relayed_streams() >= self.max_streams:
            raise p.ProtocolError("too many streams")
        self.streams[stream.sid] = stream

    def _relayed_streams(self) -> int:
        """Open relayed connections; the console stream (0) does not count."""
        return len(self.streams) - (p.CONSOLE_STREAM in self.streams)

    def forget(self, sid: int) -> None:
        self.streams.pop(sid, None)

    def feed(self, data: bytes) -> None:
        """Handle bytes read from the pipe; raises ProtocolError on a bad peer."""
        for frame in self.decoder.feed(data):
            self._dispatch(frame)

    def _dispatch(self, frame: p.Frame) -> None:
        ftype, sid, payload = frame
        if ftype == p.CONTROL:
            self._on_control(p.decode_control(payload))
            return
        if sid == p.CONSOLE_STREAM and self._on_console is not None:
            if ftype == p.DATA:
                self._console_window.received(len(payload))
                self._on_console(payload)
                credit = self._console_window.settle(0)
                if credit:
                    self.send(p.encode_credit(sid, credit))
                return
            if ftype == p.EOF:
                return
        if ftype == p.OPEN:
            if self._on_open is None:
                raise p.ProtocolError("peer may not open streams")
            if sid in self.streams or sid == p.CONSOLE_STREAM:
                raise p.ProtocolError("OPEN of stream %d, which is in use" % sid)
            self._on_open(sid, p.decode_port(payload))
            return
        stream = self.streams.get(sid)
        if stream is None:
            return  # a frame racing our RESET of that stream
        if ftype == p.DATA:
            stream.on_data(payload)
        elif ftype == p.EOF:
            stream.on_eof()
        elif ftype == p.CREDIT:
            stream.on_credit(p.decode_credit(payload))
        elif ftype == p.RESET:
            stream.on_reset()

    def pipe_pause(self) -> None:
        self.pipe_paused = True
        for stream in list(self.streams.values()):
            stream._set_reading(False)

    async def drained(self) -> None:
        """Wait while the pipe's write buffer is full: bulk senders (file copies) pace
        themselves with this instead of growing the buffer."""
        while self.pipe_paused and not self.closed:
            if self._resumed is None:
                self._resumed = asyncio.Event()
            self._resumed.clear()
            await self._resumed.wait()

    def pipe_resume(self) -> None:
        self.pipe_paused = False
        if self._resumed is not None:
            self._resumed.set()
        for stream in list(self.streams.values()):
            stream.pump()

    def close(self) -> None:
        """The pipe is gone: abort every local connection."""
        self.closed = True
        if self._resumed is not None:
            self._resumed.set()
        for stream in list(self.streams.values()):
            if stream._hand_over():
                continue
            stream.closed = True
            if stream.transport is not None:
                abort_transport(stream.transport)
        self.streams.clear()


class Requests:
    """Request/reply over CONTROL frames: our pending requests to the peer, by ``req`` id;
    the peer answers with ``{"op": "reply", "req": id, "ok": ...}``."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, send: Callable[[dict[str, Any]], None]
    ) -> None:
        self.loop = loop
        self.send = send
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.next_id = 1

    async def ask(
        self, message: dict[str, Any], timeout: float = REQUEST_TIMEOUT
    ) -> dict[str, Any]:
        req = self.next_id
        self.next_id += 1
        fut: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self.pending[req] = fut
        try:
            self.send(dict(message, req=req))
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.pending.pop(req, None)

    def on_reply(self, message: dict[str, Any]) -> None:
        req = message.get("req")
        fut = self.pending.get(req) if isinstance(req, int) else None
        if fut is not None and not fut.done():
            fut.set_result(message)

    def fail_all(self, why: str) -> None:
        """The pipe is gone: every pending request fails."""
        for fut in self.pending.values():
            if not fut.done():
                fut.set_result({"op": "reply", "ok": False, "error": why})


async def send_file_data(mux: Mux, f: BinaryIO, size: int, op: str) -> int:
    """Send at most ``size`` bytes of ``f`` (the announced size, even if the file changes
    meanwhile) as ``{"op": op, "data": <base64>}`` CONTROL frames, pacing with the pipe;
    return the bytes sent. Stops early if the pipe is gone."""
    sent = 0
    while sent < size and not mux.closed:
        chunk = f.read(min(FILE_CHUNK, size - sent))
        if not chunk:
            break
        sent += len(chunk)
        mux.send_control({"op": op, "data": base64.b64encode(chunk).decode()})
        await mux.drained()  # the pipe is full: let the peer catch up
    return sent
