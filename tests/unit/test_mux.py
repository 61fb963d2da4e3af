"""Mux + Stream without sockets: two muxes back to back, fake local transports.

A tiny deterministic scheduler (:class:`Loop`) stands in for the event loop:
deferred callbacks (``connection_lost``), pipe delivery in random-sized pieces
(partial reads), local applications reading and writing through
:class:`FakeTransport`. Stream methods are plain callbacks, so no real event
loop is needed.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest

from sandbox_kernel.inside import mux as m
from sandbox_kernel.inside import protocol as p
from sandbox_kernel.inside.mux import Mux, Stream

PORT = 45001


class Loop:
    """Runs callbacks and actors (pipes, transports) until nothing moves."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.callbacks: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self.actors: list[Any] = []

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        self.callbacks.append((fn, args))

    def run(self, max_steps: int = 200_000) -> None:
        for _ in range(max_steps):
            progressed = False
            while self.callbacks:
                fn, args = self.callbacks.popleft()
                fn(*args)
                progressed = True
            for actor in list(self.actors):
                progressed = actor.step() or progressed
            if not progressed:
                return
        raise AssertionError("the system never settled")


class FakeTransport(asyncio.Transport):
    """A local connection: ``out`` is what the protocol wrote and the local app has
    not consumed yet (the write buffer); ``inbound`` is what the local app sent and
    the protocol has not read yet."""

    def __init__(
        self,
        loop: Loop,
        protocol: asyncio.Protocol | Stream,
        *,
        auto_drain: bool = True,
        read_chunk: int = 65536,
    ) -> None:
        super().__init__()
        self.loop = loop
        self.protocol = protocol
        self.auto_drain = auto_drain
        self.read_chunk = read_chunk
        self.out = bytearray()
        self.consumed = bytearray()
        self.inbound = bytearray()
        self.inbound_eof = False
        self.eof_delivered = False
        self.reading = True
        self.eof_written = False
        self.closing = False
        self.aborted = False
        self.lost = False
        self.late_writes = 0
        self.high = 64 * 1024
        self.low = 16 * 1024
        self.protocol_paused = False
        self.events: list[str] = []
        loop.actors.append(self)

    # -- asyncio.Transport ----------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self.closing:
            self.late_writes += 1
            return
        self.out += data
        if not self.protocol_paused and len(self.out) > self.high:
            self.protocol_paused = True
            self.protocol.pause_writing()

    def write_eof(self) -> None:
        if self.closing or self.eof_written:
            return
        self.eof_written = True
        self.events.append("write_eof")

    def can_write_eof(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        self.events.append("close")  # connection_lost follows once ``out`` is consumed

    def abort(self) -> None:
        if self.aborted:
            return
        self.closing = self.aborted = True
        self.events.append("abort")
        self.out.clear()
        self.loop.call_soon(self._lose, None)

    def pause_reading(self) -> None:
        assert self.reading, "pause_reading while paused"
        self.reading = False
        self.events.append("pause_reading")

    def resume_reading(self) -> None:
        assert not self.reading, "resume_reading while reading"
        self.reading = True
        self.events.append("resume_reading")

    def is_reading(self) -> bool:
        return self.reading

    def get_write_buffer_size(self) -> int:
        return len(self.out)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high = 64 * 1024 if high is None else high
        self.low = self.high // 4 if low is None else low

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self.low, self.high)

    # -- the local application ------------------------------------------------------
    def app_send(self, data: bytes) -> None:
        self.inbound += data

    def app_eof(self) -> None:
        self.inbound_eof = True

    def app_reset(self) -> None:
        """The local peer vanished (e.g. ECONNRESET)."""
        self.closing = True
        self.out.clear()
        self._lose(ConnectionResetError("reset by peer"))

    def drain(self, n: int | None = None) -> None:
        n = len(self.out) if n is None else min(n, len(self.out))
        self.consumed += self.out[:n]
        del self.out[:n]
        if self.protocol_paused and len(self.out) <= self.low:
            self.protocol_paused = False
            self.protocol.resume_writing()

    def _lose(self, exc: Exception | None) -> None:
        if not self.lost:
            self.lost = True
            self.protocol.connection_lost(exc)

    def step(self) -> bool:
        if self.lost:
            return False
        progressed = False
        if self.auto_drain and self.out:
            self.drain()
            progressed = True
        if self.closing and not self.out and not self.aborted:
            self._lose(None)
            return True
        if self.reading and not self.closing:
            if self.inbound:
                chunk = bytes(self.inbound[: self.read_chunk])
                del self.inbound[: self.read_chunk]
                self.protocol.data_received(chunk)
                progressed = True
            elif self.inbound_eof and not self.eof_delivered:
                self.eof_delivered = True
                if not self.protocol.eof_received():
                    self.close()
                progressed = True
        return progressed


