"""A real JupyterHub, recipe (a) of docs/jupyterhub.md: two real system users made by the
test, LocalProcessSpawner, configurable-http-proxy, each user's server running as that
user from the shared venv with the documented configs, and the rootless-runsc kernelspec
(installed by root) as the only kernel. Everything goes through the hub's proxy
(``/hub/api``, ``/user/<name>/api/...``, the kernel websocket) with tokens from the hub API.

The tests share one hub (module fixture) and run in file order; the last one stops the
hub. The fixture's teardown removes the users, their homes and runsc state, and fails if
any process or cgroup of theirs was left."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect
from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

from sandbox_kernel.backends.cgroups import end_all
from sandbox_kernel.hub import segments_of
from sandbox_kernel.relay.peers import MAX_PENDING_CHECKS
from tests.helpers import EXAMPLES, REPO, ForeignClient, ending
from tests.integration.browser import chromium_page
from tests.integration.hub import (
    SHARED_VENV,
    Hub,
    SystemUser,
    UserClient,
    admin_dir,
    cgroup_of,
    cmdline,
    descendants,
    in_user_cgroups,
    loopback_subdomains,
    proc_ids,
    reinstall_shared_venv,
    user_cgroups,
)
from tests.integration.servers import ws_execute

if TYPE_CHECKING:
    from playwright.sync_api import Page

KERNEL = "sandbox-python"
# The kernelspec an administrator installs for recipe (a): no warm pool, so a server's
# sandboxes are exactly its kernels (at most max_kernels), on gVisor's ptrace platform
# (a class of idle kernels; docs/jupyterhub.md).
INSTALL = ["--backend", "runsc", "--pool-size", "0", "--platform", "ptrace",
           "--copy-in-notebook-folder"]  # fmt: skip
SANDBOX_PROCESS = "runsc-sandbox"  # one per sandbox: gVisor's sentry (rootless: as the user)
MAX_KERNELS = 2  # the example's 4, cheaper to reach
USER_MEMORY = 1536 * 2**20  # everything of one user's server (the example has 4g)
USER_CPUS = 1.5  # the example (and the default) has 2
USER_PIDS = 1536  # the example (and the default) has 2048


@dataclass
class HubSetup:
    hub: Hub
    admin: Path
    users: dict[str, SystemUser]
    clients: dict[str, UserClient]

    def client(self, who: str) -> UserClient:
        if who not in self.clients:
            self.clients[who] = UserClient(self.hub, self.users[who])
        return self.clients[who]


def example_hub_config() -> Config:
    """docs/examples/jupyterhub_config.py as JupyterHub loads it (no site file beside it)."""
    return PyFileConfigLoader("jupyterhub_config.py", str(EXAMPLES)).load_config()


def site_config(admin: Path, venv: Path) -> str:
    """The test's site file (loaded last by docs/examples/jupyterhub_config.py, which the
    test uses as it is): the example's paths moved to the test's private admin and state
    folders and its shared venv, smaller sizes, and the test's machinery: longer start
    timeouts (a loaded machine), a short poll interval (a server that dies is noticed
    within seconds) and per-user extra server arguments the test writes to
    ``extra-args-<user>.json`` before a (re)start. The hub's ports are ``Hub``'s."""
    example = example_hub_config()
    server_args = [a for a in example.Spawner.args if not a.startswith("--config=")]
    assert len(server_args) == len(example.Spawner.args) - 1, example.Spawner.args
    data = admin / "share/jupyter"
    args = [
        f"--config={admin / 'etc/jupyter_server_config.py'}",  # the example, as it is
        *server_args,
        # The server config's folder of admin kernelspecs and max_kernels, the test's.
        f"--SandboxedOnlyKernelSpecManager.admin_kernel_dirs={data / 'kernels'}",
        f"--SandboxProvisioner.max_kernels={MAX_KERNELS}",
    ]
    state = admin / "hub-state"
    cmd = [str(venv / "bin/jupyterhub-singleuser")]
    return f"""
# Paths: the test's admin folder, hub state folder (and shared venv, if not the example's).
{f"c.Spawner.cmd = {cmd!r}" if cmd != example.Spawner.cmd else ""}
c.Spawner.args = {args!r}
c.Spawner.environment = {{**{dict(example.Spawner.environment)!r}, "JUPYTER_PATH": {str(data)!r}}}
c.JupyterHub.db_url = "sqlite:///{state}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{state}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = "{state}/jupyterhub.pid"
# Sizes.
c.UserCgroupSpawner.user_memory_limit = {USER_MEMORY}
c.UserCgroupSpawner.user_cpu_limit = {USER_CPUS}
c.UserCgroupSpawner.user_pids_limit = {USER_PIDS}
# The test's machinery.
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 180
c.Spawner.poll_interval = 5


def _extra_args(spawner):
    import json, os
    path = os.path.join({str(admin / "hub")!r}, f"extra-args-{{spawner.user.name}}.json")
    base = [a for a in spawner.args if not a.startswith("--MappingKernelManager.")]
    spawner.args = base + (json.load(open(path)) if os.path.exists(path) else [])


c.Spawner.pre_spawn_hook = _extra_args
"""


@pytest.fixture(scope="module")
def hub_setup() -> Iterator[HubSetup]:
    venv = reinstall_shared_venv()
    with admin_dir() as admin, loopback_subdomains():
        users = {who: SystemUser(who) for who in ("alice", "bob")}
        hub: Hub | None = None
        failures: list[str] = []
        # Who may log in: the example's group, made as scripts/hub-setup.sh does (kept if it
        # was there), the users in it as the recipe's useradd puts them.
        (group,) = example_hub_config().LocalAuthenticator.allowed_groups
        made_group = subprocess.run(["getent", "group", group], capture_output=True).returncode != 0
        try:
            if made_group:
                subprocess.run(["groupadd", group], check=True, capture_output=True)
            for user in users.values():
                user.create(groups=(group,))
            # What an administrator installs: the kernelspec (root's umask of 077 would
            # hide a badly installed one from the users) and the server config as it is.
            install = subprocess.run(
                [sys.executable, "-m", "sandbox_kernel.cli.main", "install", "--prefix", str(admin),
                 "--name", KERNEL, *INSTALL],
                capture_output=True, text=True, timeout=120, preexec_fn=lambda: os.umask(0o077),
            )  # fmt: skip
            assert install.returncode == 0, install.stderr
            (admin / "etc").mkdir(mode=0o755, exist_ok=True)  # install wrote etc/jupyter
            shutil.copyfile(
                EXAMPLES / "jupyter_server_config.py", admin / "etc/jupyter_server_config.py"
            )
            (admin / "etc" / "jupyter_server_config.py").chmod(0o644)
            (admin / "hub").mkdir(mode=0o700)
            # The hub's state folder, made as scripts/hub-setup.sh does.
            subprocess.run(["install", "-d", "-m", "700", str(admin / "hub-state")], check=True)
            example = (EXAMPLES / "jupyterhub_config.py").read_text()
            hub = Hub(admin / "hub", example, site_config(admin, venv), own_state=False)
            hub.start()
            hub.add_users([u.name for u in users.values()])
            yield HubSetup(hub, admin, users, {})
        finally:
            if hub is not None:
                try:
                    hub.stop()  # a test that failed midway: stop its servers the normal way
                except AssertionError:
                    failures.append("the hub did not stop on SIGTERM")
                proxy = hub.proxy_pid()
                if proxy is not None:
                    failures.append(f"the hub's proxy outlived it: {cmdline(proxy)}")
                hub.kill()
                artifacts = REPO / "test-artifacts"
                artifacts.mkdir(exist_ok=True)
                (artifacts / "jupyterhub.log").write_text(hub.log(tail=400_000))
            for who, user in users.items():
                if user.uid < 0:
                    continue
                state = user.sandbox_state()
                if state:
                    failures.append(f"{who}'s runsc state was left: {state}")
                left = user.remove()
                if left:
                    failures.append(f"{who} had processes left: {left}")
                if user.runtime_dir().exists():
                    failures.append(f"{who}'s runtime folder was left")
                stale = [str(d) for d in user_cgroups(user).values() if d.exists()]
                if stale:
                    end_all(user_cgroups(user).values())
                    failures.append(f"{who}'s cgroups were left: {stale}")
                if Path(f"/home/{user.name}").exists():
                    failures.append(f"{who}'s home was not removed")
            if made_group:
                subprocess.run(["groupdel", group], check=False, capture_output=True)
            assert not failures, failures


def spawned(setup: HubSetup, who: str) -> UserClient:
    """The user's server, running, with no kernel (one left by an earlier failed test is
    shut down)."""
    setup.hub.spawn(setup.users[who].name)
    client = setup.client(who)
    for kernel in client.api("GET", "/api/kernels"):
        client.api("DELETE", f"/api/kernels/{kernel['id']}")
    return client


def server_pid(user: SystemUser) -> int:
    pids = [p for p in user.processes() if any("jupyterhub-singleuser" in a for a in cmdline(p))]
    assert len(pids) == 1, f"{user.name}: single-user servers {pids}"
    return pids[0]


def sandbox_pids(user: SystemUser) -> list[int]:
    """The user's processes that are sandboxes (gVisor sentries)."""
    return [p for p in user.processes() if cmdline(p)[:1] == [SANDBOX_PROCESS]]


