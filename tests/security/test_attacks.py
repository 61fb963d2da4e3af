"""Every attack of :data:`sandbox_kernel.security.ATTACKS`, run inside a real sandboxed kernel.

Self-contained attacks run as they are. Attacks that need host knowledge get it from a
provider below, which also sets up what they aim at (marker files, listeners, the LAN
host) and proves the target is live: the rendered attack is first run ON THE HOST, where
it must find its way open (``blocked: false``), so a pass inside the sandbox cannot be
vacuous. Host-side runs only read files and talk to loopback, this machine's own
addresses and the test's own network namespace.
"""

from __future__ import annotations

import ast
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sandbox_kernel.image.recipe import DEFAULT_IMAGE
from sandbox_kernel.policy import build_policy
from sandbox_kernel.security import ATTACKS, PROTECTS, Attack, attacks, by_id, render
from sandbox_kernel.security.expectations import GAP_DETAILS, GAPS, expected_blocked
from tests.helpers import REPO, Kernel, gvisor_release
from tests.security.conftest import AcceptCounter, LanHost, Listener, host_addresses


@dataclass
class Setup:
    params: dict[str, Any] = field(default_factory=dict)
    kernel: Kernel | None = None  # None: the module's shared kernel
    control: bool = True  # run the rendered code on the host first; it must not be blocked
    after_control: Callable[[], None] = lambda: None


Provider = Callable[[pytest.FixtureRequest], AbstractContextManager[Setup]]
PROVIDERS: dict[str, Provider] = {}


def provides(attack_id: str) -> Callable[[Callable[..., Iterator[Setup]]], Provider]:
    def register(fn: Callable[..., Iterator[Setup]]) -> Provider:
        assert attack_id not in PROVIDERS, attack_id
        provider = contextmanager(fn)
        PROVIDERS[attack_id] = provider
        return provider

    return register


def settled(count: Callable[[], int], expected: int, timeout: float = 3.0) -> int:
    """``count()`` once it reaches ``expected`` or ``timeout`` passes (accept threads lag)."""
    deadline = time.monotonic() + timeout
    while count() != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # and a moment more, so a late extra connection is counted too
    return count()