class Pipe:
    """One direction of the byte pipe between the muxes, with a bounded write buffer
    (pipe_pause/pipe_resume like the real transport) and delivery in random pieces.
    Also watches the frames to check the flow-control invariant."""

    def __init__(self, loop: Loop, name: str, *, max_piece: int = 100_000) -> None:
        self.loop = loop
        self.name = name
        self.buf = bytearray()
        self.src: Mux | None = None
        self.dst: Mux | None = None
        self.max_piece = max_piece
        self.paused = False
        self.blocked = False  # hold delivery (a stalled pipe)
        self.high = m.PIPE_HIGH_WATER
        self.low = m.PIPE_LOW_WATER
        self.sent_decoder = p.FrameDecoder()
        self.delivered_decoder = p.FrameDecoder()
        self.sent_frames: list[p.Frame] = []
        self.delivered_frames: list[p.Frame] = []
        self.data_sent: dict[int, int] = {}  # payload bytes written, per stream
        self.credit_delivered: dict[int, int] = {}  # credit delivered to ``dst``, per stream
        self.reverse: Pipe | None = None
        loop.actors.append(self)

    def write(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        self.buf += data
        for frame in self.sent_decoder.feed(data):
            self.sent_frames.append(frame)
            if frame.type == p.DATA:
                sid = frame.stream
                self.data_sent[sid] = self.data_sent.get(sid, 0) + len(frame.payload)
                assert self.reverse is not None
                in_flight = self.data_sent[sid] - self.reverse.credit_delivered.get(sid, 0)
                assert in_flight <= p.INITIAL_WINDOW, f"{self.name}: {in_flight} bytes in flight"
        if not self.paused and len(self.buf) > self.high:
            self.paused = True
            assert self.src is not None
            self.src.pipe_pause()

    def step(self) -> bool:
        if not self.buf or self.blocked:
            return False
        assert self.dst is not None and self.src is not None
        n = self.loop.rng.randint(1, min(self.max_piece, len(self.buf)))
        piece = bytes(self.buf[:n])
        del self.buf[:n]
        for frame in self.delivered_decoder.feed(piece):
            self.delivered_frames.append(frame)
            if frame.type == p.CREDIT:
                sid, amount = frame.stream, p.decode_credit(frame.payload)
                self.credit_delivered[sid] = self.credit_delivered.get(sid, 0) + amount
        self.dst.feed(piece)
        if self.paused and len(self.buf) <= self.low:
            self.paused = False
            self.src.pipe_resume()
        return True

    def frames_of(self, ftype: int, sid: int | None = None) -> list[p.Frame]:
        return [f for f in self.sent_frames if f.type == ftype and (sid is None or f.stream == sid)]


class World:
    """A host mux and an agent mux wired back to back."""

    def __init__(
        self,
        seed: int = 0,
        *,
        max_piece: int = 100_000,
        agent_auto_drain: bool = True,
        connect_delay: bool = True,
        agent_console: bool = False,
    ) -> None:
        self.loop = Loop(seed)
        self.h2a = Pipe(self.loop, "host->agent", max_piece=max_piece)
        self.a2h = Pipe(self.loop, "agent->host", max_piece=max_piece)
        self.h2a.reverse, self.a2h.reverse = self.a2h, self.h2a
        self.host_controls: list[dict[str, Any]] = []
        self.agent_controls: list[dict[str, Any]] = []
        self.console = bytearray()
        self.opens: list[tuple[int, int]] = []
        self.agent_auto_drain = agent_auto_drain
        self.connect_delay = connect_delay
        self.host = Mux(
            self.h2a.write, on_control=self.host_controls.append, on_console=self.console.extend
        )
        self.agent = Mux(
            self.a2h.write, on_control=self.agent_controls.append, on_open=self.on_open
        )
        self.h2a.src, self.h2a.dst = self.host, self.agent
        self.a2h.src, self.a2h.dst = self.agent, self.host
        self.agent_transports: dict[int, FakeTransport] = {}
        self.console_transport: FakeTransport | None = None
        if agent_console:
            console = Stream(self.agent, p.CONSOLE_STREAM)
            self.agent.register(console)
            self.console_transport = FakeTransport(self.loop, console)
            console.connection_made(self.console_transport)

    def on_open(self, sid: int, port: int) -> None:
        self.opens.append((sid, port))
        stream = Stream(self.agent, sid)
        self.agent.register(stream)
        transport = FakeTransport(self.loop, stream, auto_drain=self.agent_auto_drain)
        self.agent_transports[sid] = transport
        if self.connect_delay:  # the agent's connect() completes on a later turn
            self.loop.call_soon(stream.connection_made, transport)
        else:
            stream.connection_made(transport)

    def open(self, *, auto_drain: bool = True, port: int = PORT) -> tuple[Stream, FakeTransport]:
        stream = self.host.new_stream()
        self.host.send(p.encode_open(stream.sid, port))
        transport = FakeTransport(self.loop, stream, auto_drain=auto_drain)
        stream.connection_made(transport)
        return stream, transport

    def agent_side(self, sid: int) -> tuple[Stream, FakeTransport]:
        return self.agent.streams[sid], self.agent_transports[sid]

    def run(self) -> None:
        self.loop.run()


# -- data both ways -------------------------------------------------------------------


def test_open_reaches_the_agent_with_port_and_odd_ids() -> None:
    w = World()
    s1, _ = w.open(port=45001)
    s2, _ = w.open(port=45005)
    w.run()
    assert (s1.sid, s2.sid) == (1, 3)
    assert w.opens == [(1, 45001), (3, 45005)]
    assert set(w.agent.streams) == {1, 3}


@pytest.mark.parametrize(
    "seed, max_piece, up_sizes, down_sizes",
    [
        (0, 13, [0, 1, 100, 3000], [0, 7, 2000]),  # the pipe delivers a few bytes at a time
        (1, 4096, [0, 1, 1000, 70_000, 300_000], [0, 5, 4096, 200_000]),
        (2, 70_000, [0, 1000, 300_000, 1_200_000], [0, 5, 200_000, 900_000]),
        (3, 1_000_000, [0, 1000, 300_000, 1_200_000], [0, 5, 200_000, 900_000]),
    ],
)
def test_data_both_ways_many_interleaved_streams(
    seed: int, max_piece: int, up_sizes: list[int], down_sizes: list[int]
) -> None:
    w = World(seed, max_piece=max_piece)
    rng = random.Random(seed)
    pairs = []
    for _ in range(24):
        hs, ht = w.open()
        up = rng.randbytes(rng.choice(up_sizes))
        down = rng.randbytes(rng.choice(down_sizes))
        pairs.append((hs, ht, up, down))
    w.run()  # OPENs arrive, agent connections complete
    for hs, ht, up, down in pairs:
        _, at = w.agent_side(hs.sid)
        # Interleave: the app writes in several pieces on both sides.
        for i in range(0, len(up), 50_000):
            ht.app_send(up[i : i + 50_000])
        at.app_send(down)
    w.run()
    for hs, ht, up, down in pairs:
        _, at = w.agent_side(hs.sid)
        assert bytes(at.consumed) == up, f"stream {hs.sid} host->agent"
        assert bytes(ht.consumed) == down, f"stream {hs.sid} agent->host"
    # Many streams really were interleaved on the wire.
    sids = [f.stream for f in w.h2a.sent_frames if f.type == p.DATA]
    switches = sum(1 for a, b in itertools.pairwise(sids) if a != b)
    assert switches > 10


def test_data_sent_before_the_agent_connection_completes_is_kept() -> None:
    w = World(connect_delay=True)
    hs, ht = w.open()
    ht.app_send(b"early bytes")
    ht.step()  # the host stream reads its local connection
    # Deliver OPEN + DATA to the agent before its connect() completes.
    while w.h2a.buf:
        w.h2a.step()
    agent_stream = w.agent.streams[hs.sid]
    assert agent_stream.transport is None and bytes(agent_stream.pending_in) == b"early bytes"
    w.run()
    assert agent_stream.transport is not None
    assert bytes(w.agent_transports[hs.sid].consumed) == b"early bytes"


def test_data_frames_respect_max_payload() -> None:
    w = World()
    hs, ht = w.open()
    ht.read_chunk = 1_000_000
    ht.app_send(b"x" * 300_000)
    w.run()
    sizes = [len(f.payload) for f in w.h2a.frames_of(p.DATA, hs.sid)]
    assert max(sizes) <= p.MAX_PAYLOAD
    assert sum(sizes) == 300_000


# -- flow control -----------------------------------------------------------------------


def test_a_consumer_that_never_drains_stops_the_sender_at_the_window() -> None:
    w = World(agent_auto_drain=False)
    hs, ht = w.open()
    w.run()
    _, at = w.agent_side(hs.sid)
    total = 3 * p.INITIAL_WINDOW
    data = random.Random(1).randbytes(total)
    ht.app_send(data)
    w.run()
    # The agent holds exactly one window; the host sender is out of credit and has
    # stopped reading its local connection.
    assert len(at.out) == p.INITIAL_WINDOW
    assert sum(len(f.payload) for f in w.h2a.frames_of(p.DATA, hs.sid)) == p.INITIAL_WINDOW
    assert not w.a2h.frames_of(p.CREDIT, hs.sid)
    assert hs.send_window.available == 0
    assert not ht.reading and "pause_reading" in ht.events
    assert len(ht.inbound) + len(hs.pending_out) == total - p.INITIAL_WINDOW
    assert at.protocol_paused  # the agent's local write buffer is over its high-water mark
    # A partial drain that stays above the low-water mark changes nothing yet...
    at.drain(p.INITIAL_WINDOW - m.LOCAL_LOW_WATER - 1)
    w.run()
    assert not ht.reading
    # ... draining further returns credit and the sender resumes.
    at.drain(1)
    w.run()
    assert "resume_reading" in ht.events
    at.auto_drain = True
    w.run()
    assert bytes(at.consumed) == data
    assert ht.reading
    # The watcher in Pipe.write asserted bytes in flight <= INITIAL_WINDOW throughout.


def test_flow_control_the_other_way() -> None:
    w = World()
    hs, ht = w.open(auto_drain=False)
    w.run()
    agent_stream, at = w.agent_side(hs.sid)
    data = random.Random(2).randbytes(2 * p.INITIAL_WINDOW + 12345)
    at.app_send(data)
    w.run()
    assert len(ht.out) == p.INITIAL_WINDOW
    assert not at.reading and agent_stream.reading_paused
    ht.auto_drain = True
    ht.drain()
    w.run()
    assert bytes(ht.consumed) == data
    assert at.reading


def test_a_stalled_stream_does_not_block_others() -> None:
    w = World(agent_auto_drain=False)
    slow, slow_t = w.open()
    fast, fast_t = w.open()
    w.run()
    w.agent_transports[fast.sid].auto_drain = True
    slow_t.app_send(b"s" * (2 * p.INITIAL_WINDOW))
    fast_t.app_send(b"f" * (3 * p.INITIAL_WINDOW))
    w.run()
    assert bytes(w.agent_transports[fast.sid].consumed) == b"f" * (3 * p.INITIAL_WINDOW)
    assert len(w.agent_transports[slow.sid].out) == p.INITIAL_WINDOW


def test_credit_is_returned_in_batches() -> None:
    w = World()
    hs, ht = w.open()
    w.run()
    ht.app_send(b"z" * (4 * p.INITIAL_WINDOW))
    w.run()
    credits = [p.decode_credit(f.payload) for f in w.a2h.frames_of(p.CREDIT, hs.sid)]
    assert credits and all(c >= p.CREDIT_BATCH for c in credits)
    assert sum(credits) <= 4 * p.INITIAL_WINDOW


def test_credit_beyond_the_window_is_a_protocol_error() -> None:
    w = World()
    hs, _ = w.open()
    w.run()
    with pytest.raises(p.ProtocolError):
        w.host.feed(p.encode_credit(hs.sid, 1))


def test_data_beyond_the_window_is_a_protocol_error() -> None:
    w = World(agent_auto_drain=False)
    hs, _ = w.open()
    w.run()
    for chunk in p.encode_data(hs.sid, b"x" * p.INITIAL_WINDOW):
        w.agent.feed(chunk)
    with pytest.raises(p.ProtocolError, match="beyond its window"):
        w.agent.feed(p.encode(p.DATA, hs.sid, b"x"))


def test_pipe_pause_and_resume_toggle_local_reading() -> None:
    w = World()
    streams = [w.open() for _ in range(3)]
    w.run()
    w.host.pipe_pause()
    assert all(not t.reading for _, t in streams)
    assert w.host.pipe_paused
    for _, t in streams:
        t.app_send(b"held")
    w.run()
    assert all(not w.agent_transports[s.sid].consumed for s, _ in streams)
    w.host.pipe_resume()
    assert all(t.reading for _, t in streams)
    w.run()
    assert all(bytes(w.agent_transports[s.sid].consumed) == b"held" for s, _ in streams)


def test_pipe_paused_stream_does_not_send_data() -> None:
    w = World()
    hs, ht = w.open()
    w.run()
    ht.app_send(b"a")
    w.host.pipe_pause()
    hs.data_received(b"more")
    assert not w.h2a.frames_of(p.DATA, hs.sid)
    w.host.pipe_resume()
    assert b"".join(f.payload for f in w.h2a.frames_of(p.DATA, hs.sid)) == b"more"


def test_a_slow_pipe_pauses_every_local_reader() -> None:
    w = World()
    pairs = [w.open() for _ in range(4)]
    w.run()
    w.h2a.blocked = True  # the pipe's reader is stalled: its write buffer fills
    for _, t in pairs:
        t.app_send(b"p" * (400 * 1024))
    w.run()
    assert w.host.pipe_paused
    assert all(not t.reading for _, t in pairs)
    # Only the frame that crossed the high-water mark overshoots it.
    assert len(w.h2a.buf) <= m.PIPE_HIGH_WATER + p.HEADER_SIZE + p.MAX_PAYLOAD
    w.h2a.blocked = False
    w.run()
    assert not w.host.pipe_paused
    for s, _ in pairs:
        assert bytes(w.agent_transports[s.sid].consumed) == b"p" * (400 * 1024)


# -- half-close and close --------------------------------------------------------------------


def test_clean_half_close() -> None:
    w = World()
    hs, ht = w.open()
    w.run()
    agent_stream, at = w.agent_side(hs.sid)
    ht.app_send(b"request")
    ht.app_eof()  # the host app is done sending
    w.run()
    assert bytes(at.consumed) == b"request"
    assert at.eof_written  # EOF relayed as a half-close
    assert hs.eof_sent and agent_stream.remote_eof
    assert hs.sid in w.host.streams and hs.sid in w.agent.streams  # still half-open
    assert not ht.closing and not at.closing
    # Data still flows the other way after the half-close.
    at.app_send(b"response part 1, ")
    w.run()
    at.app_send(b"part 2")
    w.run()
    assert bytes(ht.consumed) == b"response part 1, part 2"
    at.app_eof()
    w.run()
    assert ht.eof_written
    # Both directions are closed: forgotten on both sides, transports closed.
    assert hs.sid not in w.host.streams and hs.sid not in w.agent.streams
    assert hs.closed and agent_stream.closed
    assert ht.closing and not ht.aborted and ht.lost
    assert at.closing and not at.aborted and at.lost
    assert not w.h2a.frames_of(p.RESET) and not w.a2h.frames_of(p.RESET)
    assert ht.late_writes == at.late_writes == 0


def test_half_close_from_the_agent_side_first() -> None:
    w = World()
    hs, ht = w.open()
    w.run()
    _, at = w.agent_side(hs.sid)
    at.app_send(b"banner")
    at.app_eof()
    w.run()
    assert bytes(ht.consumed) == b"banner" and ht.eof_written
    ht.app_send(b"still talking")
    w.run()
    assert bytes(at.consumed) == b"still talking"
    ht.app_eof()
    w.run()
    assert not w.host.streams and not w.agent.streams
    assert ht.lost and at.lost and not ht.aborted and not at.aborted


def test_eof_waits_for_pending_data_and_credit() -> None:
    w = World(agent_auto_drain=False)
    hs, ht = w.open()
    w.run()
    _, at = w.agent_side(hs.sid)
    ht.app_send(b"q" * (p.INITIAL_WINDOW + 10))
    ht.app_eof()
    w.run()
    assert not at.eof_written and not hs.eof_sent  # 10 bytes still wait for credit
    at.auto_drain = True
    w.run()
    assert at.eof_written and len(at.consumed) == p.INITIAL_WINDOW + 10


def test_eof_before_the_agent_connection_completes() -> None:
    w = World(connect_delay=True)
    hs, ht = w.open()
    ht.app_send(b"x")
    ht.app_eof()
    while w.h2a.buf:
        w.h2a.step()
    w.run()
    at = w.agent_transports[hs.sid]
    assert bytes(at.consumed) == b"x" and at.eof_written


def test_data_after_eof_is_a_protocol_error() -> None:
    w = World()
    hs, _ = w.open()
    w.run()
    w.agent.feed(p.encode(p.EOF, hs.sid))
    with pytest.raises(p.ProtocolError, match="after EOF"):
        w.agent.feed(p.encode(p.DATA, hs.sid, b"late"))


def test_local_close_without_eof_resets_the_peer() -> None:
    w = World()
    hs, ht = w.open()
    w.run()
    agent_stream, at = w.agent_side(hs.sid)
    ht.app_reset()
    w.run()
    assert w.h2a.frames_of(p.RESET, hs.sid)
    assert hs.sid not in w.host.streams and hs.sid not in w.agent.streams
    assert at.aborted and agent_stream.closed


# -- reset ------------------------------------------------------------------------------


def test_reset_from_the_agent_aborts_the_host_connection() -> None:
    w = World()
    hs, ht = w.open()
    w.run()
    agent_stream, at = w.agent_side(hs.sid)
    agent_stream.abort("connect to port 45001 failed")
    assert at.aborted
    w.run()
    resets = w.a2h.frames_of(p.RESET, hs.sid)
    assert len(resets) == 1 and resets[0].payload == b"connect to port 45001 failed"
    assert ht.aborted and hs.closed
    assert hs.sid not in w.host.streams and hs.sid not in w.agent.streams
    assert not w.h2a.frames_of(p.RESET)  # the aborted side does not answer with a RESET


def test_reset_from_the_host_aborts_the_agent_connection() -> None:
    w = World()
    hs, ht = w.open()
    w.run()
    agent_stream, at = w.agent_side(hs.sid)
    at.app_send(b"in flight")
    hs.abort("client went away")
    w.run()
    assert ht.aborted and at.aborted
    assert agent_stream.closed
    assert not w.host.streams and not w.agent.streams
    assert not w.a2h.frames_of(p.RESET)


def test_reset_while_data_is_in_flight_is_harmless() -> None:
    w = World(seed=3, max_piece=1000)
    hs, ht = w.open()
    w.run()
    _, at = w.agent_side(hs.sid)
    at.app_send(b"d" * 300_000)
    ht.app_send(b"u" * 300_000)
    for _ in range(20):  # a few turns: frames are now in flight both ways
        w.h2a.step()
        w.a2h.step()
        ht.step()
        at.step()
    hs.abort("bye")
    w.run()
    assert not w.host.streams and not w.agent.streams
    assert ht.aborted and at.aborted


def test_reset_before_the_agent_connection_completes() -> None:
    w = World(connect_delay=True)
    hs, _ = w.open()
    while w.h2a.buf:
        w.h2a.step()
    agent_stream = w.agent.streams[hs.sid]
    w.agent.feed(p.encode_reset(hs.sid, "never mind"))
    assert agent_stream.closed and hs.sid not in w.agent.streams
    w.run()  # connection_made on a closed stream aborts the new connection
    assert w.agent_transports[hs.sid].aborted


# -- the router ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        p.encode(p.DATA, 99, b"stray"),
        p.encode(p.EOF, 99),
        p.encode_reset(99, "stale"),
        p.encode_credit(99, 100),
        p.encode(p.DATA, 2, b"even id"),
    ],
)
def test_frames_for_unknown_streams_are_ignored(frame: bytes) -> None:
    w = World()
    hs, ht = w.open()
    w.run()
    w.host.feed(frame)
    w.agent.feed(frame)
    w.run()
    assert hs.sid in w.host.streams and not ht.closing
    assert not w.a2h.frames_of(p.RESET) and not w.h2a.frames_of(p.RESET)


