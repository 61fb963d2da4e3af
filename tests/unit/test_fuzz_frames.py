"""Property tests: the decoder and the router survive anything a peer can send."""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox_kernel.inside import protocol as p
from sandbox_kernel.inside.mux import Mux

from .test_mux import FakeTransport, Loop

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,  # deterministic runs
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

STREAM_IDS = st.sampled_from([0, 1, 2, 3, 5, 7, 99, p.MAX_STREAM_ID])
SMALL_PAYLOAD = st.binary(max_size=300)


@st.composite
def valid_frames(draw: st.DrawFn) -> p.Frame:
    ftype = draw(st.sampled_from(sorted(p.FRAME_NAMES)))
    if ftype == p.CONTROL:
        message = {"op": draw(st.text(max_size=10)), "n": draw(st.integers())}
        return p.Frame(ftype, 0, json.dumps(message).encode())
    sid = draw(st.integers(0, p.MAX_STREAM_ID))
    payload = draw(st.one_of(SMALL_PAYLOAD, st.just(b"\xa5" * p.MAX_PAYLOAD)))
    return p.Frame(ftype, sid, payload)


@st.composite
def hostile_frames(draw: st.DrawFn) -> bytes:
    """Frame-shaped bytes: plausible headers with garbage here and there."""
    ftype = draw(st.integers(0, 8))
    sid = draw(STREAM_IDS)
    kind = draw(st.sampled_from(["any", "port", "credit", "json", "empty"]))
    if kind == "port":
        payload = draw(st.integers(0, 65535)).to_bytes(2, "big")
    elif kind == "credit":
        payload = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big")
    elif kind == "json":
        payload = draw(
            st.sampled_from([b'{"op":"hello"}', b"{}", b"[]", b'{"op":1}', b"\xff", b"{"])
        )
    elif kind == "empty":
        payload = b""
    else:
        payload = draw(SMALL_PAYLOAD)
    length = len(payload)
    if draw(st.integers(0, 9)) == 0:  # now and then, a lying length
        length = draw(
            st.sampled_from([0, 1, len(payload) + 1, p.MAX_PAYLOAD, p.MAX_PAYLOAD + 1, 2**32 - 1])
        )
    return p.HEADER.pack(ftype, sid, length) + payload


PEER_BYTES = st.one_of(
    st.binary(max_size=2000),
    st.lists(hostile_frames(), max_size=30).map(b"".join),
    st.lists(st.one_of(hostile_frames(), st.binary(max_size=20)), max_size=20).map(b"".join),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@SETTINGS
@given(st.lists(valid_frames(), max_size=20), st.lists(st.integers(0, 2**20), max_size=30))
def test_valid_frames_decode_identically_in_any_split(
    frames: list[p.Frame], cuts: list[int]
) -> None:
    wire = b"".join(p.encode(*f) for f in frames)
    decoder = p.FrameDecoder()
    out: list[p.Frame] = []
    for piece in split(wire, cuts):
        out += decoder.feed(piece)
    assert out == frames
    assert decoder.buffered == 0


@SETTINGS
@given(PEER_BYTES, st.lists(st.integers(0, 2**16), max_size=20))
def test_decoder_yields_frames_or_protocol_error_and_stays_bounded(
    data: bytes, cuts: list[int]
) -> None:
    decoder = p.FrameDecoder()
    for piece in split(data, cuts):
        try:
            frames = decoder.feed(piece)
        except p.ProtocolError:
            return
        for frame in frames:
            assert frame.type in p.FRAME_NAMES
            assert len(frame.payload) <= p.MAX_PAYLOAD
            assert frame.type != p.CONTROL or frame.stream == p.CONSOLE_STREAM
        assert decoder.buffered < p.HEADER_SIZE + p.MAX_PAYLOAD


def host_mux_with_streams() -> tuple[Mux, Loop]:
    loop = Loop()
    controls: list[dict[str, Any]] = []
    console = bytearray()
    mux = Mux(lambda _frame: None, on_control=controls.append, on_console=console.extend)
    for i in range(3):
        stream = mux.new_stream()
        stream.connection_made(FakeTransport(loop, stream, auto_drain=i != 1))
    return mux, loop


@SETTINGS
@given(PEER_BYTES, st.lists(st.integers(0, 2**16), max_size=20))
def test_host_mux_raises_only_protocol_error(data: bytes, cuts: list[int]) -> None:
    mux, loop = host_mux_with_streams()
    for piece in split(data, cuts):
        try:
            mux.feed(piece)
            loop.run()
        except p.ProtocolError:
            return
    assert len(mux.streams) <= 3
    mux.close()
    loop.run()


@SETTINGS
@given(st.lists(hostile_frames(), max_size=30).map(b"".join))
def test_agent_mux_raises_only_protocol_error(data: bytes) -> None:
    loop = Loop()
    mux: Mux

    def on_open(sid: int, port: int) -> None:
        from sandbox_kernel.inside.mux import Stream

        stream = Stream(mux, sid)
        mux.register(stream)
        loop.call_soon(stream.connection_made, FakeTransport(loop, stream))

    mux = Mux(lambda _frame: None, on_control=lambda _m: None, on_open=on_open)
    try:
        mux.feed(data)
        loop.run()
    except p.ProtocolError:
        pass
