"""Deliberate exchanges: exposed ports (host 127.0.0.1 only), files in and out.

Real dockerd + runsc + ipykernel. Each test shows the exchange working *and* its
limit holding: a server inside is reachable only at the exposed 127.0.0.1 port, the
sandbox still cannot connect out, copied-in files are there but nothing else of the
host, exports land only as new, sanitised files in the export folder.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from sandbox_kernel.image.recipe import DEFAULT_IMAGE
from sandbox_kernel.kernelspec import build_kernelspec
from tests.helpers import (
    BACKEND_CONFIGS,
    Kernel,
    NetnsHost,
    container_exists,
    listening_ports,
    ready_kernel,
    running_kernel,
    sandbox_id,
)

LOOPBACK_HEX = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it

SERVE = """
import http.server, threading, os
os.makedirs('site', exist_ok=True)
open('site/index.html', 'w').write({marker!r})
class H(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory='site', **k)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(('127.0.0.1', {port}), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
"""


@pytest.fixture(scope="module")
def exchange_ksm(tmp_path_factory: pytest.TempPathFactory) -> KernelSpecManager:
    root = tmp_path_factory.mktemp("exchange-kernels")
    variants: dict[str, dict[str, Any]] = {
        "sk-ports": {"expose_ports": ["8060"], "max_runtime_ports": 2},
        "sk-files": {
            "copy_in": ["data.csv", "inputs"],
            "copy_in_limit": "1m",
            "export_limit": "64k",
        },
        "sk-closed": {"max_runtime_ports": 0, "export_limit": 0},
        "sandbox-files-off": {},
        # The whole notebook folder copied in: exports must not come back in.
        "sk-folder": {"copy_in": ["."], "copy_in_limit": "1m", "export_limit": "4m"},
        # A student's own notebook: the files beside it, in the home where the kernel starts.
        "sk-student": {"copy_in_notebook_folder": True, "copy_in_limit": "1m"},
    }
    for name, config in variants.items():
        (root / name).mkdir()
        spec = build_kernelspec({"image": DEFAULT_IMAGE, **config})
        (root / name / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(root)])


@pytest.fixture
def start(
    exchange_ksm: KernelSpecManager, docker_client: docker.DockerClient
) -> Iterator[Callable[..., Kernel]]:
    started: list[Kernel] = []

    def start_kernel(name: str, cwd: Path | None = None) -> Kernel:
        kernel = ready_kernel(exchange_ksm, name, cwd=cwd)
        started.append(kernel)
        return kernel

    yield start_kernel
    for kernel in started:
        kernel.stop()


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def host_addresses() -> list[str]:
    """This machine's own non-loopback IPv4 addresses (connecting to them stays local)."""
    out = os.popen("ip -4 -o addr show scope global").read().split("\n")
    return [line.split()[3].split("/")[0] for line in out if line.strip()]


def refused(addr: str, port: int) -> bool:
    try:
        socket.create_connection((addr, port), timeout=3).close()
    except OSError:
        return True
    return False


def test_runtime_expose_reaches_the_host_loopback_only(
    start: Callable[..., Kernel], test_host: NetnsHost
) -> None:
    kernel = start("sk-ports")
    before = set(listening_ports(own_only=True))
    kernel.run(SERVE.format(marker="hello from the sandbox", port=8050))
    url = kernel.value("import sandboxed, json\nprint(json.dumps(sandboxed.expose(8050)))")
    assert url.startswith("http://127.0.0.1:"), url
    host_port = int(url.rsplit(":", 1)[1].strip("/"))
    assert http_get(url) == "hello from the sandbox"

    # The new listener is ours and on 127.0.0.1 only; the host's other addresses refuse.
    listeners = listening_ports(own_only=True)
    assert host_port not in before and listeners[host_port] == LOOPBACK_HEX
    addresses = host_addresses()
    assert addresses, "need a non-loopback address to show the port is not there"
    for addr in addresses:
        assert refused(addr, host_port), f"{addr}:{host_port} answers"

    # Asking again gives the same port; the kernel's ZeroMQ ports cannot be exposed.
    assert kernel.value("print(json.dumps(sandboxed.expose(8050)))") == url
    assert kernel.value("print(json.dumps(sandboxed.ports()))") == {
        "8050": host_port,
        "8060": kernel.km.provisioner.exposed_ports()[8060],  # type: ignore[union-attr]
    }
    _, out = kernel.run("sandboxed.expose(15001)")
    assert "SandboxRequestError" in out and "ZeroMQ" in out

    # Exposing changes nothing outward: the LAN host (reachable from the host, checked by
    # the fixture) and the host's exposed port are both out of reach from inside.
    probe = (
        "import socket, json\nres = []\n"
        f"for addr in [('{test_host.addr}', {test_host.port}), ('127.0.0.1', {host_port})]:\n"
        "    try:\n"
        "        socket.create_connection(addr, timeout=3).close(); res.append('connected')\n"
        "    except OSError as e:\n"
        "        res.append(type(e).__name__)\n"
        "print(json.dumps(res))"
    )
    assert "connected" not in kernel.value(probe)

    # The budget: sk-ports may expose 2 ports at run time.
    kernel.run(SERVE.format(marker="two", port=8051))
    assert http_get(kernel.value("print(json.dumps(sandboxed.expose(8051)))")) == "two"
    _, out = kernel.run("sandboxed.expose(8052)")
    assert "max_runtime_ports" in out

    kernel.stop()
    assert host_port not in listening_ports(own_only=True)


def test_configured_port_survives_restart_and_closes_at_shutdown(
    start: Callable[..., Kernel],
) -> None:
    kernel = start("sk-ports")
    host_port = kernel.km.provisioner.exposed_ports()[8060]  # type: ignore[union-attr]
    assert listening_ports(own_only=True)[host_port] == LOOPBACK_HEX
    # Nothing listens inside yet: the connection is accepted, then dropped at once.
    with pytest.raises(OSError):
        http_get(f"http://127.0.0.1:{host_port}/")
    kernel.run(SERVE.format(marker="first", port=8060))
    assert http_get(f"http://127.0.0.1:{host_port}/") == "first"
    assert kernel.value("import sandboxed, json\nprint(json.dumps(sandboxed.ports()))") == {
        "8060": host_port
    }

    kernel.km.restart_kernel(now=True)
    kernel.kc.wait_for_ready(timeout=60)
    kernel.run(SERVE.format(marker="second", port=8060))
    assert http_get(f"http://127.0.0.1:{host_port}/") == "second"
    kernel.stop()
    assert host_port not in listening_ports(own_only=True)


def test_exposing_is_refused_when_the_operator_says_so(start: Callable[..., Kernel]) -> None:
    kernel = start("sk-closed")
    _, out = kernel.run("import sandboxed\nsandboxed.expose(8050)")
    assert "SandboxRequestError" in out and "at most 0" in out
    kernel.run("open('out.txt', 'w').write('x')")
    _, out = kernel.run("sandboxed.export('out.txt')")
    assert "SandboxRequestError" in out and "disabled" in out


@pytest.fixture
def notebook_dir(tmp_path: Path) -> Path:
    (tmp_path / "data.csv").write_text("name,score\nada,3\nbob,5\n")
    (tmp_path / "inputs" / "deep").mkdir(parents=True)
    (tmp_path / "inputs" / "deep" / "notes.txt").write_text("deep note")
    (tmp_path / "inputs" / "runme.sh").write_text("echo hi\n")
    (tmp_path / "inputs" / "runme.sh").chmod(0o755)
    (tmp_path / "inputs" / "host-secret").symlink_to("/etc/shadow")
    (tmp_path / "not-listed.txt").write_text("stays on the host")
    return tmp_path


def test_copied_in_files_are_readable_and_nothing_else(
    start: Callable[..., Kernel], notebook_dir: Path
) -> None:
    kernel = start("sk-files", cwd=notebook_dir)
    seen = kernel.value(
        "import csv, os, json\n"
        "rows = list(csv.DictReader(open('data.csv')))\n"
        "print(json.dumps({'rows': rows,\n"
        "  'top': sorted(n for n in os.listdir('.') if not n.startswith('.')),\n"
        "  'tree': sorted(os.path.join(r, f) for r, _, fs in os.walk('inputs') for f in fs),\n"
        "  'note': open('inputs/deep/notes.txt').read(),\n"
        "  'exec': os.access('inputs/runme.sh', os.X_OK),\n"
        f"  'host_dir': os.path.exists({str(notebook_dir)!r}),\n"
        "  'link': os.path.lexists('inputs/host-secret')}))"
    )
    assert seen["rows"] == [{"name": "ada", "score": "3"}, {"name": "bob", "score": "5"}]
    assert seen["note"] == "deep note" and seen["exec"] is True
    assert seen["top"] == ["data.csv", "inputs"]
    assert seen["tree"] == ["inputs/deep/notes.txt", "inputs/runme.sh"]
    assert seen["host_dir"] is False and seen["link"] is False
    # A restart starts from a fresh copy: a change inside is gone, a change outside shows.
    kernel.run("open('data.csv', 'w').write('changed inside')")
    (notebook_dir / "data.csv").write_text("name,score\ncy,7\n")
    kernel.km.restart_kernel(now=True)
    kernel.kc.wait_for_ready(timeout=60)
    assert kernel.value("import json\nprint(json.dumps(open('data.csv').read()))") == (
        "name,score\ncy,7\n"
    )


def test_a_students_notebook_reads_the_files_beside_it(
    start: Callable[..., Kernel], notebook_dir: Path
) -> None:
    """``copy_in_notebook_folder`` (the hub recipe's student kernels): the notebook's folder
    is in the home, as copies; hidden entries (the folder may be the user's home, with
    ``.ssh``), the export folder and links stay out. Off by default (a grader's kernel):
    nothing of the folder."""
    (notebook_dir / ".ssh").mkdir()
    (notebook_dir / ".ssh" / "id_ed25519").write_text("PRIVATE KEY")
    (notebook_dir / "sandbox-exports").mkdir()
    (notebook_dir / "sandbox-exports" / "old.csv").write_text("exported before")
    (notebook_dir / "link-to-shadow").symlink_to("/etc/shadow")
    listing = (
        "import os, json\n"
        "print(json.dumps({'top': sorted(os.listdir('.')),\n"
        "  'rows': open('data.csv').read() if os.path.exists('data.csv') else None}))"
    )
    student = start("sk-student", cwd=notebook_dir).value(listing)
    assert student["rows"] == "name,score\nada,3\nbob,5\n"
    assert ".ssh" not in student["top"], student["top"]
    top = [n for n in student["top"] if not n.startswith(".")]  # dot files: the image's /etc/skel
    assert top == ["data.csv", "inputs", "not-listed.txt"], student["top"]
    grader = start("sandbox-files-off", cwd=notebook_dir).value(listing)
    assert grader["rows"] is None and "data.csv" not in grader["top"]


def test_copy_in_over_its_limit_or_missing_fails_cleanly(
    exchange_ksm: KernelSpecManager, notebook_dir: Path, docker_client: docker.DockerClient
) -> None:
    (notebook_dir / "data.csv").write_bytes(b"x" * (2 * 2**20))  # limit is 1m
    km = KernelManager(kernel_name="sk-files", kernel_spec_manager=exchange_ksm)
    with pytest.raises(Exception, match=r"data.csv \(2 MiB\) takes the copy past copy_in_limit"):
        km.start_kernel(cwd=str(notebook_dir))
    assert not container_exists(docker_client, sandbox_id(km))
    (notebook_dir / "data.csv").unlink()
    km = KernelManager(kernel_name="sk-files", kernel_spec_manager=exchange_ksm)
    with pytest.raises(Exception, match=r"copy_in: 'data.csv'.*No such file"):
        km.start_kernel(cwd=str(notebook_dir))


def test_export_writes_new_sanitised_files_into_the_export_folder(
    start: Callable[..., Kernel], notebook_dir: Path
) -> None:
    kernel = start("sk-files", cwd=notebook_dir)
    kernel.run(
        "import sandboxed, json\n"
        "open('results.csv', 'w').write('a,b\\n1,2\\n')\n"
        "open('big.bin', 'wb').write(b'z' * 70000)\n"
        "os_ok = open('.bashrc', 'w').write('evil')\n"
    )
    first = kernel.value("print(json.dumps(sandboxed.export('results.csv')))")
    second = kernel.value("print(json.dumps(sandboxed.export('results.csv')))")
    assert (first, second) == ("sandbox-exports/results.csv", "sandbox-exports/results (1).csv")
    assert (notebook_dir / first).read_text() == "a,b\n1,2\n"
    assert (notebook_dir / second).read_text() == "a,b\n1,2\n"

    refusals = {
        "sandboxed.export('.bashrc')": "not an allowed file name",
        "sandboxed.export('results.csv', name='../escape.csv')": None,  # lands as escape.csv
        "sandboxed.export('results.csv', name='..')": "not an allowed file name",
        "sandboxed.export('big.bin')": "export_limit",
        "sandboxed.export('/etc/hostname', name='jupyter_server_config.py\\n')": "not an allowed",
        "sandboxed.export('missing.txt')": "cannot read",
    }
    for code, error in refusals.items():
        _, out = kernel.run(code)
        if error is None:
            assert "Error" not in out, out
        else:
            assert "SandboxRequestError" in out and error in out, (code, out)
    assert not (notebook_dir.parent / "escape.csv").exists()
    assert (notebook_dir / "sandbox-exports" / "escape.csv").exists()
    names = sorted(os.listdir(notebook_dir / "sandbox-exports"))
    assert names == ["escape.csv", "results (1).csv", "results.csv"], names  # no temp files
    # The notebook's folder itself got nothing but the export folder.
    assert sorted(os.listdir(notebook_dir)) == [
        "data.csv",
        "inputs",
        "not-listed.txt",
        "sandbox-exports",
    ]


def test_export_never_follows_a_planted_symlink(
    start: Callable[..., Kernel], notebook_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (notebook_dir / "sandbox-exports").symlink_to(elsewhere)
    kernel = start("sk-files", cwd=notebook_dir)
    _, out = kernel.run(
        "import sandboxed\nopen('r.txt', 'w').write('r')\nsandboxed.export('r.txt')"
    )
    assert "SandboxRequestError" in out and "export folder" in out
    assert os.listdir(elsewhere) == []


@pytest.mark.parametrize("backend", sorted(BACKEND_CONFIGS))
def test_ports_and_files_on_every_backend(
    backend: str, notebook_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The exchanges ride on the relay, so every backend offers the same ones."""
    root = tmp_path_factory.mktemp(f"exchange-{backend}")
    (root / "k").mkdir()
    config = {**BACKEND_CONFIGS[backend], "copy_in": ["data.csv"], "expose_ports": ["8070"]}
    (root / "k" / "kernel.json").write_text(json.dumps(build_kernelspec(config)))
    with running_kernel(
        KernelSpecManager(kernel_dirs=[str(root)]), "k", cwd=notebook_dir
    ) as kernel:
        km = kernel.km
        kernel.run(SERVE.format(marker=f"served under {backend}", port=8070))
        host_port = km.provisioner.exposed_ports()[8070]  # type: ignore[union-attr]
        assert http_get(f"http://127.0.0.1:{host_port}/") == f"served under {backend}"
        assert kernel.value("import json\nprint(json.dumps(open('data.csv').read()))").startswith(
            "name,score"
        )
        kernel.run("open('result.txt', 'w').write('from ' + 'inside')")
        path = kernel.value("import sandboxed\nprint(json.dumps(sandboxed.export('result.txt')))")
        assert (notebook_dir / path).read_text() == "from inside"


def test_copy_in_never_brings_back_what_the_sandbox_exported(
    start: Callable[..., Kernel], notebook_dir: Path
) -> None:
    """With the notebook's folder copied in, a file the kernel exported must not be copied
    back at the next start: an export over copy_in_limit would otherwise make every later
    launch in that folder fail."""
    kernel = start("sk-folder", cwd=notebook_dir)
    kernel.run("import sandboxed\nopen('big.bin', 'wb').write(b'e' * (2 * 2**20))")
    assert kernel.value("import json\nprint(json.dumps(sandboxed.export('big.bin')))") == (
        "sandbox-exports/big.bin"
    )
    assert (notebook_dir / "sandbox-exports" / "big.bin").stat().st_size == 2 * 2**20
    kernel.km.restart_kernel(now=True)  # 2 MiB exported > copy_in_limit 1m: still starts
    kernel.kc.wait_for_ready(timeout=60)
    # copy_in ["."] copies the notebook's folder, under its own name, into the home.
    copied = kernel.value(
        f"import os, json\nprint(json.dumps(sorted(os.listdir({notebook_dir.name!r}))))"
    )
    assert "sandbox-exports" not in copied and "data.csv" in copied, copied


def test_the_agent_never_blocks_on_what_the_kernel_hands_it(
    start: Callable[..., Kernel], notebook_dir: Path
) -> None:
    """A FIFO (or any non-regular file) offered for export is refused at once, whether
    through ``sandboxed.export`` or handed to the agent's socket directly, and the agent
    keeps answering."""
    kernel = start("sk-files", cwd=notebook_dir)
    out = kernel.value(
        "import array, json, os, socket, sandboxed\n"
        "os.mkfifo('/tmp/pipe')\n"
        "res = {}\n"
        "try:\n"
        "    sandboxed.export('/tmp/pipe')\n"
        "except sandboxed.SandboxRequestError as e:\n"
        "    res['module'] = str(e)\n"
        "fd = os.open('/tmp/pipe', os.O_RDONLY | os.O_NONBLOCK)\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "s.settimeout(20)\n"
        "s.connect(os.environ['SANDBOX_KERNEL_AGENT_SOCKET'])\n"
        's.sendmsg([b\'{"op": "export", "name": "p"}\\n\'],'
        " [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [fd]))])\n"
        "res['raw'] = json.loads(s.recv(4096))\n"
        "res['ports'] = sandboxed.ports()\n"
        "print(json.dumps(res))"
    )
    assert "not a regular file" in out["module"], out
    assert out["raw"] == {"ok": False, "error": "only regular files can be exported"}, out
    assert out["ports"] == {}, out
    assert not (notebook_dir / "sandbox-exports").exists()