def test_open_on_the_host_side_is_a_protocol_error() -> None:
    w = World()
    with pytest.raises(p.ProtocolError, match="may not open"):
        w.host.feed(p.encode_open(2, 22))


@pytest.mark.parametrize("sid", [0, 1])
def test_open_of_a_stream_in_use_is_a_protocol_error(sid: int) -> None:
    w = World()
    w.open()
    w.run()
    with pytest.raises(p.ProtocolError, match="in use"):
        w.agent.feed(p.encode_open(sid, PORT))


@pytest.mark.parametrize("payload", [b"", b"\x00", b"\x00\x00", b"\x00\x01\x02"])
def test_open_with_a_bad_port_is_a_protocol_error(payload: bytes) -> None:
    w = World()
    with pytest.raises(p.ProtocolError):
        w.agent.feed(p.encode(p.OPEN, 1, payload))


def test_bad_credit_payload_is_a_protocol_error() -> None:
    w = World()
    hs, _ = w.open()
    w.run()
    with pytest.raises(p.ProtocolError):
        w.host.feed(p.encode(p.CREDIT, hs.sid, b"\x00\x00\x00\x00"))


def test_control_messages_both_ways() -> None:
    w = World()
    w.agent.send_control({"op": "hello", "version": p.VERSION})
    w.host.send_control({"op": "signal", "signum": 2})
    w.run()
    assert w.host_controls == [{"op": "hello", "version": p.VERSION}]
    assert w.agent_controls == [{"op": "signal", "signum": 2}]


