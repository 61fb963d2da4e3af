"""The frame protocol: encoding, incremental decoding, flow-control windows."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox_kernel.inside import protocol as p
from sandbox_kernel.inside.protocol import Frame, FrameDecoder, ProtocolError


def header(ftype: int, stream: int, length: int) -> bytes:
    return p.HEADER.pack(ftype, stream, length)


# -- encoding -----------------------------------------------------------------------


def test_header_layout_is_type_u8_stream_u32_length_u32_big_endian() -> None:
    assert p.HEADER_SIZE == 9
    assert p.encode(p.DATA, 0x01020304, b"xy") == b"\x02\x01\x02\x03\x04\x00\x00\x00\x02xy"
    assert p.encode(p.EOF, 7) == b"\x03\x00\x00\x00\x07\x00\x00\x00\x00"


def test_frame_type_numbers_are_stable() -> None:
    assert (p.OPEN, p.DATA, p.EOF, p.RESET, p.CREDIT, p.CONTROL) == (1, 2, 3, 4, 5, 6)
    assert set(p.FRAME_NAMES) == {1, 2, 3, 4, 5, 6}
    assert p.CONSOLE_STREAM == 0


@pytest.mark.parametrize(
    "frame",
    [
        Frame(p.DATA, 1, b"hello"),
        Frame(p.DATA, 3, b""),
        Frame(p.DATA, p.MAX_STREAM_ID, b"\x00" * p.MAX_PAYLOAD),
        Frame(p.EOF, 5, b""),
        Frame(p.RESET, 9, b"why"),
        Frame(p.OPEN, 1, b"\xaf\xc9"),
        Frame(p.CREDIT, 1, b"\x00\x00\x10\x00"),
        Frame(p.CONTROL, 0, b'{"op":"hello"}'),
    ],
)
def test_encode_decode_round_trip(frame: Frame) -> None:
    wire = p.encode(*frame)
    assert len(wire) == p.HEADER_SIZE + len(frame.payload)
    dec = FrameDecoder()
    assert dec.feed(wire) == [frame]
    assert dec.buffered == 0


def test_encode_refuses_oversized_payload() -> None:
    p.encode(p.DATA, 1, b"x" * p.MAX_PAYLOAD)
    with pytest.raises(ValueError):
        p.encode(p.DATA, 1, b"x" * (p.MAX_PAYLOAD + 1))


def test_open_credit_reset_control_helpers_round_trip() -> None:
    wire = (
        p.encode_open(1, 45001)
        + p.encode_credit(1, 4096)
        + p.encode_reset(3, "gone \u2603")
        + p.encode_control({"op": "signal", "signum": 2})
    )
    frames = FrameDecoder().feed(wire)
    assert [f.type for f in frames] == [p.OPEN, p.CREDIT, p.RESET, p.CONTROL]
    assert p.decode_port(frames[0].payload) == 45001
    assert p.decode_credit(frames[1].payload) == 4096
    assert frames[2].stream == 3 and frames[2].payload.decode() == "gone \u2603"
    assert frames[3].stream == p.CONSOLE_STREAM
    assert p.decode_control(frames[3].payload) == {"op": "signal", "signum": 2}


def test_reset_reason_is_capped() -> None:
    wire = p.encode_reset(1, "x" * 5000)
    assert len(wire) == p.HEADER_SIZE + 1024


@pytest.mark.parametrize(
    "size", [0, 1, p.MAX_PAYLOAD - 1, p.MAX_PAYLOAD, p.MAX_PAYLOAD + 1, 3 * p.MAX_PAYLOAD + 17]
)
def test_encode_data_splits_at_max_payload(size: int) -> None:
    data = random.Random(size).randbytes(size)
    wires = p.encode_data(7, data)
    assert len(wires) == -(-size // p.MAX_PAYLOAD)
    frames = FrameDecoder().feed(b"".join(wires))
    assert all(f.type == p.DATA and f.stream == 7 for f in frames)
    assert all(len(f.payload) == p.MAX_PAYLOAD for f in frames[:-1])
    assert b"".join(f.payload for f in frames) == data


def test_decode_port() -> None:
    assert p.decode_port(b"\x00\x01") == 1
    assert p.decode_port(b"\xff\xff") == 65535
    for bad in (b"", b"\x01", b"\x00\x01\x02", b"\x00\x00"):
        with pytest.raises(ProtocolError):
            p.decode_port(bad)


def test_decode_credit() -> None:
    assert p.decode_credit(b"\x00\x00\x00\x01") == 1
    assert p.decode_credit(b"\xff\xff\xff\xff") == 2**32 - 1
    for bad in (b"", b"\x00\x00\x01", b"\x00\x00\x00\x00\x01", b"\x00\x00\x00\x00"):
        with pytest.raises(ProtocolError):
            p.decode_credit(bad)


# -- CONTROL payloads ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"\xff\xfe",  # not UTF-8
        b"[1, 2]",
        b'"op"',
        b"null",
        b"{}",
        b'{"op": 1}',
        b'{"op": null}',
        b'{"op": "x"',
    ],
)
def test_bad_control_payload_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        p.decode_control(payload)


def test_deeply_nested_control_json_is_a_protocol_error() -> None:
    # A hostile agent can send a 64 KiB CONTROL payload of nested brackets; json
    # raises RecursionError for it, which must surface as a ProtocolError like any
    # other malformed payload (the session only catches ProtocolError).
    payload = b'{"op":"hello","x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert len(payload) <= p.MAX_PAYLOAD
    with pytest.raises(ProtocolError):
        p.decode_control(payload)


def test_control_round_trip_keeps_unicode_and_nesting() -> None:
    msg = {"op": "start", "argv": ["python", "-c", "print('\u00e9')"], "env": {"A": "1"}, "n": None}
    frames = FrameDecoder().feed(p.encode_control(msg))
    assert p.decode_control(frames[0].payload) == msg
    assert json.loads(frames[0].payload) == msg


# -- the decoder ------------------------------------------------------------------------


def sample_frames(rng: random.Random, n: int, streams: int = 1) -> list[Frame]:
    frames = []
    for _ in range(n):
        kind = rng.choice([p.DATA, p.DATA, p.DATA, p.EOF, p.RESET, p.CREDIT, p.OPEN, p.CONTROL])
        sid = 0 if kind == p.CONTROL else rng.randrange(1, 2 * streams + 1, 2)
        if kind == p.DATA:
            size = rng.choice([0, 1, 9, 100, 4096, p.MAX_PAYLOAD])
            payload = rng.randbytes(size)
        elif kind == p.CREDIT:
            payload = rng.randrange(1, 2**32).to_bytes(4, "big")
        elif kind == p.OPEN:
            payload = rng.randrange(1, 65536).to_bytes(2, "big")
        elif kind == p.CONTROL:
            payload = json.dumps({"op": "x", "n": rng.random()}).encode()
        elif kind == p.RESET:
            payload = b"reason"
        else:
            payload = b""
        frames.append(Frame(kind, sid, payload))
    return frames


def test_decoder_fed_byte_by_byte() -> None:
    frames = sample_frames(random.Random(1), 40)
    frames = [f for f in frames if len(f.payload) < 5000]  # keep the loop short
    wire = b"".join(p.encode(*f) for f in frames)
    dec = FrameDecoder()
    out: list[Frame] = []
    for i in range(len(wire)):
        out += dec.feed(wire[i : i + 1])
        assert dec.buffered < p.HEADER_SIZE + p.MAX_PAYLOAD
    assert out == frames
    assert dec.buffered == 0


@pytest.mark.parametrize("seed", range(10))
def test_decoder_fed_in_random_splits(seed: int) -> None:
    rng = random.Random(seed)
    frames = sample_frames(rng, 60, streams=8)
    wire = b"".join(p.encode(*f) for f in frames)
    dec = FrameDecoder()
    out: list[Frame] = []
    pos = 0
    while pos < len(wire):
        n = rng.choice([1, 2, 8, 9, 10, rng.randrange(1, 200_000)])
        out += dec.feed(wire[pos : pos + n])
        pos += n
    assert out == frames
    assert dec.buffered == 0


def test_decoder_empty_feed_and_partial_header() -> None:
    dec = FrameDecoder()
    assert dec.feed(b"") == []
    assert dec.feed(header(p.DATA, 1, 3)[:5]) == []
    assert dec.buffered == 5
    assert dec.feed(header(p.DATA, 1, 3)[5:] + b"ab") == []
    assert dec.buffered == p.HEADER_SIZE + 2
    assert dec.feed(b"c") == [Frame(p.DATA, 1, b"abc")]
    assert dec.buffered == 0


def test_many_interleaved_streams_keep_per_stream_order() -> None:
    rng = random.Random(7)
    expected: dict[int, bytearray] = {sid: bytearray() for sid in range(1, 200, 2)}
    wire = bytearray()
    for _ in range(3000):
        sid = rng.randrange(1, 200, 2)
        chunk = rng.randbytes(rng.randrange(0, 300))
        expected[sid] += chunk
        wire += p.encode(p.DATA, sid, chunk)
    got: dict[int, bytearray] = {sid: bytearray() for sid in expected}
    dec = FrameDecoder()
    pos = 0
    while pos < len(wire):
        n = rng.randrange(1, 5000)
        for f in dec.feed(bytes(wire[pos : pos + n])):
            got[f.stream] += f.payload
        pos += n
    assert got == expected


def test_oversized_length_is_rejected_from_the_header_alone() -> None:
    dec = FrameDecoder()
    # Only the header: the decoder must not wait for (and buffer) 4 GiB.
    with pytest.raises(ProtocolError, match="exceeds"):
        dec.feed(header(p.DATA, 1, p.MAX_PAYLOAD + 1))
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(header(p.DATA, 1, 2**32 - 1))


def test_max_payload_is_accepted_and_custom_limit_is_enforced() -> None:
    assert FrameDecoder().feed(header(p.DATA, 1, p.MAX_PAYLOAD) + b"x" * p.MAX_PAYLOAD)
    dec = FrameDecoder(max_payload=10)
    assert dec.feed(header(p.DATA, 1, 10) + b"x" * 10) == [Frame(p.DATA, 1, b"x" * 10)]
    with pytest.raises(ProtocolError):
        dec.feed(header(p.DATA, 1, 11))


@pytest.mark.parametrize("ftype", [0, 7, 8, 0x41, 255])
def test_unknown_frame_type_is_rejected(ftype: int) -> None:
    with pytest.raises(ProtocolError, match="unknown frame type"):
        FrameDecoder().feed(header(ftype, 1, 0))


def test_unknown_type_after_valid_frames_in_the_same_chunk() -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(p.encode(p.DATA, 1, b"ok") + header(9, 1, 0))


@pytest.mark.parametrize("sid", [1, 2, p.MAX_STREAM_ID])
def test_control_on_non_zero_stream_is_rejected(sid: int) -> None:
    with pytest.raises(ProtocolError, match="CONTROL frame on stream"):
        FrameDecoder().feed(header(p.CONTROL, sid, 2) + b"{}")


def test_header_errors_are_detected_before_the_payload_arrives() -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(header(p.CONTROL, 5, 1000))


# -- flow-control windows -------------------------------------------------------------


def test_send_window_take_and_grant() -> None:
    w = p.SendWindow()
    assert w.available == p.INITIAL_WINDOW
    assert w.take(1000) == 1000
    assert w.available == p.INITIAL_WINDOW - 1000
    assert w.take(p.INITIAL_WINDOW) == p.INITIAL_WINDOW - 1000
    assert w.available == 0
    assert w.take(1) == 0
    w.grant(500)
    assert w.take(10_000) == 500
    w.grant(p.INITIAL_WINDOW)  # back to a full window: allowed
    assert w.available == p.INITIAL_WINDOW


def test_send_window_credit_beyond_window_is_a_protocol_error() -> None:
    w = p.SendWindow()
    with pytest.raises(ProtocolError, match="beyond the window"):
        w.grant(1)
    w = p.SendWindow()
    w.take(100)
    w.grant(100)
    with pytest.raises(ProtocolError):
        w.grant(1)
    w = p.SendWindow(initial=10)
    w.take(10)
    w.grant(5, limit=10)
    with pytest.raises(ProtocolError):
        w.grant(6, limit=10)


def test_recv_window_beyond_window_is_a_protocol_error() -> None:
    r = p.RecvWindow()
    r.received(p.INITIAL_WINDOW)
    assert r.outstanding == p.INITIAL_WINDOW
    with pytest.raises(ProtocolError, match="beyond its window"):
        r.received(1)
    r = p.RecvWindow(initial=100)
    r.received(60)
    with pytest.raises(ProtocolError):
        r.received(41)


def test_recv_window_settle_batches_credit() -> None:
    r = p.RecvWindow()
    r.received(p.CREDIT_BATCH - 1)
    assert r.settle(0) is None  # below one batch: nothing yet
    r.received(1)
    assert r.settle(1) is None  # one byte still held locally: not yet consumed
    assert r.settle(0) == p.CREDIT_BATCH
    assert r.outstanding == 0
    assert r.settle(0) is None  # credit is returned once only


def test_recv_window_settle_credits_only_what_left_local_buffers() -> None:
    r = p.RecvWindow()
    r.received(p.INITIAL_WINDOW)
    assert r.settle(p.INITIAL_WINDOW) is None
    assert r.settle(p.INITIAL_WINDOW - p.CREDIT_BATCH + 1) is None
    assert r.settle(p.INITIAL_WINDOW - p.CREDIT_BATCH) == p.CREDIT_BATCH
    assert r.outstanding == p.INITIAL_WINDOW - p.CREDIT_BATCH
    # The rest drains: everything comes back, and exactly once.
    assert r.settle(0) == p.INITIAL_WINDOW - p.CREDIT_BATCH
    assert r.outstanding == 0
    r.received(p.INITIAL_WINDOW)  # a whole new window may now arrive


def test_windows_conserve_bytes_end_to_end() -> None:
    """A sender and receiver exchanging credit never exceed the window and never stall."""
    rng = random.Random(3)
    send, recv = p.SendWindow(), p.RecvWindow()
    held = 0  # receiver-side buffered bytes
    total_sent = total_consumed = 0
    goal = 20 * p.INITIAL_WINDOW
    for _ in range(100_000):
        if total_consumed >= goal:
            break
        n = send.take(rng.randrange(1, 3 * p.MAX_PAYLOAD))
        if n:
            recv.received(n)
            held += n
            total_sent += n
        eat = rng.randrange(0, held + 1)
        held -= eat
        total_consumed += eat
        credit = recv.settle(held)
        if credit:
            send.grant(credit)
        assert total_sent - total_consumed == held
        assert send.available + recv.outstanding == p.INITIAL_WINDOW
    assert total_consumed >= goal


@given(st.binary(max_size=300), st.lists(st.integers(min_value=1, max_value=7), max_size=80))
@settings(max_examples=300, deadline=None)
def test_stdin_escaping_hides_the_detach_sequence_and_round_trips(
    data: bytes, cuts: list[int]
) -> None:
    """Docker drops the attach stream on ctrl-p ctrl-q in stdin: escaped frames never
    contain it, and the agent's unescaper restores them across any split."""
    encoded = p.escape_stdin(data)
    assert b"\x10\x11" not in encoded
    unescaper = p.StdinUnescaper()
    out, pos = b"", 0
    for cut in [*cuts, len(encoded)]:
        out += unescaper.feed(encoded[pos : pos + cut])
        pos += cut
    out += unescaper.feed(encoded[pos:])
    assert out == data


def test_bad_stdin_escape_is_a_protocol_error() -> None:
    with pytest.raises(p.ProtocolError):
        p.StdinUnescaper().feed(b"\x10\x11")
