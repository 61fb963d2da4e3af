"""The host's bounds on what one sandbox can make the Jupyter process hold, as units:
ZeroMQ message sizes (zmtp.py), console output (console.py), the pipe backlog and the
agent's error reports (session.py), run-time port slots (exchange/host.py), the kernel's
uid check (boot.py) and copy-in's export-folder exclusion (files_in.py).

The same bounds are attacked from inside real sandboxes in tests/security/test_host_bounds.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox_kernel.backends.base import Preflight
from sandbox_kernel.boot import check_hello, check_kernel
from sandbox_kernel.errors import PolicyError, SandboxError
from sandbox_kernel.exchange.files_in import plan_copy_in
from sandbox_kernel.exchange.host import HostExchange
from sandbox_kernel.exchange.policy import build_exchange_policy, export_name
from sandbox_kernel.inside import protocol as p
from sandbox_kernel.relay import console as c
from sandbox_kernel.relay.session import MAX_PIPE_BACKLOG, AgentSession
from sandbox_kernel.relay.zmtp import GREETING_SIZE, ZmtpError, ZmtpLimiter
from sandbox_kernel.settings import BY_NAME

MiB = 2**20

# -- ZMTP --------------------------------------------------------------------------------


def greeting(major: int = 3) -> bytes:
    g = b"\xff" + b"\x00" * 8 + b"\x7f" + bytes([major, 1]) + b"NULL".ljust(20, b"\0")
    return (g + b"\0" * GREETING_SIZE)[:GREETING_SIZE]


def zframe(body: bytes | int, more: bool = False, command: bool = False) -> bytes:
    size = body if isinstance(body, int) else len(body)
    flags = (1 if more else 0) | (4 if command else 0)
    if size > 255:
        head = bytes([flags | 2]) + struct.pack(">Q", size)
    else:
        head = bytes([flags, size])
    return head + (b"" if isinstance(body, int) else body)


def feed_split(limiter: ZmtpLimiter, data: bytes, cuts: list[int]) -> None:
    last = 0
    for cut in sorted(set(cuts)):
        limiter.feed(data[last:cut])
        last = cut
    limiter.feed(data[last:])


@given(
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 30000), max_size=20),
)
def test_zmtp_messages_within_the_limit_pass_in_any_split(
    sizes: list[int], cuts: list[int]
) -> None:
    stream = greeting() + zframe(b"\x05READY", command=True)
    for i, size in enumerate(sizes):
        stream += zframe(b"m" * size, more=i < len(sizes) - 1)
    limiter = ZmtpLimiter(max_message=max(sum(sizes), 64))
    feed_split(limiter, stream, cuts)
    assert limiter.largest == sum(sizes)


def test_zmtp_refuses_a_frame_header_announcing_too_much_before_its_body() -> None:
    limiter = ZmtpLimiter(max_message=MiB)
    limiter.feed(greeting())
    with pytest.raises(ZmtpError, match="exceeds max_message_size"):
        limiter.feed(zframe(768 * MiB)[:9])  # the header alone: nothing of the body yet


def test_zmtp_counts_every_frame_of_a_multipart_message() -> None:
    limiter = ZmtpLimiter(max_message=1000)
    limiter.feed(greeting() + zframe(b"a" * 600, more=True))
    with pytest.raises(ZmtpError):
        limiter.feed(zframe(b"b" * 600)[:9])
    # ...while separate messages of the same sizes pass.
    limiter = ZmtpLimiter(max_message=1000)
    limiter.feed(greeting() + zframe(b"a" * 600) + zframe(b"b" * 600))


@pytest.mark.parametrize(
    "bad",
    [
        b"GET / HTTP/1.1\r\n" + b"x" * 60,  # not ZMTP at all
        greeting(major=2),  # older framing that the limiter would misread
        greeting() + bytes([0x08, 1, 0]),  # unknown flag bit
        greeting() + bytes([0x05, 1, 0]),  # a command with MORE
    ],
)
def test_zmtp_refuses_anything_else(bad: bytes) -> None:
    with pytest.raises(ZmtpError):
        ZmtpLimiter(max_message=MiB).feed(bad)


# -- console -----------------------------------------------------------------------------


def test_printable_escapes_terminal_control_and_keeps_text() -> None:
    text = "ok é 漢\t\n\x1b[2J\x07\r\x00\u2028\x9b"
    assert c.printable(text) == "ok é 漢\t\n\\x1b[2J\\x07\\x0d\\x00\\u2028\\x9b"
    assert c.one_line("a\nb\tc\x1b", 100) == "a\\nb\\tc\\x1b"
    assert c.printable("x" * 50, 10) == "x" * 10 + "\u2026"


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    written: list[bytes] = []

    class Writer:
        def offer(self, data: bytes) -> bool:
            written.append(data)
            return True

    monkeypatch.setattr(c._Writer, "get", classmethod(lambda cls: Writer()))
    return written


def test_console_lines_are_prefixed_and_escaped(captured: list[bytes]) -> None:
    sink = c.ConsoleSink("abcdef0123456789", "stderr", MiB)
    sink(b"hello\x1b[31m\nwor")
    sink(b"ld\n")
    assert b"".join(captured) == (
        b"[sandbox-kernel abcdef01] hello\\x1b[31m\n[sandbox-kernel abcdef01] world\n"
    )


def test_console_stops_at_its_limit_and_warns_once(
    captured: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    sink = c.ConsoleSink("k", "stderr", 1000, logging.getLogger("t"))
    for _ in range(100):
        sink(b"y" * 100 + b"\n")
    assert sum(map(len, captured)) <= 1000
    assert sink.received == 10100 and sink.dropped > 0
    assert sum("console output is over its bounds" in r.message for r in caplog.records) == 1


def test_console_rate_limit_holds_a_burst(captured: list[bytes]) -> None:
    sink = c.ConsoleSink("k", "stderr", 100 * MiB)
    for _ in range(1000):
        sink(b"z" * 1023 + b"\n")
    # No time passes in this loop: only the burst (plus a little refill) got through.
    assert sum(map(len, captured)) <= c.BURST + c.RATE


def test_console_discard_keeps_only_the_tail(captured: list[bytes]) -> None:
    sink = c.ConsoleSink("k", "discard", MiB)
    sink(b"x" * (3 * c.TAIL_BYTES) + b"\x1b[0mlast words")
    assert captured == []
    assert sink.tail.endswith("\\x1b[0mlast words") and len(sink.tail) <= 2000


def test_console_modes_are_the_settings_choices() -> None:
    """The sink takes exactly console_output's choices (declared once, in settings.py) and
    refuses anything else as a PolicyError naming the setting."""
    for mode in BY_NAME["console_output"].choices:
        assert c.ConsoleSink("k", mode, MiB).mode == mode
    with pytest.raises(PolicyError, match="console_output: 'syslog' is not one of stderr"):
        c.ConsoleSink("k", "syslog", MiB)


def test_a_stalled_stderr_drops_instead_of_blocking(monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = os.pipe()  # a pipe nobody reads: the writer thread blocks on it
    try:
        writer = c._Writer(os.fdopen(w, "wb", buffering=0))
        monkeypatch.setattr(c._Writer, "get", classmethod(lambda cls: writer))
        sink = c.ConsoleSink("k", "stderr", 100 * MiB)
        for _ in range(200):
            sink(b"q" * 4095 + b"\n")  # returns at once, every time
        c_total = sink.passed + sink.dropped
        assert sink.dropped > 0 and c_total >= 200 * 4096
        assert writer.queued <= c.QUEUE_BYTES
    finally:
        os.close(r)


# -- session: backlog and agent errors ------------------------------------------------------


class StalledTransport(asyncio.Transport):
    """A pipe whose reader never reads: everything written stays buffered."""

    def __init__(self) -> None:
        super().__init__()
        self.buffered = 0
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.buffered += len(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


def session_with(transport: asyncio.Transport) -> AgentSession:
    session = AgentSession("sb-test", console=lambda _d: None, log=logging.getLogger("t"))
    session.kernel_id = "kernel-1"
    session.connection_made(transport)
    return session


def test_a_session_whose_sandbox_stops_reading_ends_at_the_backlog_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = StalledTransport()
    session = session_with(transport)
    replies = 0
    while not transport.aborted:
        session.send_control({"op": "reply", "req": replies, "ok": False, "error": "x" * 100})
        replies += 1
        assert replies < 10**6
    assert transport.buffered <= MAX_PIPE_BACKLOG + 1000
    errors = [r.message for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "stopped reading its pipe" in errors[0]
    assert "kernel kernel-1" in errors[0]


def test_the_agent_may_report_one_error_which_is_logged_escaped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = StalledTransport()
    session = session_with(transport)
    evil = "\x1b[2J\n[E 2026 ServerApp] FAKE\n" * 500
    first = p.encode_control({"op": "error", "message": evil})
    session.data_received(first + first + first)
    assert transport.aborted
    errors = [r.message for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2, errors  # the error, then the protocol error it caused
    assert "a second error message" in errors[1]
    for line in errors:
        assert "\n" not in line and "\x1b" not in line and len(line) < 2500


def test_unknown_ops_are_quoted_short() -> None:
    transport = StalledTransport()
    session = session_with(transport)
    session.data_received(p.encode_control({"op": "\x1b" * 9000}))
    assert transport.aborted and session.error is not None and len(session.error) < 600


# -- run-time ports: the slot is taken before the first await --------------------------------


class SlowListeners:
    """Stands in for HostListeners: binding takes a turn of the loop."""

    def __init__(self) -> None:
        self.inside_ports: dict[str, int] = {}
        self.ports: dict[str, int] = {}

    async def add(self, name: str, inside: int, host_port: int = 0) -> int:
        await asyncio.sleep(0)
        if name in self.ports:
            raise ValueError(f"{name} is already bound")
        self.ports[name] = 40000 + inside % 1000
        self.inside_ports[name] = inside
        return self.ports[name]


def test_a_burst_of_expose_requests_gets_at_most_max_runtime_ports() -> None:
    sent: list[dict[str, Any]] = []

    class Session:
        on_request = None

        def send_control(self, msg: dict[str, Any]) -> None:
            sent.append(msg)

    async def burst() -> None:
        listeners = SlowListeners()
        exchange = HostExchange(
            build_exchange_policy(max_runtime_ports=4),
            listeners,  # type: ignore[arg-type]
            "/nonexistent",
            logging.getLogger("t"),
        )
        exchange.attach(Session())  # type: ignore[arg-type]
        for i in range(1500):
            exchange.handle({"op": "expose", "req": i, "port": 20000 + i % 700})
        for _ in range(10):
            await asyncio.sleep(0)
        assert len(listeners.ports) == 4

    asyncio.run(burst())
    ok = [m for m in sent if m["ok"]]
    assert len(ok) == 4 and len(sent) == 1500


def test_replies_echo_only_an_integer_request_id() -> None:
    sent: list[dict[str, Any]] = []

    class Session:
        on_request = None

        def send_control(self, msg: dict[str, Any]) -> None:
            sent.append(msg)

    exchange = HostExchange(
        build_exchange_policy(),
        SlowListeners(),  # type: ignore[arg-type]
        "/nonexistent",
        logging.getLogger("t"),
    )
    exchange.attach(Session())  # type: ignore[arg-type]
    exchange.handle({"op": "export_end", "req": "x" * 10000})
    exchange.handle({"op": "export_end", "req": 7})
    assert [m["req"] for m in sent] == [7]


def test_export_name_refusals_do_not_grow_with_the_name() -> None:
    with pytest.raises(PolicyError) as info:
        export_name("." + "x" * 100_000)
    assert len(str(info.value)) < 300


# -- the kernel's uid --------------------------------------------------------------------------

APART = Preflight(runtime="runsc", kernel_user_apart=True)
SHARED = Preflight(runtime="bwrap")


@pytest.mark.parametrize(
    ("facts", "hello", "preflight", "error"),
    [
        ({"uid": 0}, {"uid": 0}, APART, "runs as root"),
        ({"uid": 0}, {"uid": 1000}, SHARED, "runs as root"),
        ({"uid": 1000}, {"uid": 1000}, APART, "agent's own uid"),
        ({"uid": -1}, {"uid": 0}, APART, "did not report"),
        ({}, {"uid": 0}, APART, "did not report"),
        ({"uid": True}, {"uid": 0}, APART, "did not report"),
    ],
)
def test_check_kernel_refuses(
    facts: dict[str, Any], hello: dict[str, Any], preflight: Preflight, error: str
) -> None:
    with pytest.raises(SandboxError, match=error):
        check_kernel(facts, hello, preflight)


def test_check_kernel_accepts_the_two_shapes() -> None:
    check_kernel({"uid": 1000}, {"uid": 0}, APART)
    check_kernel({"uid": 1000}, {"uid": 1000}, SHARED)


def test_check_hello_wants_a_root_agent_only_where_the_backend_keeps_them_apart() -> None:
    hello = {"version": p.VERSION, "release": "4.4.0", "undumpable": True}
    check_hello({**hello, "uid": 0}, APART)
    with pytest.raises(SandboxError, match="not as the sandbox's root"):
        check_hello({**hello, "uid": 1000}, APART)
    check_hello({**hello, "uid": 1000}, SHARED)
    with pytest.raises(SandboxError, match="agent runs as root"):
        check_hello({**hello, "uid": 0}, SHARED)
    # Sharing a uid with the kernel, the agent must be undumpable (its pipe in /proc).
    with pytest.raises(SandboxError, match="undumpable"):
        check_hello({**hello, "uid": 1000, "undumpable": False}, SHARED)
    check_hello({**hello, "uid": 0, "undumpable": False}, APART)


# -- copy-in -----------------------------------------------------------------------------------


def test_copy_in_skips_the_export_folder(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a")
    (tmp_path / "sandbox-exports").mkdir()
    (tmp_path / "sandbox-exports" / "big.bin").write_bytes(b"b" * 5000)
    items = plan_copy_in((".",), str(tmp_path), 1000, exclude=str(tmp_path / "sandbox-exports"))
    dests = sorted(i.dest for i in items)
    assert dests == [tmp_path.name, f"{tmp_path.name}/data.csv"]
    # The folder named on its own is skipped too.
    assert (
        plan_copy_in(
            ("sandbox-exports",), str(tmp_path), 10, exclude=str(tmp_path / "sandbox-exports")
        )
        == []
    )


def test_copy_in_over_the_limit_names_the_file_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes(b"a" * 600)
    (tmp_path / "b.csv").write_bytes(b"b" * 600)
    with pytest.raises(PolicyError) as info:
        plan_copy_in(("a.csv", "b.csv"), str(tmp_path), 1000)
    message = str(info.value)
    assert str(tmp_path / "b.csv") in message and "copy_in_limit" in message
    assert "raise copy_in_limit" in message