def test_bad_control_payload_is_a_protocol_error() -> None:
    w = World()
    with pytest.raises(p.ProtocolError):
        w.host.feed(p.encode(p.CONTROL, 0, b"[]"))


def test_too_many_streams() -> None:
    w = World()
    w.host.max_streams = 3
    for _ in range(3):
        w.open()
    with pytest.raises(p.ProtocolError, match="too many"):
        w.host.new_stream()
    w.agent.max_streams = 2
    with pytest.raises(p.ProtocolError, match="too many"):
        w.run()


def test_host_at_its_stream_limit_does_not_break_an_agent_with_a_console() -> None:
    """The agent registers the console as stream 0; a host that stays within its own
    ``max_streams`` must never make the agent fail with "too many streams"."""
    w = World(agent_console=True)
    w.host.max_streams = w.agent.max_streams = 4
    for _ in range(4):
        w.open()
    w.run()  # must not raise ProtocolError
    assert len([sid for sid in w.agent.streams if sid != p.CONSOLE_STREAM]) == 4


def test_forgotten_streams_free_their_slots() -> None:
    w = World()
    w.host.max_streams = w.agent.max_streams = 2
    for _ in range(5):
        a, at = w.open()
        _, bt = w.open()
        w.run()
        at.app_eof()
        w.agent_transports[a.sid].app_eof()
        bt.app_reset()
        w.run()
        assert not w.host.streams and not w.agent.streams


