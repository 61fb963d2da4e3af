"""Docker's multiplexed attach stream: 8-byte headers, any split."""

from __future__ import annotations

import random
import struct

import pytest

from sandbox_kernel.backends.docker_attach import (
    STDERR,
    STDOUT,
    DockerStreamDemux,
    DockerStreamError,
)


def docker_frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxI", kind, len(payload)) + payload


def collect(pieces: list[tuple[int, bytes]]) -> dict[int, bytes]:
    out: dict[int, bytearray] = {}
    for kind, piece in pieces:
        out.setdefault(kind, bytearray()).extend(piece)
    return {k: bytes(v) for k, v in out.items()}


def test_header_layout() -> None:
    assert docker_frame(STDOUT, b"abc") == b"\x01\x00\x00\x00\x00\x00\x00\x03abc"
    assert (STDOUT, STDERR) == (1, 2)


def test_single_frame() -> None:
    demux = DockerStreamDemux()
    assert demux.feed(docker_frame(STDOUT, b"hello")) == [(STDOUT, b"hello")]
    assert demux.feed(b"") == []


def test_stdout_and_stderr_are_told_apart() -> None:
    wire = (
        docker_frame(STDOUT, b"out1") + docker_frame(STDERR, b"err") + docker_frame(STDOUT, b"out2")
    )
    assert DockerStreamDemux().feed(wire) == [
        (STDOUT, b"out1"),
        (STDERR, b"err"),
        (STDOUT, b"out2"),
    ]


def test_stdin_kind_zero_is_accepted() -> None:
    assert DockerStreamDemux().feed(docker_frame(0, b"x")) == [(0, b"x")]


def test_empty_payload_frames_yield_nothing() -> None:
    wire = docker_frame(STDOUT, b"") + docker_frame(STDERR, b"") + docker_frame(STDOUT, b"z")
    assert DockerStreamDemux().feed(wire) == [(STDOUT, b"z")]


def test_byte_by_byte() -> None:
    wire = (
        docker_frame(STDOUT, b"hello") + docker_frame(STDERR, b"oops") + docker_frame(STDOUT, b"!")
    )
    demux = DockerStreamDemux()
    pieces: list[tuple[int, bytes]] = []
    for i in range(len(wire)):
        pieces += demux.feed(wire[i : i + 1])
    assert all(len(piece) == 1 for _, piece in pieces)
    assert collect(pieces) == {STDOUT: b"hello!", STDERR: b"oops"}
    assert [k for k, _ in pieces] == [STDOUT] * 5 + [STDERR] * 4 + [STDOUT]


@pytest.mark.parametrize("seed", range(20))
def test_arbitrary_splits(seed: int) -> None:
    rng = random.Random(seed)
    expected: dict[int, bytearray] = {STDOUT: bytearray(), STDERR: bytearray()}
    order: list[int] = []
    wire = bytearray()
    for _ in range(rng.randrange(1, 60)):
        kind = rng.choice([STDOUT, STDOUT, STDERR])
        payload = rng.randbytes(rng.choice([0, 1, 7, 8, 9, 300, 70_000]))
        expected[kind] += payload
        if payload:
            order.append(kind)
        wire += docker_frame(kind, payload)
    demux = DockerStreamDemux()
    pieces: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(wire):
        n = rng.choice([1, 3, 8, 9, rng.randrange(1, 100_000)])
        pieces += demux.feed(bytes(wire[pos : pos + n]))
        pos += n
    got = collect(pieces)
    assert got.get(STDOUT, b"") == bytes(expected[STDOUT])
    assert got.get(STDERR, b"") == bytes(expected[STDERR])
    # Pieces of one payload may be split, but never reordered across frames.
    merged = [k for i, (k, _) in enumerate(pieces) if i == 0 or pieces[i - 1][0] != k]
    collapsed = [k for i, k in enumerate(order) if i == 0 or order[i - 1] != k]
    assert merged == collapsed


def test_payload_bytes_that_look_like_headers_are_payload() -> None:
    # The sandbox controls payload bytes; they must never be parsed as headers.
    evil = docker_frame(STDERR, b"fake") + b"\x07\x01\x02\x03"
    wire = docker_frame(STDOUT, evil) + docker_frame(STDOUT, b"after")
    assert collect(DockerStreamDemux().feed(wire)) == {STDOUT: evil + b"after"}


@pytest.mark.parametrize(
    "bad",
    [
        b"\x03\x00\x00\x00\x00\x00\x00\x01",  # unknown stream type
        b"\xff\x00\x00\x00\x00\x00\x00\x01",
        b"\x01\x01\x00\x00\x00\x00\x00\x01",  # non-zero padding
        b"\x01\x00\x00\x01\x00\x00\x00\x01",
        b"HTTP/1.1",  # e.g. an HTTP error body where frames were expected
    ],
)
def test_bad_header_is_an_error(bad: bytes) -> None:
    with pytest.raises(DockerStreamError):
        DockerStreamDemux().feed(bad)


def test_bad_header_after_a_valid_frame_and_split() -> None:
    demux = DockerStreamDemux()
    assert demux.feed(docker_frame(STDOUT, b"ok") + b"\x09\x00") == [(STDOUT, b"ok")]
    with pytest.raises(DockerStreamError):
        demux.feed(b"\x00\x00\x00\x00\x00\x00")
