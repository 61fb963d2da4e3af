"""Fuzz target for the relay's frame decoder and router (what a hostile sandbox controls).

With atheris (``pip install atheris``)::

    python fuzz/fuzz_frames.py [libFuzzer options, e.g. -max_total_time=600 corpus/]

Without atheris it runs the same target over seeded random inputs, so it works
anywhere::

    python fuzz/fuzz_frames.py [ITERATIONS] [SEED]

A crash is any exception other than ``ProtocolError`` (the one error the host
turns into "end the session and the sandbox"), or a decoder buffering more than
one maximal frame.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

try:
    import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]
except ImportError:
    atheris = None

if atheris is not None:
    with atheris.instrument_imports():
        from sandbox_kernel.inside import protocol as p
        from sandbox_kernel.inside.mux import Mux
else:
    from sandbox_kernel.inside import protocol as p
    from sandbox_kernel.inside.mux import Mux


class _Transport(asyncio.Transport):
    """A local connection that accepts everything and never blocks."""

    def __init__(self, protocol: asyncio.Protocol, buffer_size: int) -> None:
        super().__init__()
        self.protocol = protocol
        self.buffer_size = buffer_size
        self.closing = False
        self.lost = False

    def write(self, data: Any) -> None:
        pass  # consumed at once (or, per ``buffer_size``, pretended to be held)

    def write_eof(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True
        if not self.lost:
            self.lost = True
            self.protocol.connection_lost(None)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return self.buffer_size

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


def _split(data: bytes) -> list[bytes]:
    """Use the first byte to pick how the rest is cut into reads."""
    if not data:
        return []
    step = data[0] % 17 + 1 if data[0] < 200 else len(data)
    rest = data[1:]
    return [rest[i : i + step] for i in range(0, len(rest), step)] or [b""]


def _check_decoder(pieces: list[bytes]) -> None:
    decoder = p.FrameDecoder()
    for piece in pieces:
        try:
            frames = decoder.feed(piece)
        except p.ProtocolError:
            return
        for frame in frames:
            assert frame.type in p.FRAME_NAMES
            assert len(frame.payload) <= p.MAX_PAYLOAD
        assert decoder.buffered < p.HEADER_SIZE + p.MAX_PAYLOAD, decoder.buffered


def _check_host_mux(pieces: list[bytes]) -> None:
    mux = Mux(lambda _frame: None, on_control=lambda _msg: None, on_console=lambda _data: None)
    for i in range(3):
        stream = mux.new_stream()
        stream.connection_made(_Transport(stream, buffer_size=(0, 300_000, 10)[i]))
    try:
        for piece in pieces:
            mux.feed(piece)
    except p.ProtocolError:
        pass
    mux.close()


def _check_agent_mux(pieces: list[bytes]) -> None:
    from sandbox_kernel.inside.mux import Stream

    def on_open(sid: int, port: int) -> None:
        stream = Stream(mux, sid)
        mux.register(stream)
        stream.connection_made(_Transport(stream, buffer_size=0))

    mux = Mux(lambda _frame: None, on_control=lambda _msg: None, on_open=on_open)
    try:
        for piece in pieces:
            mux.feed(piece)
    except p.ProtocolError:
        pass
    mux.close()


def TestOneInput(data: bytes) -> None:
    pieces = _split(data)
    _check_decoder(pieces)
    _check_host_mux(pieces)
    _check_agent_mux(pieces)


# -- without atheris: a small structure-aware random driver ------------------------------------


def _random_frame(rng: random.Random) -> bytes:
    ftype = rng.choice([p.OPEN, p.DATA, p.DATA, p.EOF, p.RESET, p.CREDIT, p.CONTROL, 0, 7, 255])
    sid = 0 if ftype == p.CONTROL and rng.random() < 0.8 else rng.choice([0, 1, 2, 3, 5, 2**32 - 1])
    if ftype == p.OPEN:
        payload = rng.randrange(0, 65536).to_bytes(2, "big")
    elif ftype == p.CREDIT:
        payload = rng.choice([0, 1, p.CREDIT_BATCH, p.INITIAL_WINDOW, 2**32 - 1]).to_bytes(4, "big")
    elif ftype == p.CONTROL:
        payload = rng.choice([b'{"op":"hello"}', b"{}", b"[]", b"\xff", b'{"op":"x","a":[1,2]}'])
    elif ftype == p.DATA:
        payload = rng.randbytes(rng.choice([0, 1, 100, 4096, p.MAX_PAYLOAD]))
    else:
        payload = rng.randbytes(rng.randrange(0, 8))
    length = len(payload)
    if rng.random() < 0.05:
        length = rng.choice([0, length + 1, p.MAX_PAYLOAD + 1, 2**32 - 1])
    return p.HEADER.pack(ftype, sid, length) + payload


def _random_input(rng: random.Random) -> bytes:
    if rng.random() < 0.2:
        return rng.randbytes(rng.randrange(0, 512))
    body = b"".join(_random_frame(rng) for _ in range(rng.randrange(0, 40)))
    if body and rng.random() < 0.3:  # flip a byte
        i = rng.randrange(len(body))
        body = body[:i] + bytes([rng.randrange(256)]) + body[i + 1 :]
    return bytes([rng.randrange(256)]) + body


def main(argv: list[str]) -> int:
    if atheris is not None:
        atheris.Setup(argv, TestOneInput)
        atheris.Fuzz()
        return 0
    iterations = int(argv[1]) if len(argv) > 1 else 10_000
    seed = int(argv[2]) if len(argv) > 2 else 0
    rng = random.Random(seed)
    for i in range(iterations):
        data = _random_input(rng)
        try:
            TestOneInput(data)
        except Exception:
            print(f"crash at iteration {i} (seed {seed}); input: {data!r}", file=sys.stderr)
            raise
    print(f"{iterations} inputs, no crash (atheris not installed; seed {seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