def test_mux_close_aborts_every_transport() -> None:
    w = World()
    pairs = [w.open() for _ in range(5)]
    w.run()
    w.host.close()
    w.agent.close()
    assert w.host.closed and not w.host.streams
    assert w.agent.closed and not w.agent.streams
    w.run()
    for s, t in pairs:
        assert t.aborted and s.closed
        assert w.agent_transports[s.sid].aborted
    # Nothing is sent after close, not even the RESETs of the lost connections.
    before = len(w.h2a.sent_frames)
    w.host.send(p.encode(p.EOF, 1))
    w.host.send_control({"op": "x"})
    assert len(w.h2a.sent_frames) == before
    assert not w.h2a.frames_of(p.RESET) and not w.a2h.frames_of(p.RESET)


def test_mux_close_with_a_stream_not_yet_connected() -> None:
    w = World(connect_delay=True)
    hs, _ = w.open()
    while w.h2a.buf:
        w.h2a.step()
    w.agent.close()
    w.run()  # connection_made on the closed stream aborts the connection
    assert w.agent_transports[hs.sid].aborted


# -- the console ---------------------------------------------------------------------------------


def test_console_data_goes_to_on_console_and_credit_is_returned() -> None:
    w = World(agent_console=True)
    assert w.console_transport is not None
    out = random.Random(5).randbytes(3 * p.INITIAL_WINDOW + 99)
    w.console_transport.app_send(out)
    w.console_transport.app_eof()
    w.run()
    assert bytes(w.console) == out
    credits = [p.decode_credit(f.payload) for f in w.h2a.frames_of(p.CREDIT, p.CONSOLE_STREAM)]
    assert credits and all(c >= p.CREDIT_BATCH for c in credits)
    assert sum(credits) >= len(out) - p.CREDIT_BATCH
    assert w.a2h.frames_of(p.EOF, p.CONSOLE_STREAM)  # console EOF is ignored by the host
    assert not w.host_controls


