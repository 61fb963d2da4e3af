"""A real JupyterHub, recipe (a) of docs/jupyterhub.md: two real system users made by the
test, LocalProcessSpawner, configurable-http-proxy, each user's server running as that
user from the shared venv with the documented configs, and the rootless-runsc kernelspec
(installed by root) as the only kernel. Everything goes through the hub's proxy
(``/hub/api``, ``/user/<name>/api/...``, the kernel websocket) with tokens from the hub API.

The tests share one hub (module fixture) and run in file order; the last one stops the
hub. The fixture's teardown removes the users, their homes and runsc state, and fails if
any process or cgroup of theirs was left."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox_kernel.hub import end_all
from tests.helpers import REPO, ForeignClient, ending
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
    proc_ids,
    reinstall_shared_venv,
    user_cgroups,
)

EXAMPLES = REPO / "docs" / "examples"
KERNEL = "sandbox-python"
# The kernelspec an administrator installs for recipe (a): no warm pool, so a server's
# sandboxes are exactly its kernels (at most max_kernels), on gVisor's ptrace platform
# (a class of idle kernels; docs/jupyterhub.md).
INSTALL = ["--backend", "runsc", "--pool-size", "0", "--platform", "ptrace"]
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


def server_config(admin: Path) -> str:
    """docs/examples/jupyter_server_config.py as documented, with the test's admin folder
    for the kernelspecs and a lower max_kernels."""
    text = (EXAMPLES / "jupyter_server_config.py").read_text()
    assert '"/usr/local/share/jupyter/kernels"' in text
    text = text.replace(
        '"/usr/local/share/jupyter/kernels"', repr(str(admin / "share/jupyter/kernels"))
    )
    return text + f"\nc.SandboxProvisioner.max_kernels = {MAX_KERNELS}\n"


def hub_config(admin: Path, venv: Path, users: list[str]) -> str:
    """docs/examples/jupyterhub_config.py as documented (paths replaced by the test's), the
    dummy authenticator for the test's users, and per-user extra server arguments the
    test writes to ``extra-args-<user>.json`` before a (re)start."""
    text = (EXAMPLES / "jupyterhub_config.py").read_text()
    for old, new in (
        ("/opt/sandbox-kernel/venv", str(venv)),
        ("/etc/jupyter/sandbox", str(admin / "etc")),
        ("/usr/local/share/jupyter", str(admin / "share/jupyter")),
    ):
        assert old in text, old
        text = text.replace(old, new)
    return (
        text
        + f"""
c.UserCgroupSpawner.user_memory_limit = {USER_MEMORY}
c.UserCgroupSpawner.user_cpu_limit = {USER_CPUS}
c.UserCgroupSpawner.user_pids_limit = {USER_PIDS}
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = "sandbox-test-password"
c.Authenticator.allowed_users = {set(users)!r}
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 180


def _extra_args(spawner):
    import json, os
    path = os.path.join({str(admin / "hub")!r}, f"extra-args-{{spawner.user.name}}.json")
    base = [a for a in spawner.args if not a.startswith("--MappingKernelManager.")]
    spawner.args = base + (json.load(open(path)) if os.path.exists(path) else [])


c.Spawner.pre_spawn_hook = _extra_args
"""
    )


@pytest.fixture(scope="module")
def hub_setup() -> Iterator[HubSetup]:
    venv = reinstall_shared_venv()
    with admin_dir() as admin:
        users = {who: SystemUser(who) for who in ("alice", "bob")}
        hub: Hub | None = None
        failures: list[str] = []
        try:
            for user in users.values():
                user.create()
            # What an administrator installs: the kernelspec (root's umask of 077 would
            # hide a badly installed one from the users) and the server config.
            install = subprocess.run(
                [sys.executable, "-m", "sandbox_kernel.cli.main", "install", "--prefix", str(admin),
                 "--name", KERNEL, *INSTALL],
                capture_output=True, text=True, timeout=120, preexec_fn=lambda: os.umask(0o077),
            )  # fmt: skip
            assert install.returncode == 0, install.stderr
            (admin / "etc").mkdir(mode=0o755)
            (admin / "etc" / "jupyter_server_config.py").write_text(server_config(admin))
            (admin / "etc" / "jupyter_server_config.py").chmod(0o644)
            (admin / "hub").mkdir(mode=0o700)
            hub = Hub(admin / "hub", hub_config(admin, venv, [u.name for u in users.values()]))
            hub.start()
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
                stale = [str(d) for d in user_cgroups(user).values() if d.exists()]
                if stale:
                    end_all(user_cgroups(user))
                    failures.append(f"{who}'s cgroups were left: {stale}")
                if Path(f"/home/{user.name}").exists():
                    failures.append(f"{who}'s home was not removed")
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
        "GET", f"/user/{bob.name}/api/kernels", token=alice_client.token
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


def runsc_state(user: SystemUser) -> Path:
    """The user's runsc state (LocalProcessSpawner sets no XDG_RUNTIME_DIR): the runsc
    backend's per-user folder, 0700."""
    return Path(f"/tmp/sandbox-kernel-runsc-{user.uid}")


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
        assert f"TERMINAL-UID {user.uid} {user.gid}\r" in shell, shell
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


BROWSER_CELL = (
    "import os, platform, socket\n"
    "print('SANDBOX release', platform.release(), 'uid', os.getuid(), 'host', socket.gethostname(),\n"
    "      'home', os.path.exists(%r))"
)


def test_a_user_in_a_browser_through_the_hub(hub_setup: HubSetup) -> None:
    """Log in on the hub's page (dummy authenticator), let it spawn the server, open a
    notebook on the sandboxed kernel in JupyterLab, run a cell; screenshot saved as
    test-artifacts/jupyterhub-sandboxed.png."""
    from tests.integration.test_browser import CHROMIUM, WAIT_MS, require_browser

    sync_playwright = require_browser()
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
    failure = REPO / "test-artifacts" / "jupyterhub-failure.png"
    shot.parent.mkdir(exist_ok=True)
    for old in (shot, failure):
        old.unlink(missing_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(WAIT_MS)
            try:
                page.goto(f"{hub.url}/hub/login")
                page.fill("#username_input", bob.name)
                page.fill("#password_input", "sandbox-test-password")
                page.click("#login_submit")
                page.wait_for_url(f"**/user/{bob.name}/lab**")
                # The notebook, written through the user's own server (as the user).
                client = hub_setup.client("bob")
                client.api("PUT", "/api/contents/hub-test.ipynb",
                           {"type": "notebook", "format": "json", "content": nb})  # fmt: skip
                page.goto(f"{hub.url}/user/{bob.name}/lab/tree/hub-test.ipynb")
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
            except Exception:
                page.screenshot(path=str(failure))
                raise
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    sessions = hub_setup.client("bob").api("GET", "/api/sessions")
    assert [s["kernel"]["name"] for s in sessions] == [KERNEL], sessions


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