def run_on_host(code: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"host control run failed: {proc.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------------------
# Providers


@provides("fs-host-markers")
def _markers(request: pytest.FixtureRequest) -> Iterator[Setup]:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    tag = uuid.uuid4().hex
    dirs = [Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"), Path.home(), REPO, tmp_path]
    markers = [d / f"sk-marker-{tag}" for d in dirs if d.is_dir()]
    try:
        for marker in markers:
            marker.write_text("host secret")
        known = [
            REPO / "pyproject.toml",
            Path("/var/lib/docker"),
            Path("/etc/docker"),
            Path("/var/run/docker.sock"),
            Path(sys.executable),
        ]
        paths = [str(p) for p in markers + [p for p in known if p.exists()]]
        yield Setup({"paths": paths})
    finally:
        for marker in markers:
            marker.unlink(missing_ok=True)


@provides("fs-tmpfs-caps")
def _tmpfs_caps(request: pytest.FixtureRequest) -> Iterator[Setup]:
    policy = build_policy(image=DEFAULT_IMAGE)  # what the default kernelspec asks for
    yield Setup({"tmp_bytes": policy.tmp_bytes, "home_bytes": policy.home_bytes}, control=False)


@provides("net-lan-host")
def _lan(request: pytest.FixtureRequest) -> Iterator[Setup]:
    lan: LanHost = request.getfixturevalue("lan_host")
    yield Setup({"addr": lan.addr, "addr6": lan.addr6, "port": lan.port})


@provides("net-dns-query")
def _dns(request: pytest.FixtureRequest) -> Iterator[Setup]:
    lan: LanHost = request.getfixturevalue("lan_host")
    yield Setup({"server": lan.addr, "qname": f"sk-{uuid.uuid4().hex[:8]}.test"})


@provides("net-icmp-echo")
def _icmp(request: pytest.FixtureRequest) -> Iterator[Setup]:
    lan: LanHost = request.getfixturevalue("lan_host")
    yield Setup({"addr": lan.addr, "addr6": lan.addr6})


def _listening(
    addrs: list[str], targets: int, params: Callable[[Listener], dict[str, Any]]
) -> Iterator[Setup]:
    listener = Listener(addrs)
    try:

        def accepted() -> int:
            return listener.accepted

        def after_control() -> None:
            got = settled(accepted, targets)
            assert got == targets, f"control: {targets} host connections expected, {got} arrived"

        yield Setup(params(listener), after_control=after_control)
        assert settled(accepted, targets) == targets, (
            "a connection from the sandbox reached the host"
        )
    finally:
        listener.close()


@provides("net-host-addresses")
def _host_addrs(request: pytest.FixtureRequest) -> Iterator[Setup]:
    addrs = host_addresses()
    assert addrs, "this machine has no global address to test"
    yield from _listening(
        ["0.0.0.0", "::"], len(addrs), lambda lst: {"addrs": addrs, "port": lst.port}
    )


@provides("net-host-loopback")
def _host_loopback(request: pytest.FixtureRequest) -> Iterator[Setup]:
    # three targets: 127.0.0.1, ::1 and ::ffff:127.0.0.1 (which lands on the IPv4 listener)
    yield from _listening(["127.0.0.1", "::1"], 3, lambda lst: {"port": lst.port})


@provides("net-userns-egress")
def _userns_egress(request: pytest.FixtureRequest) -> Iterator[Setup]:
    """The LAN host and host loopback listeners; the control (a clone3 user namespace on
    the host, sharing its network) reaches both loopback listeners once each."""
    lan: LanHost = request.getfixturevalue("lan_host")
    yield from _listening(
        ["127.0.0.1", "::1"],
        2,
        lambda lst: {
            "addr": lan.addr,
            "addr6": lan.addr6,
            "port": lan.port,
            "loopback_port": lst.port,
        },
    )


@provides("net-abstract-unix")
def _abstract(request: pytest.FixtureRequest) -> Iterator[Setup]:
    server: tuple[str, AcceptCounter] = request.getfixturevalue("abstract_server")
    name, counter = server

    def accepted() -> int:
        return counter.accepted

    def after_control() -> None:
        assert settled(accepted, 1) == 1, "control: the host could not connect to its own socket"

    yield Setup({"name": name}, after_control=after_control)
    assert settled(accepted, 1) == 1, "the sandbox connected to the host's abstract socket"


@provides("info-hostname")
def _hostname(request: pytest.FixtureRequest) -> Iterator[Setup]:
    yield Setup({"host_hostname": socket.gethostname()})


@provides("info-host-resolver")
def _resolvers(request: pytest.FixtureRequest) -> Iterator[Setup]:
    words = Path("/etc/resolv.conf").read_text().split()
    servers = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "nameserver"]
    assert servers, "the host has no nameserver in /etc/resolv.conf: nothing to look for"
    yield Setup({"host_resolvers": servers})


@provides("info-kernel-release")
def _release(request: pytest.FixtureRequest) -> Iterator[Setup]:
    yield Setup({"host_release": os.uname().release})


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


@provides("info-host-identifiers")
def _identifiers(request: pytest.FixtureRequest) -> Iterator[Setup]:
    yield Setup(
        {
            "host_boot_id": _read("/proc/sys/kernel/random/boot_id"),
            "host_machine_id": _read("/etc/machine-id"),
            "host_cmdline": _read("/proc/cmdline"),
        }
    )


@provides("info-server-env")
def _server_env(request: pytest.FixtureRequest) -> Iterator[Setup]:
    token = f"planted-{uuid.uuid4().hex}"
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    for name in ("JUPYTERHUB_API_TOKEN", "SK_PLAIN_SETTING", "JPY_API_TOKEN", "DOCKER_AUTH"):
        monkeypatch.setenv(name, token)
    start_kernel: Callable[..., Kernel] = request.getfixturevalue("start_kernel")
    yield Setup({"token_hex": token.encode().hex()}, kernel=start_kernel())


def _host_pids() -> list[list[object]]:
    """[pid, argv[0]] of this test process and of the container daemons on the host."""
    wanted = {"dockerd", "containerd", "runsc-sandbox"}
    pids = [os.getpid()]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            comm = _read(str(entry / "comm"))
            if comm in wanted:
                wanted.discard(comm)
                pids.append(int(entry.name))
    out: list[list[object]] = []
    for pid in pids:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        out.append([pid, argv0])
    return out


@provides("info-host-pids")
def _pids(request: pytest.FixtureRequest) -> Iterator[Setup]:
    pids = _host_pids()
    assert len(pids) >= 2, f"expected the test runner and dockerd on the host: {pids}"
    yield Setup({"pids": pids})


@provides("info-host-sockets")
def _sockets(request: pytest.FixtureRequest) -> Iterator[Setup]:
    name, _counter = request.getfixturevalue("abstract_server")
    path = f"/tmp/sk-sock-{uuid.uuid4().hex[:12]}"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(path)
    unix.listen(1)
    listener = Listener(["0.0.0.0"])
    try:
        yield Setup({"port": listener.port, "unix_names": ["@" + name, path]})
    finally:
        listener.close()
        unix.close()
        os.unlink(path)


@contextmanager
def _self_contained(request: pytest.FixtureRequest) -> Iterator[Setup]:
    yield Setup(control=False)


# --------------------------------------------------------------------------------------
# The attacks


def attempt(attack: Attack, request: pytest.FixtureRequest, kernel: Kernel) -> dict[str, Any]:
    """Run ``attack`` in ``kernel`` (or the provider's own kernel) after its host-side
    control proved the target is there; return the verdict from inside."""
    provider = PROVIDERS.get(attack.id, _self_contained)
    with provider(request) as setup:
        code = render(attack, **setup.params)
        if setup.control:
            control = run_on_host(code)
            assert control["blocked"] is False, (
                f"control: from the host, {attack.id} should find its target, but: "
                f"{control['detail']}"
            )
            setup.after_control()
        content, text = (setup.kernel or kernel).run(code, timeout=180)
        assert content["status"] == "ok", f"{attack.id} crashed inside the sandbox:\n{text}"
        result: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    assert set(result) == {"blocked", "detail"}, result
    return result


@pytest.mark.docker
@pytest.mark.parametrize("attack", ATTACKS, ids=[a.id for a in ATTACKS])
def test_attack(attack: Attack, request: pytest.FixtureRequest, shared_kernel: Kernel) -> None:
    """Blocked, unless GAPS["docker"] documents it as a gap of the runsc release the kernel
    runs on (TEST_RUNTIME's binary): then it must succeed."""
    result = attempt(attack, request, shared_kernel)
    release = gvisor_release("docker")
    if expected_blocked("docker", attack.id, release):
        assert result["blocked"] is True, (
            f"ISOLATION GAP ({attack.protects}) {attack.id}: {attack.title}. "
            f"Observed inside the sandbox: {result['detail']}"
        )
    else:
        assert result["blocked"] is False, (
            f"the default backend (runsc {release}) now blocks {attack.id}, documented as a "
            f"gap ({GAPS['docker'][attack.id]}): update sandbox_kernel/security/expectations.py "
            f"and docs/security.md. Observed: {result['detail']}"
        )
        check_gap_detail("docker", attack.id, result["detail"])


def check_gap_detail(backend: str, attack_id: str, detail: str) -> None:
    """A gap whose look GAP_DETAILS pins must look exactly so: a further weakening behind it
    (e.g. the agent's memory readable, besides its maps) fails the test."""
    pattern = GAP_DETAILS.get(backend, {}).get(attack_id)
    if pattern is not None:
        assert re.fullmatch(pattern, detail), (
            f"backend {backend}: {attack_id} sees more (or other) than its documented gap "
            f"({GAPS[backend][attack_id]}). Observed: {detail}"
        )


# The attacks whose attempts run in a clone3() user namespace, and what they must manage
# where the privilege is real: root in namespaces of its own on the host's kernel.
_PRIVILEGED_CONTROL = {
    "priv-userns-confined": ("mount': 'OK", "mknod': 'OK", "chroot': 'OK", "packet socket': 'OK",
                             "raw IPv4 socket': 'OK", "raw IPv6 socket': 'OK"),
    "net-userns-address": ("RTM_NEWADDR 192.168.213.250': 'ADDED", "SIOCSIFADDR lo:sk': 'ADDED",
                           "SIOCADDRT': 'ADDED", "RTM_NEWROUTE fd5a:213:a::': 'ADDED"),
    "net-userns-tun": ("TUNSETIFF via /dev/net/tun': \"CREATED", "raw TUNSETIFF via /tmp"),
}  # fmt: skip

# Runs an attempt as the caller (no new user namespace) instead of in a clone3() child.
_AS_CALLER = """
def _in_userns(attempt, flags=0):
    import subprocess, sys
    runner = "import json\\n" + _USERNS_NET + "\\nres = {}\\n" + attempt + "\\nprint(json.dumps(res))"
    r = subprocess.run([sys.executable, "-I", "-S", "-c", runner], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return _json.loads(r.stdout.strip().splitlines()[-1])
"""


def _as_caller(code: str) -> str:
    """``code`` with _AS_CALLER right after the prelude's ``_in_userns``, which it replaces."""
    defs = [n for n in ast.parse(code).body if getattr(n, "name", None) == "_in_userns"]
    assert len(defs) == 1 and defs[0].end_lineno, "the attack does not use programs/_userns.py"
    lines = code.splitlines(keepends=True)
    return "".join(lines[: defs[0].end_lineno]) + _AS_CALLER + "".join(lines[defs[0].end_lineno :])


@pytest.mark.parametrize("attack_id", sorted(_PRIVILEGED_CONTROL))
def test_userns_attempts_work_where_the_privilege_is_real(attack_id: str) -> None:
    """Control for the self-contained user-namespace attacks: run by root in new network
    and mount namespaces on the host (no sandbox), every attempt succeeds, so "refused"
    inside a sandbox means refused, never a malformed request."""
    assert os.geteuid() == 0, "run the security tests as root (they create namespaces)"
    code = _as_caller(by_id(attack_id).code)
    proc = subprocess.run(
        [*("unshare", "--net", "--mount", "--propagation", "private", "sh", "-c"),
         'ip link set lo up && exec "$0" -I -c "$1"', sys.executable, code],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["blocked"] is False, result["detail"]
    for expected in _PRIVILEGED_CONTROL[attack_id]:
        assert expected in result["detail"], (expected, result["detail"])


@pytest.mark.docker
def test_tmpfs_caps_follow_the_kernelspec(
    start_kernel: Callable[..., Kernel], shared_kernel: Kernel
) -> None:
    """The size caps are the configured ones: 64m in the small kernelspec."""
    attack, cap = by_id("fs-tmpfs-caps"), 64 * 2**20
    code = render(attack, tmp_bytes=cap, home_bytes=cap)
    # Control: the default kernel's mounts are bigger, so the check can fail.
    assert shared_kernel.value(code)["blocked"] is False
    small = start_kernel("sandbox-small")
    result = small.value(code)
    assert result["blocked"] is True, result["detail"]


# --------------------------------------------------------------------------------------
# The catalogue itself (no Docker)


def _needs_read(code: str) -> set[str]:
    """The names a program reads as ``NEEDS["name"]``; any other use of NEEDS fails."""
    names: set[str] = set()
    other_uses = 0
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Name) and node.id == "NEEDS" and isinstance(node.ctx, ast.Load):
            other_uses += 1
        if isinstance(node, ast.Subscript) and getattr(node.value, "id", None) == "NEEDS":
            key = node.slice.value if isinstance(node.slice, ast.Constant) else None
            assert isinstance(key, str), f"NEEDS read with a key that is not a name: {node}"
            names.add(key)
            other_uses -= 1
    assert other_uses == 0, "NEEDS is used other than as NEEDS['name']"
    return names


_MARKS = re.compile(r"#\s*(inlined|embedded|provided|filled by render\(\))\s*$", re.MULTILINE)


def test_catalogue_is_well_formed() -> None:
    ids = [a.id for a in ATTACKS]
    assert len(ids) == len(set(ids)), "duplicate attack ids"
    assert {a.protects for a in ATTACKS} == set(PROTECTS)
    for attack in ATTACKS:
        assert _needs_read(attack.code) == set(attack.needs), f"{attack.id}: NEEDS read != needs"
        rendered = render(attack, **{n: "x" for n in attack.needs})
        tree = ast.parse(compile(rendered, attack.id, "exec", ast.PyCF_ONLY_AST))
        assert "_report(" in rendered
        # Standalone: nothing left to resolve, nothing of sandbox_kernel imported.
        assert not _MARKS.search(rendered), (
            f"{attack.id}: a mark is left: {_MARKS.search(rendered)}"
        )
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{attack.id}: a relative import is left"
                assert not (node.module or "").startswith("sandbox_kernel"), attack.id
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("sandbox_kernel") for a in node.names), attack.id
    needing = {a.id for a in ATTACKS if a.needs}
    assert needing == set(PROVIDERS), "every attack with needs has a provider, and only those"