def test_console_without_credit_cannot_exceed_its_window() -> None:
    w = World()
    data = b"c" * (3 * p.INITIAL_WINDOW)
    for chunk in p.encode_data(0, data):  # the host returns credit as it consumes
        w.host.feed(chunk)
    assert bytes(w.console) == data
    hostile = Mux(lambda _b: None, on_control=lambda _m: None, on_console=lambda _b: None)
    hostile._console_window = p.RecvWindow(initial=10)
    with pytest.raises(p.ProtocolError, match="beyond its window"):
        hostile.feed(p.encode(p.DATA, 0, b"x" * 11))


def test_console_eof_reset_and_credit_on_host_are_ignored() -> None:
    w = World()
    for frame in (p.encode(p.EOF, 0), p.encode_reset(0, "x"), p.encode_credit(0, 5)):
        w.host.feed(frame)
    assert not w.host.streams and not w.h2a.sent_frames


# -- fake transport sanity ------------------------------------------------------------------------


def test_fake_transport_is_a_real_transport_for_isinstance_checks() -> None:
    t = FakeTransport(Loop(), asyncio.Protocol())
    assert isinstance(t, asyncio.ReadTransport) and isinstance(t, asyncio.WriteTransport)


def test_stream_sets_local_write_buffer_limits() -> None:
    w = World()
    _, ht = w.open()
    assert ht.get_write_buffer_limits() == (m.LOCAL_LOW_WATER, m.LOCAL_HIGH_WATER)
    assert m.LOCAL_HIGH_WATER <= p.INITIAL_WINDOW - p.CREDIT_BATCH


