"""The stdin bootstrap: stage 1 reads stage 2, stage 2 installs the agent's modules
and runs it. Exercised with the host's Python in a subprocess (no container)."""

from __future__ import annotations

import ast
import base64
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox_kernel import bundle
from sandbox_kernel.bundle import AGENT_MODULES, agent_payload, bootstrap_command
from sandbox_kernel.inside import protocol as p

TIMEOUT = 20.0


def stage1_argv() -> list[str]:
    return [sys.executable, *bootstrap_command()[1:]]


class AgentProcess:
    """The agent bootstrapped over a pipe, spoken to in frames."""

    def __init__(self, extra: bytes = b"", env: dict[str, str] | None = None) -> None:
        # The agent's run folder (helper socket, modules) in a temporary folder, not /tmp.
        self.run_dir = tempfile.mkdtemp(prefix="sk-agent-run-")
        self.proc = subprocess.Popen(
            stage1_argv(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**(os.environ if env is None else env), "SANDBOX_KERNEL_RUN_DIR": self.run_dir},
        )
        self.decoder = p.FrameDecoder()
        self.frames: list[p.Frame] = []
        self.deadline = time.monotonic() + TIMEOUT
        self.send_raw(agent_payload())
        self.send(extra)

    def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, frames: bytes) -> None:
        """Frames as the Docker backend sends them: with the detach sequence escaped."""
        self.send_raw(p.escape_stdin(frames))

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def controls(self) -> list[dict[str, object]]:
        return [p.decode_control(f.payload) for f in self.frames if f.type == p.CONTROL]

    def read_until(self, done: Callable[[], bool]) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while not done():
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; frames so far: {self.frames!r}")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                if done():
                    return
                raise AssertionError(f"agent stdout closed; frames so far: {self.frames!r}")
            self.frames += self.decoder.feed(chunk)

    def read_to_end(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; frames so far: {self.frames!r}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                self.frames += self.decoder.feed(chunk)

    def wait(self) -> int:
        return self.proc.wait(timeout=max(0.1, self.deadline - time.monotonic()))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass


@pytest.fixture
def agent_process() -> object:
    procs: list[AgentProcess] = []

    def start(extra: bytes = b"", env: dict[str, str] | None = None) -> AgentProcess:
        proc = AgentProcess(extra, env)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        shutil.rmtree(proc.run_dir, ignore_errors=True)


# -- the pieces ---------------------------------------------------------------------------


def test_bootstrap_command_is_isolated_python_reading_stage2_from_stdin() -> None:
    cmd = bootstrap_command()
    assert cmd[:4] == ["python3", "-I", "-S", "-c"]
    assert len(cmd) == 5 and "os.read(0" in cmd[4]
    compile(cmd[4], "<stage1>", "exec")
    assert bootstrap_command("/usr/bin/python3.8")[0] == "/usr/bin/python3.8"


def test_payload_is_a_length_prefixed_stage2() -> None:
    payload = agent_payload(escaped_stdin=False)
    assert payload[:10].isdigit()
    assert int(payload[:10]) == len(payload) - 10
    code = payload[10:].decode("utf-8")
    tree = ast.parse(code)
    first = tree.body[0]
    assert isinstance(first, ast.Assign) and first.targets[0].id == "MODULES"  # type: ignore[attr-defined]
    modules = ast.literal_eval(first.value)
    assert [name for name, _ in modules] == list(AGENT_MODULES)
    for name, source in modules:
        compile(source, name, "exec")
    assert agent_payload(escaped_stdin=False) is agent_payload(escaped_stdin=False)  # cached


def test_shipped_modules_import_only_the_stdlib_and_earlier_modules() -> None:
    shipped: list[str] = []
    for name in AGENT_MODULES:
        source = bundle._module_source(name)
        package = name.rpartition(".")[0]
        for node in ast.walk(ast.parse(source)):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    mod = f"{base}.{node.module}" if node.module else base
                else:
                    mod = node.module or ""
                # ``from pkg import sub`` imports the submodule ``pkg.sub``.
                targets = [
                    f"{mod}.{a.name}" if f"{mod}.{a.name}" in AGENT_MODULES else mod
                    for a in node.names
                ]
            for target in targets:
                if target.startswith("sandbox_kernel"):
                    assert target in shipped, f"{name} imports {target}, not shipped before it"
                elif target != "__future__":
                    top = target.split(".")[0]
                    assert top in sys.stdlib_module_names, f"{name} imports non-stdlib {target}"
        shipped.append(name)


# -- stage 1 --------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [0, 5, 10, 11, -1])
def test_stdin_ending_early_exits_with_code_3(cut: int) -> None:
    payload = agent_payload(escaped_stdin=False)
    data = payload[:cut] if cut >= 0 else payload[: len(payload) - 1]
    result = subprocess.run(stage1_argv(), input=data, capture_output=True, timeout=TIMEOUT)
    assert result.returncode == 3, result.stderr
    assert result.stdout == b""


# -- the whole agent ------------------------------------------------------------------------


def test_agent_says_hello_and_exits_when_stdin_closes(
    agent_process: Callable[..., AgentProcess],
) -> None:
    agent = agent_process()
    agent.read_until(lambda: bool(agent.controls()))
    hello = agent.controls()[0]
    assert hello["op"] == "hello"
    assert hello["version"] == p.VERSION
    assert hello["uid"] == os.getuid()
    assert hello["pid"] == agent.proc.pid
    assert hello["release"] == os.uname().release
    assert hello["python"] == sys.version.split()[0]
    agent.close_stdin()
    agent.read_to_end()
    assert agent.wait() == 0
    last = agent.controls()[-1]
    assert last["op"] == "exited" and last["status"] == 0
    assert agent.decoder.buffered == 0


def test_frames_right_after_the_payload_are_not_swallowed(
    agent_process: Callable[..., AgentProcess],
) -> None:
    # Stage 1 reads unbuffered: a frame sent in the same write as the payload
    # still reaches the agent's pipe reader.
    agent = agent_process(extra=p.encode_control({"op": "shutdown"}))
    agent.read_to_end()
    assert agent.wait() == 0
    ops = [c["op"] for c in agent.controls()]
    assert ops == ["hello", "exited"]
    assert agent.controls()[-1]["why"] == "shutdown requested"


def test_protocol_error_from_host_ends_the_agent(
    agent_process: Callable[..., AgentProcess],
) -> None:
    agent = agent_process(extra=p.HEADER.pack(0x7F, 1, 0))
    agent.read_to_end()
    assert agent.wait() == 125
    controls = agent.controls()
    assert controls[0]["op"] == "hello"
    assert controls[1]["op"] == "error" and "protocol error" in str(controls[1]["message"])
    assert controls[-1]["op"] == "exited" and controls[-1]["status"] == 125


def test_agent_runs_a_kernel_and_reports_its_exit(
    agent_process: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    conn = tmp_path / "run" / "kernel.json"
    start = {
        "op": "start",
        "argv": [
            sys.executable,
            "-c",
            "import json, sys; c = json.load(open(sys.argv[1])); "
            "print('kernel up', c['shell_port'], flush=True); sys.exit(3)",
            str(conn),
        ],
        "env": {"HOME": str(home)},
        "cwd": str(home),
        "connection_file": str(conn),
        "connection": {"shell_port": 45001, "key": "k"},
        "exposed": {},
    }
    agent = agent_process(extra=p.encode_control(start))
    agent.read_until(lambda: any(c["op"] == "exited" for c in agent.controls()))
    ops = [c["op"] for c in agent.controls()]
    assert ops[:2] == ["hello", "started"] and ops[-1] == "exited"
    assert agent.controls()[-1]["status"] == 3
    console = b"".join(f.payload for f in agent.frames if f.type == p.DATA and f.stream == 0)
    assert console == b"kernel up 45001\n"
    assert json.loads(conn.read_text()) == start["connection"]
    assert (conn.stat().st_mode & 0o777) == 0o600
    agent.close_stdin()
    assert agent.wait() == 3


def test_agent_relays_a_stream_to_a_local_port(agent_process: Callable[..., AgentProcess]) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(TIMEOUT)
    port = server.getsockname()[1]
    received = bytearray()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                received.extend(chunk)
            conn.sendall(b"pong:" + bytes(received))
            conn.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        frames = p.encode_open(1, port) + p.encode(p.DATA, 1, b"ping") + p.encode(p.EOF, 1)
        agent = agent_process(extra=frames)

        def eof_from_agent() -> bool:
            return any(f.type == p.EOF and f.stream == 1 for f in agent.frames)

        agent.read_until(eof_from_agent)
        thread.join(TIMEOUT)
        assert bytes(received) == b"ping"
        reply = b"".join(f.payload for f in agent.frames if f.type == p.DATA and f.stream == 1)
        assert reply == b"pong:ping"
        assert not any(f.type == p.RESET for f in agent.frames)
        agent.close_stdin()
        agent.read_to_end()
        assert agent.wait() == 0
    finally:
        server.close()


def test_open_to_a_closed_port_is_reset(agent_process: Callable[..., AgentProcess]) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    agent = agent_process(extra=p.encode_open(1, port))
    agent.read_until(lambda: any(f.type == p.RESET for f in agent.frames))
    reset = next(f for f in agent.frames if f.type == p.RESET)
    assert reset.stream == 1 and b"connect to port" in reset.payload
    agent.close_stdin()
    agent.read_to_end()
    assert agent.wait() == 0


def test_agent_writes_copied_in_files_and_refuses_climbing_out(
    agent_process: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()

    def put(path: str, data: bytes, req: int) -> bytes:
        return b"".join(
            p.encode_control(m)
            for m in (
                {"op": "put_start", "home": str(home)},
                {"op": "put_dir", "path": "d"},
                {"op": "put_begin", "path": path, "mode": 0o4755},
                {"op": "put_data", "data": base64.b64encode(data).decode()},
                {"op": "put_end"},
                {"op": "put_done", "req": req},
            )
        )

    agent = agent_process(extra=put("d/x.sh", b"echo hi\n", 1) + put("../evil", b"no", 2))
    agent.read_until(lambda: sum(c["op"] == "reply" for c in agent.controls()) == 2)
    replies = [c for c in agent.controls() if c["op"] == "reply"]
    assert replies[0] == {"op": "reply", "req": 1, "ok": True, "files": 1, "bytes": 8}
    assert replies[1]["req"] == 2 and replies[1]["ok"] is False
    assert "bad path" in str(replies[1]["error"])
    assert (home / "d" / "x.sh").read_bytes() == b"echo hi\n"
    assert (home / "d" / "x.sh").stat().st_mode & 0o7777 == 0o755  # never setuid
    assert not (tmp_path / "evil").exists()


def test_kernel_code_asks_the_host_through_the_sandboxed_module(
    agent_process: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    conn = tmp_path / "kernel.json"
    start = {
        "op": "start",
        "argv": [
            sys.executable,
            "-c",
            "import sandboxed; print(sandboxed.expose(8050), flush=True)",
        ],
        "env": {"HOME": str(tmp_path)},
        "cwd": str(tmp_path),
        "connection_file": str(conn),
        "connection": {"shell_port": 45001},
        "exposed": {},
    }
    agent = agent_process(extra=p.encode_control(start))
    agent.read_until(lambda: any(c["op"] == "expose" for c in agent.controls()))
    request = next(c for c in agent.controls() if c["op"] == "expose")
    assert request["port"] == 8050
    agent.send(
        p.encode_control({"op": "reply", "req": request["req"], "ok": True, "host_port": 40001})
    )
    agent.read_until(lambda: any(c["op"] == "exited" for c in agent.controls()))
    console = b"".join(f.payload for f in agent.frames if f.type == p.DATA and f.stream == 0)
    assert console == b"http://127.0.0.1:40001/\n"
