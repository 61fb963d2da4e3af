"""What code inside a sandboxed kernel sees: gVisor, no host files, no network, no root.

Each test runs the attempt inside a real sandboxed kernel and asserts it fails;
where a control is possible (the target is live from the host), it is checked
first so the test cannot pass vacuously.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from pathlib import Path

from tests.helpers import REPO, Kernel, NetnsHost


def test_kernel_runs_under_gvisor(shared_kernel: Kernel) -> None:
    release = shared_kernel.value("import platform, json; print(json.dumps(platform.release()))")
    assert release != os.uname().release, "the sandbox sees the host's kernel: not gVisor"
    dmesg = shared_kernel.value(
        "import json, subprocess\nprint(json.dumps(open('/proc/version').read()))"
    )
    assert os.uname().release not in dmesg


def test_runs_as_unprivileged_user(shared_kernel: Kernel) -> None:
    ids = shared_kernel.value(
        "import os, json, ctypes\n"
        "status = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines()"
        " if ':\\t' in l)\n"
        "PR_GET_NO_NEW_PRIVS = 39\n"
        "nnp = ctypes.CDLL(None, use_errno=True).prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)\n"
        "print(json.dumps([os.getuid(), os.geteuid(), os.getgid(), status.get('CapEff','').strip(), nnp]))"
    )
    uid, euid, gid, cap_eff, no_new_privs = ids
    assert uid != 0 and euid != 0 and gid != 0
    assert int(cap_eff, 16) == 0
    assert no_new_privs == 1


def test_only_loopback_interface(shared_kernel: Kernel) -> None:
    ifaces = shared_kernel.value("import socket, json; print(json.dumps(socket.if_nameindex()))")
    assert [name for _, name in ifaces] == ["lo"]


def test_no_tcp_or_udp_to_a_lan_host(shared_kernel: Kernel, test_host: NetnsHost) -> None:
    result = shared_kernel.value(
        "import socket, json\n"
        "out = {}\n"
        "try:\n"
        f"    s = socket.create_connection(('{test_host.addr}', {test_host.port}), timeout=3)\n"
        "    out['tcp'] = s.recv(16).decode()\n"
        "except OSError as e:\n"
        "    out['tcp'] = 'blocked: %s' % e\n"
        "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)\n"
        "try:\n"
        f"    u.sendto(b'ping', ('{test_host.addr}', {test_host.port})); out['udp'] = u.recv(16).decode()\n"
        "except OSError as e:\n"
        "    out['udp'] = 'blocked: %s' % e\n"
        "print(json.dumps(out))"
    )
    assert result["tcp"].startswith("blocked"), result
    assert result["udp"].startswith("blocked"), result


def test_host_loopback_services_unreachable(shared_kernel: Kernel) -> None:
    """A server on the host's 127.0.0.1 is not the sandbox's 127.0.0.1."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    accepted: list[object] = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # control: the host server is live
        result = shared_kernel.value(
            "import socket, json\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2); r = 'connected'\n"
            "except OSError as e:\n"
            "    r = 'blocked: %s' % e\n"
            "print(json.dumps(r))"
        )
        assert result.startswith("blocked"), result
        assert len(accepted) == 1  # only the control connection reached the host
    finally:
        server.close()


def test_host_paths_absent(shared_kernel: Kernel, tmp_path: Path) -> None:
    """Files planted on the host (in /tmp, the home folder, the checkout) are not there inside."""
    tag = uuid.uuid4().hex
    markers = [
        Path("/tmp") / f"sk-marker-{tag}",
        Path.home() / f"sk-marker-{tag}",
        REPO / f"sk-marker-{tag}",
    ]
    for marker in markers:
        marker.write_text("host secret")
    try:
        paths = [str(p) for p in markers] + [
            str(REPO),
            str(REPO / "pyproject.toml"),
            "/var/run/docker.sock",
            "/run/docker.sock",
            "/run/containerd",
            "/etc/docker",
            "/var/lib/docker",
            str(Path.home() / ".bash_history"),
        ]
        seen = shared_kernel.value(
            f"import os, json\nprint(json.dumps({{p: os.path.exists(p) for p in {paths!r}}}))"
        )
        assert not any(seen.values()), seen
    finally:
        for marker in markers:
            marker.unlink()


def test_root_filesystem_is_read_only(shared_kernel: Kernel) -> None:
    result = shared_kernel.value(
        "import json\n"
        "out = {}\n"
        "for p in ['/usr/evil', '/etc/evil', '/evil']:\n"
        "    try:\n"
        "        open(p, 'w').write('x'); out[p] = 'written'\n"
        "    except OSError as e:\n"
        "        out[p] = e.errno\n"
        "open('/tmp/ok', 'w').write('fine')\n"
        "print(json.dumps(out))"
    )
    assert "written" not in result.values(), result


def test_server_environment_does_not_leak(ksm, start_kernel, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    token = f"planted-{uuid.uuid4().hex}"
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", token)
    monkeypatch.setenv("SANDBOX_TEST_SECRET_VALUE", token)
    monkeypatch.setenv("JPY_SESSION_NAME", token)
    kernel = start_kernel()
    env = kernel.value("import os, json; print(json.dumps(dict(os.environ)))")
    assert token not in json.dumps(env)
    # The one JPY_ name is the sandbox's own: ipykernel's parent is the agent, PID 1.
    assert env.pop("JPY_PARENT_PID") == "1"
    assert not any(k.startswith("JPY_") for k in env), env
    assert "JUPYTERHUB_API_TOKEN" not in env