def test_eof_to_a_vanished_local_peer_resets_only_that_stream() -> None:
    """write_eof() on a socket whose peer is gone raises ENOTCONN (seen with ZeroMQ clients
    reconnecting): that stream is reset; the pipe and the other streams carry on."""
    w = World()
    hs, ht = w.open()
    other, other_t = w.open()
    w.run()
    _, at = w.agent_side(hs.sid)

    def gone() -> None:
        raise OSError(107, "Transport endpoint is not connected")

    ht.write_eof = gone  # type: ignore[method-assign]
    at.app_eof()  # the kernel closes its side: EOF travels to the host
    w.run()
    assert hs.closed and hs.sid not in w.host.streams
    assert ht.aborted
    assert w.h2a.frames_of(p.RESET)
    other_t.app_send(b"still fine")
    w.run()
    _, other_at = w.agent_side(other.sid)
    assert bytes(other_at.consumed) == b"still fine"


def test_streams_read_their_sockets_into_the_muxs_one_reused_buffer() -> None:
    """Real sockets, a real loop: two streams' local reads go into the Mux's one buffer
    (no fresh 256 KiB object per read: under gVisor each costs an mmap, an mremap and a
    munmap in the sentry), and each stream's bytes still reach the pipe whole and in order."""
    import socket

    frames: list[bytes] = []
    mux = Mux(frames.append, on_control=lambda msg: None)
    reads: list[int] = []

    class Counted(Stream):
        def get_buffer(self, sizehint: int) -> memoryview:
            reads.append(self.sid)
            return super().get_buffer(sizehint)

    streams = [Counted(mux, sid) for sid in (2, 4)]

    async def run() -> None:
        loop = asyncio.get_running_loop()
        pairs = [socket.socketpair() for _ in range(2)]
        for stream, (inner, _) in zip(streams, pairs, strict=True):
            mux.register(stream)
            await loop.connect_accepted_socket(lambda s=stream: s, inner)  # type: ignore[misc]
        for i in range(20):
            for n, (_, outer) in enumerate(pairs):
                outer.sendall(bytes([65 + n]) * (1000 + i))
                await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)
        for inner, outer in pairs:
            outer.close()
            inner.close()

    asyncio.run(run())
    got: dict[int, bytes] = {2: b"", 4: b""}
    decoder = p.FrameDecoder()
    for frame in decoder.feed(b"".join(frames)):
        if frame.type == p.DATA:
            got[frame.stream] += frame.payload
    assert got[2] == b"".join(b"A" * (1000 + i) for i in range(20))
    assert got[4] == b"".join(b"B" * (1000 + i) for i in range(20))
    assert set(reads) == {2, 4} and len(reads) >= 2
    assert all(s.get_buffer(-1) is mux.read_buffer for s in streams)


def test_the_agents_pipe_to_the_host_has_the_hosts_buffer_bounds() -> None:
    """The agent's stdout pauses its streams at the same marks as the host's end of the
    pipe (not asyncio's 64 KiB, one frame: that paused and resumed every local socket per
    read while output streamed)."""
    import os

    from sandbox_kernel.inside import agent

    async def run() -> tuple[int, int]:
        r, w = os.pipe()
        os.close(r)  # nothing is written: only the transport's limits are read
        transport, _ = await asyncio.get_running_loop().connect_write_pipe(
            lambda: agent._PipeOut(None),  # type: ignore[arg-type]
            os.fdopen(w, "wb", buffering=0),
        )
        try:
            return transport.get_write_buffer_limits()
        finally:
            transport.abort()

    assert asyncio.run(run()) == (m.PIPE_LOW_WATER, m.PIPE_HIGH_WATER)