def wait_for(cond, what: str, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


INSIDE = """
import json, os, platform, socket
def can_connect(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
        return True
    except OSError:
        return False
print(json.dumps({
    "release": platform.release(), "uid": os.getuid(),
    "interfaces": sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else [],
    "hub_port_reachable": can_connect(%(hub_port)d),
    "paths": {p: os.path.exists(p) for p in %(paths)r},
}))
"""


def plant_secret(user: SystemUser, who: str) -> Path:
    """``~/secret.txt``, readable by its owner only (each test that looks for it plants
    it: tests must pass alone)."""
    secret = user.home / "secret.txt"
    secret.write_text(f"{who}'s secret\n")
    secret.chmod(0o600)
    os.chown(secret, user.uid, user.gid)
    return secret


def test_each_users_kernel_runs_in_gvisor_as_1000_without_network_or_host_files(
    hub_setup: HubSetup,
) -> None:
    hub = hub_setup.hub
    users = hub_setup.users
    for who in ("alice", "bob"):
        plant_secret(users[who], who)
    for who, other in (("alice", "bob"), ("bob", "alice")):
        client = spawned(hub_setup, who)
        kernel = client.start_kernel()
        paths = [str(users[who].home), str(users[who].home / "secret.txt"),
                 str(users[other].home), "/var/run/docker.sock", str(hub_setup.admin)]  # fmt: skip
        seen = json.loads(client.execute(kernel, INSIDE % {"hub_port": hub.port, "paths": paths}))
        assert seen["release"] != os.uname().release, f"{who}'s kernel ran on the host kernel"
        assert seen["uid"] == 1000, seen
        assert seen["interfaces"] in ([], ["lo"]), seen
        assert not seen["hub_port_reachable"], "the sandbox reached the host's loopback"
        assert not any(seen["paths"].values()), seen
        client.api("DELETE", f"/api/kernels/{kernel}")


def test_the_hub_and_every_server_listen_on_loopback_only(hub_setup: HubSetup) -> None:
    """The hub, its proxy, the users' servers and their kernels' relays: every TCP
    listener of theirs is on 127.0.0.1."""
    from tests.helpers import socket_inodes, tcp_listeners

    assert hub_setup.hub.proc is not None
    roots = [hub_setup.hub.proc.pid]
    for who in ("alice", "bob"):
        client = spawned(hub_setup, who)
        client.start_kernel()
        roots.append(server_pid(hub_setup.users[who]))
    inodes: dict[str, int] = {}
    for pid in (p for root in roots for p in descendants(root)):
        try:
            inodes.update(dict.fromkeys(socket_inodes(str(pid)), pid))
        except OSError:
            continue  # ended meanwhile
    ours = [(addr, port, inodes[inode]) for addr, port, inode in tcp_listeners() if inode in inodes]
    assert len(ours) >= 2 + 2 + 2 * 5, ours  # proxy (2), hub, 2 servers, 2 kernels' ports
    elsewhere = [(addr, port, cmdline(pid)[:2]) for addr, port, pid in ours if addr != "0100007F"]
    assert not elsewhere, f"listening beyond 127.0.0.1: {elsewhere}"


def test_a_users_server_starts_again_and_again(hub_setup: HubSetup) -> None:
    """Stopped and started twice: the second start used to fail (jupyter_core's config
    migration writing into the root-owned config folder) with a 500 after 60 s."""
    hub, alice = hub_setup.hub, hub_setup.users["alice"]
    for attempt in range(3):
        hub.spawn(alice.name)
        client = hub_setup.client("alice")
        assert client.api("GET", "/api/status")["started"], attempt
        hub.stop_server(alice.name)
        wait_for(lambda: not alice.processes(), f"{alice.name}'s processes to end")


def connection_info(user: SystemUser, kernel_id: str) -> dict:  # type: ignore[type-arg]
    """The kernel's connection file, read as root (the user's runtime folder is private)."""
    [path] = user.home.glob(f".local/share/jupyter/runtime/kernel-{kernel_id}.json")
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def test_alice_gets_nothing_from_bobs_kernel(hub_setup: HubSetup) -> None:
    """Alice, a real user of the host with her own server (and terminals), against bob's
    kernel: not his connection file, not his server through the hub, and at his kernel's
    127.0.0.1 ports neither answers (HMAC) nor his output (IOPub)."""
    alice, bob = hub_setup.users["alice"], hub_setup.users["bob"]
    alice_client = spawned(hub_setup, "alice")
    bob_client = spawned(hub_setup, "bob")
    kernel = bob_client.start_kernel()
    assert bob_client.execute(kernel, "print('up')").strip() == "up"
    runtime_file = connection_info(bob, kernel)
    denied = alice.run(
        ["cat", str(bob.home / f".local/share/jupyter/runtime/kernel-{kernel}.json")]
    )
    assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
    # Through the hub, alice's token opens nothing of bob's server.
    assert hub_setup.hub.error(
        "GET", f"{bob_client.url}/api/kernels", token=alice_client.token
    ).code in (403, 404)
    ports = {k: int(v) for k, v in runtime_file.items() if k.endswith("_port")}
    intruder = ForeignClient(
        ["setpriv", f"--reuid={alice.uid}", f"--regid={alice.gid}", "--init-groups", "--",
         str(SHARED_VENV / "bin/python")],
        ports, env=alice.env(), cwd=alice.home,
    )  # fmt: skip
    assert intruder.replies() == {"shell_port": 0, "control_port": 0}, "bob's kernel answered alice"
    assert bob_client.execute(kernel, "print('BOB-' + 'SECRET')").strip() == "BOB-SECRET"
    seen = intruder.iopub()
    assert not seen, f"alice read bob's kernel output: {seen[:2]}"
    check = "import os; print(os.path.exists('/tmp/INTRUDER-WAS-HERE'))"
    assert bob_client.execute(kernel, check).strip() == "False"
    bob_client.api("DELETE", f"/api/kernels/{kernel}")


# Alice's attack on bob's server port (stdlib only, run as alice): three 450 MiB POSTs
# (unauthenticated, as tornado would read them whole before any handler) and IDLE
# connections opened as fast as she can and held for HOLD_S seconds. Prints what happened:
# bytes of the bodies the server took before it dropped them, any byte of HTTP it answered,
# and how her idle connections ended.
FLOOD_SERVER = r"""
import json, socket, sys, threading, time
port, idle, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
seen = {"body_sent": [], "answered": 0, "idle_open": 0, "idle_reset": 0, "idle_closed": 0}
def post():
    sent = 0
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=20)
        s.sendall(b"POST /user/x/api/contents/x.ipynb HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (450 << 20))
        chunk = b"[" * (1 << 20)
        while sent < 450 << 20:
            s.sendall(chunk); sent += len(chunk)
        if s.recv(100).startswith(b"HTTP/"):
            seen["answered"] += 1
    except OSError:
        pass
    seen["body_sent"].append(sent)
posts = [threading.Thread(target=post) for _ in range(3)]
for t in posts: t.start()
conns = []
for _ in range(idle):
    c = socket.socket(); c.setblocking(False); c.connect_ex(("127.0.0.1", port)); conns.append(c)
time.sleep(hold)
for c in conns:
    try:
        data = c.recv(100, socket.MSG_DONTWAIT)
        if data.startswith(b"HTTP/"): seen["answered"] += 1
        seen["idle_closed" if not data else "idle_open"] += 1
    except BlockingIOError:
        seen["idle_open"] += 1
    except OSError:
        seen["idle_reset"] += 1
    c.close()
for t in posts: t.join(60)
print(json.dumps(seen))
"""
IDLE_CONNECTIONS = 4000
HOLD_S = 20
BOB_SERVER_PEAK = 512 * 2**20  # his server's peak resident memory under the attack


def server_port(hub: Hub, user: SystemUser) -> int:
    """The 127.0.0.1 port of the user's server, from the proxy's routing table."""
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{hub.api_port}/api/routes",
                                 headers={"Authorization": f"token {hub.proxy_token}"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as resp:
        routes = json.loads(resp.read())
    [target] = [r["target"] for k, r in routes.items() if k.rstrip("/").endswith(user.name)]
    return int(target.rsplit(":", 1)[1].strip("/"))


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def proxy_put(hub: Hub, user: SystemUser, mib: int) -> str:
    """An unauthenticated PUT of ``mib`` MiB to the user's server through the hub's port:
    the HTTP status, or "dropped" (the connection ended mid-body)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        f"{hub.server_url(user.name)}/api/contents/x.ipynb", method="PUT",
        data=b"[" * (mib << 20), headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return str(resp.status)
    except urllib.error.HTTPError as exc:
        return str(exc.code)
    except OSError:
        return "dropped"


def test_alice_cannot_exhaust_or_freeze_bobs_server(hub_setup: HubSetup) -> None:
    """Issue 19, item 2: Alice, a local user with a shell, attacks bob's server's 127.0.0.1
    port: three unauthenticated 450 MiB POSTs and 4,000 idle connections; and through the
    hub's public port, one 300 MiB PUT and six of 60 MiB at once. Bob's server stays under
    BOB_SERVER_PEAK, his cells answer (p99 under 1 s), none of her connections is answered
    or kept, and the attack adds a few lines to the hub log."""
    import concurrent.futures
    import threading

    hub, alice, bob = hub_setup.hub, hub_setup.users["alice"], hub_setup.users["bob"]
    spawned(hub_setup, "alice")
    bob_client = spawned(hub_setup, "bob")
    kernel = bob_client.start_kernel()
    assert bob_client.execute(kernel, "print(6 * 7)").strip() == "42"
    pid, port = server_pid(bob), server_port(hub, bob)
    log_before = hub.log_path.stat().st_size
    fds_before, rss_before = fds(pid), peak_rss(pid)
    attack: dict[str, subprocess.CompletedProcess[str]] = {}
    flood = threading.Thread(target=lambda: attack.update(done=alice.run(
        [str(SHARED_VENV / "bin" / "python"), "-c", FLOOD_SERVER, str(port),
         str(IDLE_CONNECTIONS), str(HOLD_S)], timeout=300)))  # fmt: skip
    flood.start()
    latencies: list[float] = []
    try:
        # Bob's cells on his notebook's open websocket, as JupyterLab runs them; his new
        # connections wait behind hers in the port's queue (docs/jupyterhub.md).
        async def cells() -> int:
            peak = 0
            url = bob_client.url.replace("http", "ws", 1) + f"/api/kernels/{kernel}/channels"
            ws = await websocket_connect(HTTPRequest(
                url, headers={"Authorization": f"token {bob_client.token}"}, connect_timeout=60
            ))  # fmt: skip
            try:
                end = time.monotonic() + HOLD_S
                while time.monotonic() < end:
                    t = time.monotonic()
                    assert (await ws_execute(ws, "print(6 * 7)", bob.name, 60)).strip() == "42"
                    latencies.append(time.monotonic() - t)
                    peak = max(peak, fds(pid))
                    await asyncio.sleep(0.05)
            finally:
                ws.close()
            return peak

        fds_peak = asyncio.run(cells())
        # Through the hub's public port (its proxy is let in): one 300 MiB body, refused
        # from its headers, and six of 60 MiB at once, cut at the server's body budget.
        with concurrent.futures.ThreadPoolExecutor(7) as pool:
            answers = list(pool.map(lambda mib: proxy_put(hub, bob, mib), [300] + [60] * 6))
        # 400 (bob's server), 403, 503 (the proxy, when bob's server closed it) or dropped
        assert not any(a.startswith("2") for a in answers), answers
    finally:
        flood.join(300)
    done = attack["done"]
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    assert seen["answered"] == 0, f"bob's server answered alice's direct requests: {seen}"
    # Her connections are reset as they are accepted (those the listen backlog has not
    # taken yet wait in the kernel, costing bob nothing): his server holds at most the
    # ones waiting for their peer check.
    assert fds_peak <= fds_before + MAX_PENDING_CHECKS + 16, (fds_before, fds_peak, seen)
    assert peak_rss(pid) < BOB_SERVER_PEAK, f"bob's server grew to {peak_rss(pid) >> 20} MiB"
    assert p99 < 1.0, f"bob's cells stalled: p99 {p99:.2f} s of {latencies}"
    assert bob_client.execute(kernel, "print(6 * 7)").strip() == "42"  # a new connection
    assert server_pid(bob) == pid, "bob's server was restarted"
    # The hub log (the servers' too) carries bob's own traffic (about 1 KiB a cell, and the
    # proxy's note of each of his test client's websockets closed with a reset); what the
    # attack adds is a few lines, no traceback (before: 5.3 MiB/s of them).
    with hub.log_path.open("rb") as f:
        f.seek(log_before)
        grown = f.read().decode(errors="replace")
    attack_lines = [
        line for line in grown.splitlines()
        if re.search(r"refused|Malformed HTTP|accepting paused|peer check", line)
    ]  # fmt: skip
    assert "Traceback" not in grown and len(attack_lines) <= 40, attack_lines
    assert len(grown) < 1 << 20, f"the hub log grew by {len(grown)} bytes"
    print(f"\nbob's server: peak {rss_before >> 20}..{peak_rss(pid) >> 20} MiB, fds {fds_before}..{fds_peak}, "
          f"cell p99 {p99:.2f} s; proxied PUTs {answers}; alice: {seen}")  # fmt: skip
    bob_client.api("DELETE", f"/api/kernels/{kernel}")


def runsc_state(user: SystemUser) -> Path:
    """The user's runsc state: the runsc backend's folder in the runtime folder the spawner
    made for the user's server (XDG_RUNTIME_DIR), 0700."""
    return user.runtime_dir() / "sandbox-kernel" / "runsc"


def test_alice_cannot_list_signal_or_remove_bobs_sandboxes(hub_setup: HubSetup) -> None:
    alice, bob = hub_setup.users["alice"], hub_setup.users["bob"]
    bob_client = spawned(hub_setup, "bob")
    kernel = bob_client.start_kernel()
    assert bob_client.execute(kernel, "print('up')").strip() == "up"
    state = runsc_state(bob)
    st = state.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (bob.uid, 0o700), oct(st.st_mode)
    runsc = ["runsc", "--rootless", "--root", str(state / "state")]
    listed = bob.run([*runsc, "list", "--format", "json"])  # bob sees his own
    [name] = [c["id"] for c in json.loads(listed.stdout or "[]")] or [listed.stderr]
    [sentry] = sandbox_pids(bob)
    # Bob's state folder is closed to alice: runsc run as her lists nothing of his and finds
    # no sandbox to signal or delete (`delete --force` of "nothing" even succeeds), and his
    # sentry, a process of his uid, cannot be killed. His sandbox survives all of it.
    listing = alice.run([*runsc, "list"])
    assert name not in listing.stdout, listing
    for argv in ([*runsc, "kill", name, "KILL"], [*runsc, "delete", "--force", name]):
        alice.run(argv)
    for argv in (["ls", str(state / "state")], ["kill", "-KILL", str(sentry)]):
        attempt = alice.run(argv)
        assert attempt.returncode != 0, (argv, attempt.stdout)
        assert re.search(r"permission denied|operation not permitted", attempt.stderr, re.I), (
            argv, attempt.stderr,
        )  # fmt: skip
    # Every attempt has returned: a signal one of them sent would already be pending (or
    # done), so this is seen without waiting.
    assert proc_ids(sentry), "bob's sandbox is gone"
    assert not ending(sentry), "a signal is on its way to bob's sandbox"
    # Her own view of sandboxes (the runsc backend's ps) holds none of bob's.
    mine = alice.run([str(SHARED_VENV / "bin" / "sandbox-kernel"), "ps", "--json"])
    assert mine.returncode == 0 and json.loads(mine.stdout) == [], mine
    assert bob_client.execute(kernel, "print('still up')").strip() == "still up"
    still = bob.run([*runsc, "list", "--format", "json"])
    assert [c["id"] for c in json.loads(still.stdout)] == [name], still
    bob_client.api("DELETE", f"/api/kernels/{kernel}")


def test_runsc_by_hand_gives_alice_nothing_beyond_her_own_uid(hub_setup: HubSetup) -> None:
    """Alice runs runsc herself in her terminal, outside any kernelspec's policy: a sandbox
    of her own that reads no more of the host than she can (not /etc/shadow, not bob's
    home), runs as her uid, stays in her cgroups, and ends with her server."""
    alice, bob = hub_setup.users["alice"], hub_setup.users["bob"]
    secret = plant_secret(bob, "bob")
    client = spawned(hub_setup, "alice")
    runsc = "runsc --rootless --network=none --root /tmp/byhand-$(id -u)"
    # The control: what she can read without runsc (bob's home is 0755 as Debian makes it;
    # his secret.txt is 0600).
    for path in ("/etc/shadow", str(secret)):
        direct = alice.run(["cat", path])
        assert direct.returncode != 0 and "Permission denied" in direct.stderr, direct
    out = client.terminal(
        f"{runsc} do cat /etc/shadow {secret}; echo RUNSC-EXIT=$?",
        r"RUNSC-EXIT=\d+",
        120,
    )
    ran = out.split("RUNSC-EXIT=$?", 1)[-1]  # what came after the echoed command line
    assert "/etc/shadow: Permission denied" in ran and "secret.txt: Permission denied" in ran, out
    assert not re.search(r"(?m)^root:", ran) and "bob's secret" not in ran, out
    assert re.search(r"RUNSC-EXIT=[1-9]", ran), out
    client.terminal(
        f"({runsc} do sleep 600 >/dev/null 2>&1 &) ; echo STARTED=$((6*7))", "STARTED=42"
    )
    wait_for(lambda: bool(sandbox_pids(alice)), "alice's own sandbox")
    for pid in descendants(server_pid(alice)):
        ids = proc_ids(pid)
        assert not ids or set(ids["Uid"]) == {alice.uid}, (pid, cmdline(pid), ids)
    for pid in sandbox_pids(alice):
        assert set(proc_ids(pid)["Uid"]) == {alice.uid}
        assert cgroup_of(pid, "memory").startswith(f"/sandbox-kernel-users/{alice.name}")
    hub_setup.hub.stop_server(alice.name)
    wait_for(lambda: not alice.processes(), "her sandbox to end with her server", 60)


def test_users_servers_hold_no_privilege_beyond_the_users_own(hub_setup: HubSetup) -> None:
    """Each user's server, its kernels' sandboxes and everything below them run as that
    user (real, effective, saved and filesystem uid and gid), in no group that opens the
    Docker socket, and none of them can open it."""
    import grp

    docker_gid = os.stat("/var/run/docker.sock").st_gid
    for who in ("alice", "bob"):
        user = hub_setup.users[who]
        client = spawned(hub_setup, who)
        kernel = client.start_kernel()
        assert client.execute(kernel, "print('up')").strip() == "up"
        # Recipe (a) allows terminals: a shell of the user's own, nothing more.
        shell = client.terminal("echo TERMINAL-UID $(id -u) $(id -G)", f"TERMINAL-UID {user.uid}")
        groups = " ".join(str(g) for g in os.getgrouplist(user.name, user.gid))  # the account's
        assert f"TERMINAL-UID {user.uid} {groups}\r" in shell, shell
        # The server, what it started, and the sandboxes (detached: in the user's cgroups).
        tree = sorted(set(descendants(server_pid(user))) | in_user_cgroups(user))
        sandboxes = sandbox_pids(user)
        assert sandboxes and set(sandboxes) <= set(tree), f"{who}: {sandboxes} not in {tree}"
        for pid in sandboxes:  # the recipe's platform reached runsc
            assert "--platform=ptrace" in cmdline(pid), (who, cmdline(pid))
        for pid in tree:
            ids = proc_ids(pid)
            if not ids:
                continue  # ended meanwhile
            assert set(ids["Uid"]) == {user.uid}, (who, pid, cmdline(pid), ids)
            assert set(ids["Gid"]) == {user.gid}, (who, pid, cmdline(pid), ids)
            assert docker_gid not in ids["Groups"] and 0 not in ids["Groups"], (who, pid, ids)
        assert all(user.uid in proc_ids(p).get("Uid", [user.uid]) for p in user.processes())
        # ... and all of it is in the user's own cgroups (the spawner's), which they cannot
        # leave: the sandboxes in child folders of their own.
        for controller, folder in user_cgroups(user).items():
            mine = "/" + str(folder.relative_to(f"/sys/fs/cgroup/{controller}"))
            placed = {pid: cgroup_of(pid, controller) for pid in tree}
            stray = {
                p: g for p, g in placed.items() if g and not (g == mine or g.startswith(mine + "/"))
            }
            assert not stray, (who, controller, mine, stray)
        moved = user.run(["sh", "-c", "echo $$ > /sys/fs/cgroup/memory/cgroup.procs"])
        assert moved.returncode != 0 and "Permission denied" in moved.stderr, moved
        raised = user.run(
            ["sh", "-c", f"echo -1 > {user_cgroups(user)['memory']}/memory.limit_in_bytes"]
        )
        assert raised.returncode != 0 and "Permission denied" in raised.stderr, raised
        assert user.name not in grp.getgrgid(docker_gid).gr_mem
        probe = user.python(
            "import socket\ns = socket.socket(socket.AF_UNIX)\n"
            "try:\n    s.connect('/var/run/docker.sock'); print('CONNECTED')\n"
            "except OSError as e:\n    print(e.strerror)"
        )
        assert probe.stdout.strip() == "Permission denied", probe
        client.api("DELETE", f"/api/kernels/{kernel}")


def test_a_users_cgroups_hold_the_configured_totals(hub_setup: HubSetup) -> None:
    """Before her server starts, the spawner writes each of the hub's totals into alice's
    cgroups (memory, CPU as a CFS quota, pids), and she cannot raise any of them."""
    alice = hub_setup.users["alice"]
    spawned(hub_setup, "alice")
    folders = user_cgroups(alice)
    limits = {
        "memory": folders["memory"] / "memory.limit_in_bytes",
        "cpu": folders["cpu"] / "cpu.cfs_quota_us",
        "pids": folders["pids"] / "pids.max",
    }
    assert int(limits["memory"].read_text()) == USER_MEMORY
    quota = int(limits["cpu"].read_text())
    period = int((folders["cpu"] / "cpu.cfs_period_us").read_text())
    assert quota > 0 and quota / period == USER_CPUS, f"CPU quota {quota} per {period} us"
    assert limits["pids"].read_text().strip() == str(USER_PIDS)
    for path in limits.values():
        raised = alice.run(["sh", "-c", f"echo -1 > {path}"])
        assert raised.returncode != 0 and "Permission denied" in raised.stderr, raised


def test_python3_is_refused_with_a_4xx_that_says_why(hub_setup: HubSetup) -> None:
    client = spawned(hub_setup, "alice")
    for path, body in (
        ("/api/kernels", {"name": "python3"}),
        ("/api/sessions", {"path": "x.ipynb", "type": "notebook", "kernel": {"name": "python3"}}),
    ):
        refused = client.error("POST", path, body)
        assert refused.code == 403, (path, refused)
        assert "'python3' is not allowed on this server" in refused.reply["message"], refused
        assert KERNEL in refused.reply["message"], refused
    assert client.api("GET", "/api/kernels") == []


def test_a_kernelspec_of_her_own_gives_alice_nothing(hub_setup: HubSetup) -> None:
    """Alice writes kernelspecs into her own Jupyter data folder (a local, unsandboxed
    python, one under the sandboxed kernel's name) and a server config into ~/.jupyter:
    her server serves only the administrator's kernelspec and refuses hers."""
    alice = hub_setup.users["alice"]
    hub_setup.hub.stop_server(alice.name)
    local = {"argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
             "display_name": "PLANTED", "language": "python"}  # fmt: skip
    planted = alice.python(
        "import json, os\n"
        "for name in ('evil', 'sandbox-python'):\n"
        "    d = os.path.expanduser('~/.local/share/jupyter/kernels/' + name)\n"
        "    os.makedirs(d, exist_ok=True)\n"
        f"    open(d + '/kernel.json', 'w').write(json.dumps({local!r}))\n"
        "os.makedirs(os.path.expanduser('~/.jupyter'), exist_ok=True)\n"
        "open(os.path.expanduser('~/.jupyter/jupyter_server_config.py'), 'w').write(\n"
        '    \'c.KernelSpecManager.allowed_kernelspecs = {"evil", "sandbox-python"}\\n\'\n'
        "    'c.SandboxedOnlyKernelSpecManager.admin_kernel_dirs = [\"' + os.path.expanduser('~/.local/share/jupyter/kernels') + '\"]\\n')\n"
    )
    assert planted.returncode == 0, planted.stderr
    client = spawned(hub_setup, "alice")
    specs = client.api("GET", "/api/kernelspecs")
    assert set(specs["kernelspecs"]) == {KERNEL}, specs
    assert specs["kernelspecs"][KERNEL]["spec"]["display_name"] != "PLANTED"
    refused = client.error("POST", "/api/kernels", {"name": "evil"})
    assert refused.code == 403 and "'evil' is not allowed" in refused.reply["message"], refused
    kernel = client.start_kernel()
    out = client.execute(kernel, "import platform; print(platform.release())").strip()
    assert out != os.uname().release, "the planted sandbox-python ran on the host"
    client.api("DELETE", f"/api/kernels/{kernel}")


def test_max_kernels_per_server(hub_setup: HubSetup) -> None:
    client = spawned(hub_setup, "alice")
    kernels = [client.start_kernel() for _ in range(MAX_KERNELS)]
    for path, body in (
        ("/api/kernels", {"name": KERNEL}),
        ("/api/sessions", {"path": "y.ipynb", "type": "notebook", "kernel": {"name": KERNEL}}),
    ):
        refused = client.error("POST", path, body)
        assert refused.code == 403, (path, refused)
        assert f"max_kernels={MAX_KERNELS}" in refused.reply["message"], refused
    assert len(client.api("GET", "/api/kernels")) == MAX_KERNELS
    client.api("DELETE", f"/api/kernels/{kernels.pop()}")
    kernels.append(client.start_kernel())  # a slot freed by a shutdown is usable again
    for kernel in kernels:
        client.api("DELETE", f"/api/kernels/{kernel}")


def test_idle_kernels_are_culled_with_their_sandboxes(hub_setup: HubSetup) -> None:
    """The server's own culling (MappingKernelManager.cull_idle_timeout, an hour in the
    example) removes an idle kernel's sandbox; here with a 10 s timeout."""
    alice = hub_setup.users["alice"]
    extra = hub_setup.admin / "hub" / f"extra-args-{alice.name}.json"
    hub_setup.hub.stop_server(alice.name)
    extra.write_text(json.dumps(["--MappingKernelManager.cull_idle_timeout=10",
                                 "--MappingKernelManager.cull_interval=2"]))  # fmt: skip
    try:
        client = spawned(hub_setup, "alice")
        kernel = client.start_kernel()
        assert client.execute(kernel, "print('up')").strip() == "up"
        assert sandbox_pids(alice)
        wait_for(lambda: client.api("GET", "/api/kernels") == [], "the idle kernel to be culled")
        wait_for(lambda: not sandbox_pids(alice), "the culled kernel's sandbox to go", 60)
    finally:
        extra.unlink()
        hub_setup.hub.stop_server(alice.name)


def test_server_stop_removes_every_sandbox(hub_setup: HubSetup) -> None:
    alice = hub_setup.users["alice"]
    client = spawned(hub_setup, "alice")
    for _ in range(MAX_KERNELS):
        client.start_kernel()
    wait_for(lambda: len(sandbox_pids(alice)) >= MAX_KERNELS, "the sandboxes")
    hub_setup.hub.stop_server(alice.name)
    wait_for(lambda: not alice.processes(), f"every process of {alice.name} to end", 60)


def hub_login(hub: Hub, name: str, password: str) -> int:
    """POST the hub's login form as a browser does (with its ``_xsrf`` cookie and field):
    the status, 302 for a login, 403 for a refusal ("Invalid username or password")."""
    with urllib.request.urlopen(f"{hub.url}/hub/login", timeout=60) as page:
        form = page.read().decode()
        cookies = "; ".join(c.split(";", 1)[0] for c in page.headers.get_all("Set-Cookie", []))
    found = re.search(r'name="_xsrf" value="([^"]+)"', form)
    assert found, form
    body = urllib.parse.urlencode({"username": name, "password": password, "_xsrf": found[1]})

    class Stay(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    request = urllib.request.Request(
        f"{hub.url}/hub/login", data=body.encode(), headers={"Cookie": cookies}
    )
    try:
        with urllib.request.build_opener(Stay).open(request, timeout=60) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_only_the_allowed_groups_accounts_log_in_with_their_passwords(
    hub_setup: HubSetup,
) -> None:
    """Issue 20, 3: the example as it is lets people log in (JupyterHub 5 and later let
    nobody in without an allow config): the example's PAM authenticator, an account of the
    example's group with its own password. A wrong password, and an account outside the
    group with its right password, are refused."""
    hub, alice = hub_setup.hub, hub_setup.users["alice"]
    outsider = SystemUser("carol").create()
    try:
        assert hub_login(hub, alice.name, alice.password) == 302, hub.log()
        assert hub_login(hub, alice.name, alice.password + "x") == 403
        assert hub_login(hub, outsider.name, outsider.password) == 403
        assert f"User '{outsider.name}' not allowed." in hub.log()  # by the group, not PAM
    finally:
        outsider.remove()


BROWSER_CELL = (
    "import os, platform, socket\n"
    "print('SANDBOX release', platform.release(), 'uid', os.getuid(), 'host', socket.gethostname(),\n"
    "      'home', os.path.exists(%r))"
)


def log_in(page: Page, hub: Hub, user: SystemUser) -> None:
    """Log in on the hub's page with the account's own password (the example's PAM
    authenticator; the user is in its allowed group); the hub spawns the user's server and
    JupyterLab opens."""
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", user.name)
    page.fill("#password_input", user.password)
    page.click("#login_submit")
    page.wait_for_url(f"**/user/{user.name}/lab**")


def test_a_user_in_a_browser_through_the_hub(hub_setup: HubSetup) -> None:
    """Log in on the hub's page (PAM, the account's password), let it spawn the server, open a
    notebook on the sandboxed kernel in JupyterLab, run a cell; screenshot saved as
    test-artifacts/jupyterhub-sandboxed.png."""
    hub, bob = hub_setup.hub, hub_setup.users["bob"]
    hub.stop_server(bob.name)  # the login spawns it
    nb = {
        "cells": [{"cell_type": "code", "execution_count": None, "id": "c0", "metadata": {},
                   "outputs": [], "source": BROWSER_CELL % str(bob.home)}],
        "metadata": {"kernelspec": {"name": KERNEL, "display_name": "Python 3 (sandboxed)",
                                    "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }  # fmt: skip
    shot = REPO / "test-artifacts" / "jupyterhub-sandboxed.png"
    shot.unlink(missing_ok=True)
    with chromium_page(REPO / "test-artifacts" / "jupyterhub-failure.png") as page:
        log_in(page, hub, bob)
        # The notebook, written through the user's own server (as the user).
        client = hub_setup.client("bob")
        client.api("PUT", "/api/contents/hub-test.ipynb",
                   {"type": "notebook", "format": "json", "content": nb})  # fmt: skip
        page.goto(f"{client.url}/lab/tree/hub-test.ipynb")
        cell = page.locator(".jp-Notebook .jp-Cell").first
        cell.wait_for()
        kernel_name = page.locator(".jp-NotebookPanel-toolbar .jp-KernelName")
        wait_for(lambda: "sandboxed" in kernel_name.inner_text(), "the kernel's name")
        page.locator(
            ".jp-NotebookPanel-toolbar .jp-Notebook-ExecutionIndicator[data-status='idle']"
        ).wait_for()
        cell.locator(".jp-InputPrompt").click()
        page.keyboard.press("Control+Enter")
        out = cell.locator(".jp-OutputArea-output", has_text="SANDBOX release")
        out.wait_for()
        words = out.inner_text().split()
        assert words[2] != os.uname().release, f"ran on the host kernel: {words}"
        assert words[4] == "1000" and words[8] == "False", words
        news = page.locator(".jp-toast-button", has_text="No")  # JupyterLab's news prompt
        if news.count():
            news.first.click()
            news.first.wait_for(state="detached")
        page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    sessions = hub_setup.client("bob").api("GET", "/api/sessions")
    assert [s["kernel"]["name"] for s in sessions] == [KERNEL], sessions


# Alice's own server, taken over by Alice herself (her terminal, or any shell of hers, is
# her uid): she copies its listening socket (pidfd_getfd: same uid), stops the server so
# the hub still sees it alive (its pid runs), and answers on that socket with her page.
IMPOSTOR = r"""
import ctypes, os, signal, socket, sys, urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer
pid, page = int(sys.argv[1]), open(sys.argv[2], "rb").read()
environ = dict(v.split("=", 1) for v in open(f"/proc/{pid}/environ").read().split("\0") if "=" in v)
port = urllib.parse.urlparse(environ["JUPYTERHUB_SERVICE_URL"]).port
pidfd, listener = os.pidfd_open(pid), None
for fd in os.listdir(f"/proc/{pid}/fd"):
    copy = ctypes.CDLL(None, use_errno=True).syscall(438, pidfd, int(fd), 0)  # pidfd_getfd
    if copy < 0:
        continue
    sock = socket.socket(fileno=copy) if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:") else None
    if sock and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) and sock.getsockname()[1] == port:
        listener = sock
        break
    os.close(copy) if sock is None else sock.close()
assert listener, f"no listening socket on port {port} in {pid}"
os.kill(pid, signal.SIGSTOP)
class Page(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)
    def log_message(self, *args):
        pass
server = HTTPServer(("127.0.0.1", 0), Page, bind_and_activate=False)
server.socket.close()
server.socket = listener
print("SERVING", flush=True)
server.serve_forever()
"""

# Alice's page, opened by Bob: from her server's origin, the hub's _xsrf cookie (scoped to
# /hub/, read through a frame of /hub/logo) and a token for Bob from the hub's API, asked
# on the page's own origin and on the hub's; with a token, a terminal on Bob's server.
TAKEOVER_PAGE = """<!doctype html><html><body><pre id="result"></pre><script>
const HUB = %(hub)s, VICTIM = %(victim)s;
function frame(src, name) {
  return new Promise(done => {
    const f = document.createElement("iframe");
    f.name = name || "";
    f.onload = () => done(f);
    setTimeout(() => done(f), 20000);
    f.src = src;
    document.body.appendChild(f);
  });
}
async function attempt(base) {
  const seen = {};
  try {
    const f = await frame(base + "/hub/logo");
    try { seen.cookies = f.contentDocument.cookie; } catch (e) { seen.cookies = "unreadable: " + e; }
    const xsrf = (/(?:^|;\\s*)_xsrf=([^;]*)/.exec(seen.cookies) || [])[1] || "";
    const reply = await fetch(base + "/hub/api/users/" + VICTIM + "/tokens", {
      method: "POST", credentials: "include",
      headers: {"Content-Type": "application/json", "X-XSRFToken": xsrf},
      body: JSON.stringify({note: "taken by alice's page", expires_in: 600}),
    });
    seen.status = reply.status;
    seen.token = (await reply.json().catch(() => ({}))).token || null;
    if (seen.token) {
      const shell = await fetch(base + "/user/" + VICTIM + "/api/terminals", {
        method: "POST", headers: {Authorization: "token " + seen.token},
      });
      seen.terminal = shell.status;
    }
  } catch (e) {
    seen.error = String(e);
  }
  return seen;
}
(async () => {
  const result = {};
  for (const base of ["", HUB]) result[base || "page origin"] = await attempt(base);
  await frame(HUB + "/hub/token", "hub-page");  // refused in a frame (frame-ancestors)
  const out = document.getElementById("result");
  out.textContent = JSON.stringify(result);
  out.dataset.done = "1";
})();
</script></body></html>
"""


def bobs_tokens(hub: Hub, bob: SystemUser) -> set[str]:
    return {t["id"] for t in hub.api("GET", f"/hub/api/users/{bob.name}/tokens")["api_tokens"]}


def test_a_page_on_alices_server_gets_no_token_for_bob(hub_setup: HubSetup) -> None:
    """Issue 19, 1: Alice serves her own page at her server's URL (her server's listening
    socket, copied), Bob, logged in to the hub in a real browser, opens it, and the page
    asks the hub for a token for Bob with his cookies. Each user's server has an origin of
    its own (``subdomain_host``), so the page reads none of the hub's cookies and gets no
    token: Bob's tokens are unchanged and no terminal opens on his server. Hub pages
    refuse to be framed. On the hub's origin (the recipe without subdomain_host) the page
    got a token (201) and a terminal on Bob's server."""
    hub, alice, bob = hub_setup.hub, hub_setup.users["alice"], hub_setup.users["bob"]
    alice_url = spawned(hub_setup, "alice").url
    bob_client = spawned(hub_setup, "bob")
    page_file = alice.home / "takeover.html"
    page_file.write_text(
        TAKEOVER_PAGE % {"hub": json.dumps(hub.url), "victim": json.dumps(bob.name)}
    )
    os.chown(page_file, alice.uid, alice.gid)
    server = server_pid(alice)
    impostor = alice.popen([str(SHARED_VENV / "bin/python"), "-c", IMPOSTOR, str(server),
                            str(page_file)])  # fmt: skip
    try:
        assert impostor.stdout is not None
        assert impostor.stdout.readline().strip() == "SERVING", impostor.communicate(timeout=10)
        with chromium_page(REPO / "test-artifacts" / "jupyterhub-takeover-failure.png") as page:
            log_in(page, hub, bob)
            before = bobs_tokens(hub, bob)
            page.goto(f"{alice_url}/takeover.html")
            done = page.locator("#result[data-done]")
            done.wait_for()
            result = json.loads(done.inner_text())
            hub_page = page.frame(name="hub-page")
            assert hub_page is not None
            framed_hub_page = hub_page.url
        assert bobs_tokens(hub, bob) == before, f"the page got a token for bob: {result}"
        assert set(result) == {"page origin", hub.url}, result
        for where, seen in result.items():
            assert seen.get("status") != 201 and not seen.get("token"), (where, result)
            assert "_xsrf" not in seen.get("cookies", ""), (where, result)
        assert bob_client.api("GET", "/api/terminals") == []
        # A hub page in a frame is an error page: JupyterHub's own frame-ancestors 'none'.
        assert framed_hub_page.startswith("chrome-error:"), framed_hub_page
        with urllib.request.urlopen(f"{hub.url}/hub/login", timeout=60) as login:
            policy = login.headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in policy, policy
    finally:
        impostor.kill()
        impostor.wait()
        os.kill(server, signal.SIGCONT)
        hub.stop_server(alice.name)


ALLOCATE = """
import time
chunks = []
try:
    for _ in range(%d):
        chunk = bytearray(50 * 2**20)
        for i in range(0, len(chunk), 4096):
            chunk[i] = 1
        chunks.append(chunk)
    print("ALLOCATED", len(chunks) * 50, flush=True)
except MemoryError:
    print("MemoryError at", len(chunks) * 50, flush=True)
"""


def allocate(client: UserClient, kernel: str, mib: int) -> str:
    """Allocate and hold ``mib`` MiB in the kernel: 'ALLOCATED', 'MemoryError' or 'ENDED'
    (the kernel's sandbox was killed: its websocket ended or went quiet)."""
    try:
        out = client.execute(kernel, ALLOCATE % (mib // 50), timeout=90)
    except (AssertionError, TimeoutError, OSError) as exc:
        return f"ENDED ({type(exc).__name__})"
    return out.split()[0] if out.strip() else f"ENDED ({out!r})"


def holds(client: UserClient, kernel: str) -> int:
    """MiB the kernel still holds from ALLOCATE (0 for a fresh kernel, -1 if it is gone)."""
    try:
        out = client.execute(kernel, "print(len(globals().get('chunks', [])) * 50)", timeout=60)
    except (AssertionError, TimeoutError, OSError):
        return -1
    return int(out.split()[-1]) if out.strip().split()[-1:] and out.split()[-1].isdigit() else -1


def test_a_users_memory_bound_holds_across_all_their_kernels(hub_setup: HubSetup) -> None:
    """Each kernel may hold 700 MiB (its own cap is 2 GiB), but not two of them at once:
    everything of alice's server shares her user_memory_limit of 1.5 GiB, so one of them
    is ended. Bob, on the same host, is not affected."""
    alice = hub_setup.users["alice"]
    client = spawned(hub_setup, "alice")
    memory = user_cgroups(alice)["memory"]
    first, second = client.start_kernel(), client.start_kernel()
    assert allocate(client, second, 700) == "ALLOCATED"  # alone: fits (the control)
    client.api("POST", f"/api/kernels/{second}/restart")  # a fresh sandbox, memory returned
    assert allocate(client, first, 700) == "ALLOCATED"
    (memory / "memory.max_usage_in_bytes").write_text("0")  # the peak from here on
    allocate(client, second, 700)
    held = {k: holds(client, k) for k in (first, second)}
    assert sorted(held.values())[0] < 700, f"both kernels hold 700 MiB in alice's 1.5 GiB: {held}"
    peak = int((memory / "memory.max_usage_in_bytes").read_text())
    # The kernel forces the charges it may not fail (some kernel memory) past the limit, so
    # the peak may pass it by a few pages (seen: one).
    slack = 2**20
    assert USER_MEMORY * 0.95 <= peak <= USER_MEMORY + slack, (
        f"not alice's bound that stopped it: {peak}"
    )
    bob = spawned(hub_setup, "bob")
    kernel = bob.start_kernel()
    assert allocate(bob, kernel, 700) == "ALLOCATED"
    bob.api("DELETE", f"/api/kernels/{kernel}")
    hub_setup.hub.stop_server(alice.name)  # whatever state the OOM left her kernels in


def test_bobs_kernels_start_although_alice_took_his_old_state_folders(
    hub_setup: HubSetup,
) -> None:
    """Issue 19, finding 4: runsc's state folder was the predictable
    /tmp/sandbox-kernel-runsc-<uid> (bubblewrap's and firejail's /tmp/sandbox-kernel-pipe-<uid>),
    and alice, by creating bob's first, made every kernel start of his fail. Now each server
    has a runtime folder (XDG_RUNTIME_DIR) made by the hub in a folder of root's: her
    folders change nothing, and she cannot make his runtime folder first."""
    hub, alice, bob = hub_setup.hub, hub_setup.users["alice"], hub_setup.users["bob"]
    spawned(hub_setup, "alice")  # the runtime folders' parent exists
    hub.stop_server(bob.name)
    squatted = [Path(f"/tmp/sandbox-kernel-{kind}-{bob.uid}") for kind in ("runsc", "pipe")]
    try:
        for folder in squatted:
            made = alice.run(["mkdir", "-m", "700", str(folder)])
            assert made.returncode == 0 and folder.stat().st_uid == alice.uid, made
        taken = alice.run(["mkdir", "-m", "700", str(bob.runtime_dir())])
        assert taken.returncode != 0 and "Permission denied" in taken.stderr, taken
        client = spawned(hub_setup, "bob")
        kernel = client.start_kernel()
        assert client.execute(kernel, "print('up')").strip() == "up"
        runtime = bob.runtime_dir()
        for folder, owner, mode in (
            (runtime.parent, 0, 0o755), (runtime, bob.uid, 0o700), (runsc_state(bob), bob.uid, 0o700)
        ):  # fmt: skip
            st = folder.lstat()
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (owner, mode), (folder, st)
        client.api("DELETE", f"/api/kernels/{kernel}")
    finally:
        for folder in squatted:
            shutil.rmtree(folder, ignore_errors=True)


# A 1 MiB System V segment nobody removes (shmget(IPC_PRIVATE, 1 MiB, IPC_CREAT | 0600)).
SYSV_SEGMENT = (
    "import ctypes; n = ctypes.CDLL(None).shmget(0, 1 << 20, 0o1600); print('SEGMENT', n)"
)


def test_what_alice_leaves_in_shared_memory_goes_when_her_server_stops(
    hub_setup: HubSetup,
) -> None:
    """Issue 19, finding 5: files alice wrote to /dev/shm from her terminal outlived her
    server and its cgroups, memory no per-user bound held any more. Now they go when the
    server stops, also in a folder of bob's open to everyone, and so does a System V
    segment she made; bob's own files stay."""
    hub, alice, bob = hub_setup.hub, hub_setup.users["alice"], hub_setup.users["bob"]
    token = secrets.token_hex(4)
    shared, bobs = Path(f"/dev/shm/sk-test-shared-{token}"), Path(f"/dev/shm/sk-test-bob-{token}")
    made = bob.run(["sh", "-c", f"mkdir -m 1777 {shared} && echo b > {bobs}"])
    assert made.returncode == 0, made
    left = [Path(f"/dev/shm/sk-test-alice-{token}"), Path(f"/dev/shm/sk-test-dir-{token}"),
            shared / f"alice-{token}"]  # fmt: skip
    segment = -1
    try:
        client = spawned(hub_setup, "alice")
        client.terminal(
            f"head -c 64M /dev/zero > {left[0]} && mkdir {left[1]} && "
            f"head -c 1M /dev/zero > {left[1]}/f && echo a > {left[2]} && echo WROTE-$((6*7))",
            "WROTE-42",
        )
        assert all(p.lstat().st_uid == alice.uid for p in left), left
        out = client.terminal(f"{SHARED_VENV}/bin/python -c {SYSV_SEGMENT!r}", r"SEGMENT \d+\r")
        segment = int(re.findall(r"SEGMENT (\d+)\r", out)[-1])
        assert segment in segments_of(alice.uid, Path("/proc/sysvipc/shm").read_text())
        hub.stop_server(alice.name)
        assert segment not in segments_of(alice.uid, Path("/proc/sysvipc/shm").read_text())
        segment = -1  # gone (its id may be another's later)
        still = [str(p) for p in left if os.path.lexists(p)]
        assert not still, f"alice's files outlived her server: {still}"
        assert bobs.exists() and shared.is_dir(), "bob's files went with alice's server"
        assert not alice.runtime_dir().exists(), "her runtime folder outlived her server"
    finally:
        if segment >= 0:
            subprocess.run(["ipcrm", "-m", str(segment)], capture_output=True, check=False)
        shutil.rmtree(shared, ignore_errors=True)
        for path in (bobs, *left[:1]):
            path.unlink(missing_ok=True)
        shutil.rmtree(left[1], ignore_errors=True)


def test_a_server_killed_outright_leaves_no_process_and_no_cgroup(hub_setup: HubSetup) -> None:
    """Issue 19, finding 6: JupyterHub calls the spawner's stop only for a server that still
    runs, so when alice kill -9'd her own server, a `setsid sleep 900` from her terminal
    (and her kernels' sandboxes) stayed in her cgroups, and the folders stayed hers. Now the
    poll that finds the server dead ends them and removes the folders."""
    alice = hub_setup.users["alice"]
    client = spawned(hub_setup, "alice")
    kernel = client.start_kernel()
    assert client.execute(kernel, "print('up')").strip() == "up"
    client.terminal("setsid -f sleep 900 </dev/null >/dev/null 2>&1; echo STARTED-$((2+2))",
                    "STARTED-4")  # fmt: skip
    [sleeper] = [p for p in alice.processes() if cmdline(p) == ["sleep", "900"]]
    sandboxes = sandbox_pids(alice)
    assert sandboxes, "the kernel's sandbox"
    os.kill(server_pid(alice), signal.SIGKILL)

    def left() -> list[str]:
        alive = [" ".join(cmdline(p)) for p in (sleeper, *sandboxes) if cmdline(p)]
        folders = [*user_cgroups(alice).values(), alice.runtime_dir()]
        return alive + [str(d) for d in folders if d.exists()]

    deadline = time.monotonic() + 120  # the hub polls every 5 s here (30 s by default)
    while left() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left(), f"left after alice's server was killed: {left()}"
    wait_for(lambda: not alice.processes(), f"every process of {alice.name} to end", 60)
    hub_setup.hub.stop_server(alice.name)  # the hub knows it is gone


def test_the_hubs_state_is_in_a_folder_only_root_can_enter(hub_setup: HubSetup) -> None:
    """Issue 19, finding 7: the recipe left the hub's database (0644), cookie secret and pid
    file in whatever folder it was started from. The example puts them in a folder of
    root's, 0700, which alice cannot enter."""
    hub, alice = hub_setup.hub, hub_setup.users["alice"]
    state = hub_setup.admin / "hub-state"
    st = state.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o700), st
    files = ["jupyterhub.sqlite", "jupyterhub_cookie_secret", "jupyterhub.pid"]
    assert set(files) <= {p.name for p in state.iterdir()}, list(state.iterdir())
    started_in = [n for n in (*files, "jupyterhub-proxy.pid") if (hub.started_from / n).exists()]
    assert not started_in, f"hub state in the folder it was started from: {started_in}"
    for name in files:
        read = alice.run(["cat", str(state / name)])
        assert read.returncode != 0 and "Permission denied" in read.stderr, (name, read)


def test_hub_stop_removes_every_server_and_sandbox(hub_setup: HubSetup) -> None:
    """Last: the hub stopped like a service (SIGTERM) with both users' servers and kernels
    running stops the servers, whose sandboxes go with them, and the proxy; no port of
    the hub is left open."""
    from tests.helpers import listening_ports

    hub = hub_setup.hub
    for who in ("alice", "bob"):
        client = spawned(hub_setup, who)
        client.start_kernel()
        assert sandbox_pids(hub_setup.users[who])
    code = hub.stop()
    assert code == 0, f"jupyterhub exited with {code}:\n{hub.log()}"
    for user in hub_setup.users.values():
        wait_for(lambda u=user: not u.processes(), f"every process of {user.name} to end", 60)
    open_ports = set(listening_ports()) & {hub.port, hub.hub_port, hub.api_port}
    assert not open_ports, f"ports of the hub still listening: {open_ports}"