def _marked(path: str) -> list[tuple[str, ast.stmt]]:
    """(mark, statement) for each marked top-level statement of programs/<path>."""
    text = (attacks.PROGRAMS / path).read_text()
    lines = text.splitlines()
    found = []
    for node in ast.parse(text).body:
        mark = _MARKS.search(lines[node.lineno - 1])
        if mark:
            found.append((mark.group(1), node))
    assert len(found) == len(_MARKS.findall(text)), f"{path}: a mark off a top-level statement"
    return found


def _top_level_names(path: str) -> set[str]:
    names: set[str] = set()
    for node in ast.parse((attacks.PROGRAMS / path).read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def test_every_program_file_is_in_the_table_and_every_attack_has_one() -> None:
    """One file per attack, named by its id; every prelude and child program is used by
    some attack, and the names a marked import takes are defined where it points."""
    folder = attacks.PROGRAMS
    top = {p.name for p in folder.iterdir() if p.name.endswith(".py")}
    children = {
        "children/" + p.name for p in (folder / "children").iterdir() if p.name.endswith(".py")
    }
    assert {p for p in top if not p.startswith("_")} == {
        attacks.program_file(a.id) for a in ATTACKS
    }
    used: set[str] = set()
    todo = [attacks.program_file(a.id) for a in ATTACKS]
    while todo:
        path = todo.pop()
        for mark, node in _marked(path):
            if mark not in ("inlined", "embedded", "provided") or not isinstance(
                node, ast.ImportFrom
            ):
                continue
            assert node.level == 1 and node.module, (path, ast.unparse(node))
            base = "/".join(filter(None, [path.rpartition("/")[0], *node.module.split(".")]))
            if mark == "embedded":
                targets = [f"{base}/{a.name}.py" for a in node.names]
            else:
                targets = [base + ".py"]
                missing = {a.name for a in node.names} - _top_level_names(targets[0])
                assert not missing, f"{path} takes {missing} from {targets[0]}, which lacks them"
            for target in targets:
                if target not in used:
                    used.add(target)
                    todo.append(target)
    assert used == {p for p in top if p.startswith("_")} | children, "unused or missing programs"
    for child in children:  # run as programs of their own: each must compile alone
        compile(attacks.assemble(child, top=False), child, "exec")


def test_assemble_resolves_marks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "children").mkdir()
    (tmp_path / "_a.py").write_text("import os as _os\n\n\ndef _f():\n    return _os.sep\n")
    (tmp_path / "_b.py").write_text("from ._a import _f  # inlined\n\n_g = _f\n")
    (tmp_path / "children" / "c.py").write_text('x = 0  # provided\nprint(x, "\\\\")\n')
    (tmp_path / "good.py").write_text(
        "from ._a import _f  # inlined\n"
        "from ._b import _g  # inlined\n"
        "from .children import c as CHILD  # embedded\n\n"
        f"{attacks.NEEDS_LINE}\n"
        'print(_g(), CHILD, NEEDS["n"])\n'
    )
    monkeypatch.setattr(attacks, "PROGRAMS", tmp_path)
    code = attacks.assemble("good.py")
    assert code.count("def _f():") == 1, "a prelude is inlined once"
    assert "# inlined" not in code and "# embedded" not in code and "x = 0" not in code
    namespace: dict[str, Any] = {}
    exec(code.replace(attacks.NEEDS_LINE, "NEEDS = {'n': 1}"), namespace)
    assert namespace["CHILD"] == 'print(x, "\\\\")\n'
    bad = {
        "x = 1  # inlined\n": "marks a 'from .module import",
        "from .children import c  # embedded\n": "one program 'as NAME'",
        "def f():\n    from ._a import _f  # inlined\n": "first line of a top-level statement",
        "if True:\n    NEEDS = {}  # filled by render()\n": "first line of a top-level statement",
        "NEEDS = {}   # filled by render()\n": "exactly",
        "from .children import bad as B  # embedded\n": "only an attack's program",
    }
    (tmp_path / "children" / "bad.py").write_text(attacks.NEEDS_LINE + "\n")
    for text, why in bad.items():
        (tmp_path / "bad.py").write_text(text)
        with pytest.raises(ValueError, match=re.escape(why)):
            attacks.assemble("bad.py")


