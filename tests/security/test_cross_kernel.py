"""Kernels are isolated from each other and from the host's loopback.

Two sandboxed kernels (A and B) of the same server: B cannot reach A's loopback
servers, find A's connection key, see A's processes or files. The host cannot reach
servers a kernel starts inside, and a kernel exposes exactly its five relayed ZMQ ports.
Each check has a control proving it could fail (A reaches its own server, A finds its
own key, A sees its own process...).
"""

from __future__ import annotations

import os
import random
import socket
import uuid
from collections.abc import Callable

import pytest

from sandbox_kernel.inside.protocol import INSIDE_PORTS
from tests.helpers import Kernel, listening_ports, socket_inodes, tcp_listeners

LOOPBACK_HEX = "0100007F"
ZMQ_PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")

# Searches the readable filesystem and /proc for a secret given hex-encoded (so the
# cell's own text, kept in IPython's history, does not contain it).
FIND_SECRET = """
import json, os
needle = bytes.fromhex({hex!r})
hits, files = [], 0
for top in ("/tmp", "/home", "/dev/shm"):
    for dirpath, dirnames, filenames in os.walk(top):
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                with open(path, "rb") as f:
                    files += 1
                    if needle in f.read(16 << 20):
                        hits.append(path)
            except OSError:
                pass
for pid in (p for p in os.listdir("/proc") if p.isdigit()):
    for what in ("environ", "cmdline"):
        try:
            with open("/proc/%s/%s" % (pid, what), "rb") as f:
                if needle in f.read():
                    hits.append("/proc/%s/%s" % (pid, what))
        except OSError:
            pass
print(json.dumps({{"hits": hits, "files": files}}))
"""

CMDLINES = """
import json, os
out = {}
for pid in (p for p in os.listdir("/proc") if p.isdigit()):
    try:
        with open("/proc/%s/cmdline" % pid, "rb") as f:
            out[pid] = f.read().replace(b"\\0", b" ").decode("utf-8", "replace")
    except OSError:
        pass
print(json.dumps(out))
"""


def _connect_inside(port: int) -> str:
    return (
        "import socket, json\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=3).close(); r = 'connected'\n"
        "except OSError as e:\n"
        "    r = 'refused' if isinstance(e, ConnectionRefusedError) else 'error: %r' % (e,)\n"
        "print(json.dumps(r))"
    )


def _serve_inside(port: int) -> str:
    return (
        "import socket, threading\n"
        "_sk_srv = socket.socket(); _sk_srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"_sk_srv.bind(('127.0.0.1', {port})); _sk_srv.listen(8)\n"
        "def _sk_accept():\n"
        "    while True:\n"
        "        try:\n"
        "            c, _ = _sk_srv.accept()\n"
        "        except OSError:\n"
        "            return\n"
        "        c.sendall(b'inside'); c.close()\n"
        "threading.Thread(target=_sk_accept, daemon=True).start()\n"
    )


STOP_SERVER = (
    "import socket\n"
    "try:\n"
    "    _sk_srv.shutdown(socket.SHUT_RDWR)\n"
    "except OSError:\n"
    "    pass\n"
    "_sk_srv.close()\n"
)


def _free_host_port() -> int:
    """A port nothing on the host listens on (checked by a refused connection)."""
    taken = set(listening_ports()) | set(INSIDE_PORTS.values())
    for _ in range(200):
        port = random.randint(20000, 30000)
        if port in taken:
            continue
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise AssertionError("no free port found on the host")


def _host_connect(port: int) -> str:
    with socket.socket() as s:
        s.settimeout(3)
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return "refused"
        except OSError as exc:
            return f"error: {exc!r}"
        return "connected"


# Processes that could publish a sandbox's port on the host: this server process (the
# relay) and Docker's own (docker-proxy publishes ports; runsc, containerd, dockerd).
DOCKER_COMMS = ("docker-proxy", "dockerd", "containerd", "containerd-shim", "runsc")


def _listeners() -> set[tuple[str, int, int, str]]:
    """(local address hex, port, owner pid, owner comm) of every TCP listener on the host.

    Owners are found through /proc/<pid>/fd, so listeners of unrelated processes (another
    test run on this machine) can be told apart from ours and Docker's.
    """
    owners: dict[str, tuple[int, str]] = {}
    for proc in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{proc}/comm") as f:
                comm = f.read().strip()
            inodes = socket_inodes(proc)
        except OSError:
            continue
        owners.update(dict.fromkeys(inodes, (int(proc), comm)))
    return {(addr, port, *owners.get(inode, (0, "?"))) for addr, port, inode in tcp_listeners()}


def _ours_or_dockers(listeners: set[tuple[str, int, int, str]]) -> set[tuple[str, int, int, str]]:
    return {
        entry for entry in listeners if entry[2] == os.getpid() or entry[3].startswith(DOCKER_COMMS)
    }


# --------------------------------------------------------------------------------------
# Two kernels


@pytest.fixture
def two_kernels(start_kernel: Callable[..., Kernel]) -> tuple[Kernel, Kernel]:
    return start_kernel(), start_kernel()


def test_kernel_cannot_reach_another_kernels_loopback(two_kernels: tuple[Kernel, Kernel]) -> None:
    a, b = two_kernels
    port = 47000 + random.randint(0, 999)
    a.run(_serve_inside(port))
    try:
        assert a.value(_connect_inside(port)) == "connected", "control: A reaches its own server"
        assert b.value(_connect_inside(port)) == "refused"
    finally:
        a.run(STOP_SERVER)