def test_render_fills_only_the_needs_line() -> None:
    code = f"x = {{'k': 1}}\n{attacks.NEEDS_LINE}\ny = {{'k': NEEDS['c']}}\nprint(f'{{x}}')\n"
    attack = Attack("t", "network", "t", code, ("a", "c"))
    rendered = render(attack, a="it's", c=[1, {"n": None}])
    assert rendered == (
        "x = {'k': 1}\nNEEDS = {'a': \"it's\", 'c': [1, {'n': None}]}\n"
        "y = {'k': NEEDS['c']}\nprint(f'{x}')\n"
    )
    namespace: dict[str, Any] = {}
    exec(rendered.replace("print(", "str("), namespace)
    assert namespace["NEEDS"] == {"a": "it's", "c": [1, {"n": None}]}
    with pytest.raises(TypeError, match="missing"):
        render(attack, a=1)
    with pytest.raises(TypeError, match="unexpected"):
        render(attack, a=1, c=2, d=3)
    with pytest.raises(TypeError, match="literal"):
        render(attack, a=object(), c=1)
    with pytest.raises(TypeError, match="literal"):
        render(attack, a=float("nan"), c=1)
    with pytest.raises(ValueError, match="expected one"):
        render(Attack("t", "network", "t", "print(1)\n", ("a",)), a=1)
    assert render(Attack("t", "network", "t", code)) == code, "no needs: the code as it is"