def test_kernel_cannot_find_another_kernels_key(two_kernels: tuple[Kernel, Kernel]) -> None:
    a, b = two_kernels
    key_a, key_b = a.km.session.key, b.km.session.key
    assert key_a and key_b and key_a != key_b, "each kernel has its own key"
    code = FIND_SECRET.format(hex=key_a.hex())
    seen_by_a = a.value(code)
    assert seen_by_a["hits"], "control: A finds its own key (in its connection file)"
    seen_by_b = b.value(code)
    assert seen_by_b["files"] > 0, "B searched no file at all"
    assert seen_by_b["hits"] == [], f"B found A's key in {seen_by_b['hits']}"


def test_kernel_cannot_see_another_kernels_processes(two_kernels: tuple[Kernel, Kernel]) -> None:
    a, b = two_kernels
    marker = f"sk-marker-{uuid.uuid4().hex}"
    a.run(
        "import subprocess, sys\n"
        "_sk_sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', "
        f"{marker!r}])\n"
    )
    try:
        assert any(marker in cmd for cmd in a.value(CMDLINES).values()), "control: A sees it"
        seen = b.value(CMDLINES)
        assert seen, "B sees no process at all"
        assert not any(marker in cmd for cmd in seen.values()), seen
    finally:
        a.run("_sk_sleeper.kill(); _sk_sleeper.wait()")


def test_kernel_cannot_see_another_kernels_files(two_kernels: tuple[Kernel, Kernel]) -> None:
    a, b = two_kernels
    name = f"sk-file-{uuid.uuid4().hex}"
    paths = [f"/tmp/{name}", f"/home/sandbox/{name}", f"/dev/shm/{name}"]
    code = f"import json, os\nprint(json.dumps([os.path.exists(p) for p in {paths!r}]))"
    a.run(f"for p in {paths!r}:\n    open(p, 'w').write('from A')\n")
    assert a.value(code) == [True, True, True], "control: A sees its own files"
    assert b.value(code) == [False, False, False]


# --------------------------------------------------------------------------------------
# Host <-> kernel


def test_host_cannot_reach_a_server_inside(shared_kernel: Kernel) -> None:
    port = _free_host_port()
    assert _host_connect(port) == "refused"
    shared_kernel.run(_serve_inside(port))
    try:
        assert shared_kernel.value(_connect_inside(port)) == "connected", "control: live inside"
        assert port not in listening_ports()
        assert _host_connect(port) == "refused"
    finally:
        shared_kernel.run(STOP_SERVER)


def test_only_the_five_relayed_ports_are_exposed(start_kernel: Callable[..., Kernel]) -> None:
    before = _ours_or_dockers(_listeners())
    kernel = start_kernel()
    after = _ours_or_dockers(_listeners())
    info: dict[str, object] = dict(kernel.km.get_connection_info())
    relayed = {int(str(info[name])) for name in ZMQ_PORTS}
    assert len(relayed) == 5, info

    new = after - before
    assert {port for _, port, _, _ in new} == relayed, f"new listeners: {sorted(new)}"
    assert {(addr, pid) for addr, _, pid, _ in new} == {(LOOPBACK_HEX, os.getpid())}, (
        f"relayed ports must be on 127.0.0.1, in the server process only: {sorted(new)}"
    )
    # The kernel's own ports inside the sandbox are not published on the host.
    inside = {p for p in INSIDE_PORTS.values() if p not in relayed}
    assert inside, INSIDE_PORTS
    published = {entry for entry in after if entry[1] in inside}
    assert not published, f"inside ports listening on the host: {sorted(published)}"
    # Nor forwarded without a listener (e.g. by NAT): where nothing on the host listens
    # (another test run's relay might, by chance), a connection is refused.
    unheard = inside - {port for _, port, _, _ in _listeners()}
    assert {p: _host_connect(p) for p in unheard} == dict.fromkeys(unheard, "refused")
    # Control: the relayed ports are really live.
    assert {_host_connect(p) for p in relayed} == {"connected"}


@pytest.mark.parametrize("who", ["nobody", "owner"])
def test_another_local_user_gets_nothing_from_the_kernel_ports(
    start_kernel: Callable[..., Kernel], who: str
) -> None:
    """Another user of the host (nobody) connecting to a kernel's 127.0.0.1 ports: its
    requests (signed with a key of its own) go unanswered, as for any Jupyter kernel
    (HMAC), and it reads none of the kernel's output, which ZeroMQ's PUB socket would send
    to any subscriber: the host ports close other users' connections. The owner's uid is
    the control: it does receive the output (its requests still fail the HMAC check)."""
    import sys

    from tests.helpers import ForeignClient

    kernel = start_kernel()
    info = kernel.km.get_connection_info()
    ports = {name: int(str(dict(info)[name])) for name in ZMQ_PORTS}
    as_user = (
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if who == "nobody" else []
    )
    intruder = ForeignClient([*as_user, sys.executable], ports, cwd="/")
    assert intruder.replies() == {"shell_port": 0, "control_port": 0}, "answered without the key"
    assert kernel.value("print(6 * 7)") == 42
    seen = intruder.iopub()
    if who == "nobody":
        assert seen == [], f"another user read the kernel's output: {seen[:2]}"
    else:
        assert any('"text": "42\\n"' in m for m in seen), seen  # the check can fail
    marked = "import json, os; print(json.dumps(os.path.exists('/tmp/INTRUDER-WAS-HERE')))"
    assert kernel.value(marked) is False
