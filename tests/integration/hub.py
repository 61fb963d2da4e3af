"""A real JupyterHub for the tests: system users created and removed by the test, the
world-readable shared venv their servers run from, the admin side of per-user cgroup
delegation, and the hub itself (configurable-http-proxy, LocalProcessSpawner) on
127.0.0.1, driven through its REST API and its proxy as JupyterLab would."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from sandbox_kernel.backends.cgroups import DELEGATED_PARENT
from sandbox_kernel.hub import RUNTIME_PARENT
from tests.helpers import REPO
from tests.integration.servers import free_port, ws_execute

SHARED_VENV = Path(os.environ.get("SANDBOX_KERNEL_SHARED_VENV", "/opt/sandbox-kernel/venv"))
SETUP = "run `scripts/quickstart.sh` as root (it installs configurable-http-proxy and runs scripts/shared-venv.sh)"
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CGROUP_ROOT = Path("/sys/fs/cgroup")


# -- the shared venv ----------------------------------------------------------------------------
def reinstall_shared_venv() -> Path:
    """This checkout, reinstalled (no deps) into the venv every user can run, so the users'
    servers test this code; fails with what to run if the venv or a piece is missing."""
    python = SHARED_VENV / "bin" / "python"
    if not os.access(python, os.X_OK):
        raise AssertionError(f"no shared venv at {SHARED_VENV}: {SETUP}")
    lock = SHARED_VENV.parent / ".sandbox-kernel-install.lock"
    with open(lock, "a") as held:  # one reinstall at a time on this host
        fcntl.flock(held, fcntl.LOCK_EX)
        out = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall",
             str(REPO)],
            capture_output=True, text=True, timeout=600, cwd="/",
        )  # fmt: skip
        assert out.returncode == 0, f"reinstalling {REPO} into {SHARED_VENV}:\n{out.stderr}"
        subprocess.run(["chmod", "-R", "a+rX", str(SHARED_VENV)], check=True)
    for tool in ("jupyterhub-singleuser", "sandbox-kernel"):
        assert os.access(SHARED_VENV / "bin" / tool, os.X_OK), f"{tool} missing: {SETUP}"
    return SHARED_VENV


def proxy_command() -> str:
    found = shutil.which("configurable-http-proxy", path=CLEAN_PATH)
    if found is None:
        raise AssertionError(f"configurable-http-proxy is not installed: {SETUP}")
    return found


# -- system users -------------------------------------------------------------------------------
def proc_ids(pid: int) -> dict[str, list[int]]:
    """Uid, Gid (real, effective, saved, fs) and Groups of a process ({} if it is gone)."""
    found: dict[str, list[int]] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return found
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups", "PPid"):
            found[key] = [int(v) for v in value.split()]
    return found


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def descendants(root: int) -> list[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        ppid = proc_ids(pid).get("PPid", [0])[0]
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


class SystemUser:
    """A real Unix account with a home, made for one test run (``useradd``) and removed
    with its home, its processes and its runsc state after it."""

    def __init__(self, stem: str) -> None:
        self.name = f"{stem}-{secrets.token_hex(2)}"
        self.uid = self.gid = -1
        self.home = Path("/nonexistent")
        self.password = secrets.token_urlsafe(16)  # the account's own: PAM checks it

    def create(self, groups: tuple[str, ...] = ()) -> SystemUser:
        """``useradd`` (also in ``groups``, which must exist) and ``chpasswd``."""
        extra = ["--groups", ",".join(groups)] if groups else []
        subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/bash", "--user-group", *extra,
             self.name],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(
            ["chpasswd"], input=f"{self.name}:{self.password}\n", text=True, check=True,
            capture_output=True,
        )  # fmt: skip
        entry = pwd.getpwnam(self.name)
        self.uid, self.gid, self.home = entry.pw_uid, entry.pw_gid, Path(entry.pw_dir)
        return self

    def env(self) -> dict[str, str]:
        return {"HOME": str(self.home), "USER": self.name, "LOGNAME": self.name,
                "PATH": CLEAN_PATH, "LANG": "C.UTF-8", "SHELL": "/bin/bash"}  # fmt: skip

    def run(
        self, argv: list[str], timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` as this user (its uid, gid and groups, nothing else of root's)."""
        return subprocess.run(
            ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups",
             "--inh-caps=-all", "--", *argv],
            capture_output=True, text=True, timeout=timeout, env=self.env(), cwd=self.home,
            input=input,
        )  # fmt: skip

    def popen(self, argv: list[str]) -> subprocess.Popen[str]:
        """``argv`` started as this user (as ``run``), left running; stdout and stderr piped."""
        return subprocess.Popen(
            ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups",
             "--inh-caps=-all", "--", *argv],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env(),
            cwd=self.home,
        )  # fmt: skip

    def python(self, code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.run([str(SHARED_VENV / "bin" / "python"), "-c", code], timeout=timeout)

    def processes(self) -> list[int]:
        """Every process with this user's uid (real, effective or saved)."""
        return [p for p in all_pids() if self.uid in proc_ids(p).get("Uid", [])[:3]]

    def remove(self) -> list[str]:
        """Kill what is left of this user (by pid), remove the account, its home and its
        runsc state; return what had been left running (the caller decides if that fails)."""
        left = [" ".join(cmdline(p)) or str(p) for p in self.processes()]
        deadline = time.monotonic() + 10
        while (pids := self.processes()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.1)
        subprocess.run(["userdel", "--remove", self.name], capture_output=True, check=False)
        shutil.rmtree(self.home, ignore_errors=True)
        for entry in Path("/tmp").iterdir():  # the user's own files there (runsc state...)
            try:
                if entry.lstat().st_uid == self.uid:
                    shutil.rmtree(
                        entry
                    ) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            except OSError:
                pass
        return left

    def runtime_dir(self) -> Path:
        """The user's runtime folder, made by UserCgroupSpawner for their server."""
        return RUNTIME_PARENT / self.name

    def sandbox_state(self) -> list[str]:
        """Sandboxes the runsc backend still has state or a bundle of (for this user), in
        the runtime folder or the /tmp folder used without one."""
        bases = [
            self.runtime_dir() / "sandbox-kernel" / "runsc",
            Path(f"/tmp/sandbox-kernel-runsc-{self.uid}"),
        ]
        return [
            str(p)
            for base in bases
            for d in ("state", "bundles")
            if (base / d).is_dir()
            for p in (base / d).iterdir()
        ]


# -- per-user cgroups ---------------------------------------------------------------------------
def user_cgroups(user: SystemUser) -> dict[str, Path]:
    """Where UserCgroupSpawner puts the user's server: controller -> folder."""
    return {c: CGROUP_ROOT / c / DELEGATED_PARENT / user.name for c in ("memory", "cpu", "pids")}


def in_user_cgroups(user: SystemUser) -> set[int]:
    """Every process in the user's memory cgroup or a folder below it: the server, and the
    runsc sandboxes (run detached, so not below the server in the process tree)."""
    found: set[int] = set()
    for procs in user_cgroups(user)["memory"].rglob("cgroup.procs"):
        try:
            found.update(int(p) for p in procs.read_text().split())
        except OSError:
            pass  # a folder removed meanwhile
    return found


def cgroup_of(pid: int, controller: str) -> str:
    """The cgroup v1 path of ``pid`` in ``controller`` ("" if the process is gone)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    return ""


# -- the hub ------------------------------------------------------------------------------------
class HubError(Exception):
    def __init__(self, code: int, reply: dict[str, Any]) -> None:
        super().__init__(f"HTTP {code}: {reply}")
        self.code, self.reply = code, reply


@contextmanager
def loopback_subdomains() -> Iterator[None]:
    """Resolve every ``*.localhost`` name to 127.0.0.1 in this process, as Chromium does
    (RFC 6761) and glibc does not: the users' servers' own origins under a hub whose
    ``subdomain_host`` is ``http://localhost:<port>``."""
    original = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if isinstance(name, str) and name.lower().rstrip(".").endswith(".localhost"):
            host = "127.0.0.1"
        return original(host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
    try:
        yield
    finally:
        socket.getaddrinfo = original


class Hub:
    """``jupyterhub -f CONFIG`` as root from the shared venv (as documented), its proxy and
    hub on 127.0.0.1, with a service
    token (``self.token``) that may spawn, stop and make tokens for the test's users.
    ``config`` is written as it is; the test's own values go in the site file beside it
    (``jupyterhub_site_config.py``, which the config must load last, as the recipe's
    example does): ``site``, then this class's loopback ports, service token and, unless
    ``own_state`` is False, private state.
    A config that serves users' servers on subdomains (``subdomain_host``) gets
    ``http://localhost:<port>``: the users' origins are ``http://<user>.localhost:<port>``
    (``loopback_subdomains`` resolves them for the test's own clients)."""

    SITE = "jupyterhub_site_config.py"

    def __init__(
        self, workdir: Path, config: str, site: str = "", *, own_state: bool = True
    ) -> None:
        """``own_state``: the hub's database, cookie secret and pid file in ``workdir``;
        False: where ``config`` (or ``site``) puts them."""
        from traitlets.config import Application
        from traitlets.config.loader import PyFileConfigLoader

        self.workdir = workdir
        self.port, self.hub_port, self.api_port = free_port(), free_port(), free_port()
        self.url = f"http://localhost:{self.port}"  # the proxy listens on 127.0.0.1 only
        self.token = secrets.token_hex(32)
        self.proxy_token = secrets.token_hex(32)
        self.log_path = workdir / "hub.log"
        self.config_path = workdir / "jupyterhub_config.py"
        self.config_path.write_text(config)
        # Not the config's folder: a file the config names without a folder would be found
        # there only by chance (a service starts the hub elsewhere).
        self.started_from = workdir / "started-from"
        self.started_from.mkdir(mode=0o700, exist_ok=True)
        loaded = PyFileConfigLoader(self.config_path.name, str(workdir)).load_config()
        subdomains = "subdomain_host" in loaded.JupyterHub
        (workdir / self.SITE).write_text(
            "c = get_config()  # noqa: F821\n"
            + site
            + f"""
# The test's own: loopback ports, private state, a service token.
c.JupyterHub.bind_url = "http://127.0.0.1:{self.port}"
{f"c.JupyterHub.subdomain_host = {self.url!r}  # per-user origins, on loopback" if subdomains else ""}
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{self.hub_port}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.api_port}"
c.ConfigurableHTTPProxy.command = [{proxy_command()!r}]
{self._state(workdir) if own_state else ""}
c.ConfigurableHTTPProxy.pid_file = "{workdir}/proxy.pid"
c.JupyterHub.services = [{{"name": "sandbox-test", "api_token": {self.token!r}}}]
c.JupyterHub.load_roles = [{{
    "name": "sandbox-test", "services": ["sandbox-test"],
    "scopes": ["admin:users", "admin:servers", "tokens", "admin:server_state", "list:users",
               "read:users", "access:servers"],
}}]
"""
        )
        # The site file counts only if the config loads it (as JupyterHub does: -f PATH).
        app = Application()
        app.load_config_file(str(self.config_path))
        assert app.config.JupyterHub.bind_url == f"http://127.0.0.1:{self.port}", (
            f"the config does not load {self.SITE} from its own folder"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def _state(workdir: Path) -> str:
        return (
            f'c.JupyterHub.db_url = "sqlite:///{workdir}/jupyterhub.sqlite"\n'
            f'c.JupyterHub.cookie_secret_file = "{workdir}/cookie_secret"\n'
            f'c.JupyterHub.pid_file = "{workdir}/jupyterhub.pid"'
        )

    def start(self, timeout: float = 120) -> None:
        log = self.log_path.open("ab")
        env = {"PATH": CLEAN_PATH, "LANG": "C.UTF-8", "HOME": str(self.workdir),
               "CONFIGPROXY_AUTH_TOKEN": self.proxy_token}  # fmt: skip
        self.proc = subprocess.Popen(
            [str(SHARED_VENV / "bin" / "jupyterhub"), "-f", str(self.config_path)],
            cwd=self.started_from, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"jupyterhub exited early:\n{self.log()}")
            try:
                self.api("GET", "/hub/api/")
                return
            except (OSError, HubError):
                if time.monotonic() > deadline:
                    self.kill()
                    raise AssertionError(f"jupyterhub did not answer:\n{self.log()}") from None
                time.sleep(0.5)

    def stop(self, timeout: float = 120) -> int:
        """SIGTERM, as a service manager stops it; return its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"jupyterhub did not stop:\n{self.log()}") from None
        return int(self.proc.returncode)

    def kill(self) -> None:
        """Last resort for a failed test: the hub's session and its proxy (which runs in a
        session of its own; the users' servers are removed with their users)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        proxy = self.proxy_pid()
        if proxy is not None:
            os.kill(proxy, signal.SIGKILL)

    def proxy_pid(self) -> int | None:
        """The hub's configurable-http-proxy, if it still runs."""
        try:
            pid = int((self.workdir / "proxy.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if any("configurable-http-proxy" in a for a in cmdline(pid)) else None

    def log(self, tail: int = 12000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    # -- REST -------------------------------------------------------------------------------
    def api(
        self, method: str, path: str, body: Any = None, token: str | None = None,
        timeout: float = 60,
    ) -> Any:  # fmt: skip
        """A request through the proxy: ``path`` on the hub's origin (``/hub/api/...``) or
        a full URL (a user's server: ``UserClient.url``)."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"token {token or self.token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        url = path if "://" in path else self.url + path
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                reply = json.loads(raw)
            except ValueError:
                reply = {"message": raw.decode(errors="replace")[:2000]}
            raise HubError(int(exc.code), reply) from None
        return json.loads(raw) if raw else None

    def error(self, method: str, path: str, body: Any = None, token: str | None = None) -> HubError:
        try:
            reply = self.api(method, path, body, token)
        except HubError as exc:
            return exc
        raise AssertionError(f"{method} {path} succeeded: {reply}")

    def add_users(self, names: list[str]) -> None:
        """Make the hub know these (existing Unix) accounts, as an administrator does on the
        hub's admin page, so the service can spawn their servers before they log in."""
        self.api("POST", "/hub/api/users", {"usernames": names})

    def user_model(self, name: str) -> dict[str, Any]:
        return self.api("GET", f"/hub/api/users/{name}")  # type: ignore[no-any-return]

    def spawn(self, name: str, timeout: float = 180) -> None:
        try:
            self.api("POST", f"/hub/api/users/{name}/server")
        except HubError as exc:
            if exc.code != 400 or "already running" not in str(exc.reply):
                raise
        self._wait(name, ready=True, timeout=timeout)

    def stop_server(self, name: str, timeout: float = 180) -> None:
        try:
            self.api("DELETE", f"/hub/api/users/{name}/server")
        except HubError as exc:
            if exc.code != 400:
                raise
        self._wait(name, ready=False, timeout=timeout)

    def _wait(self, name: str, ready: bool, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            server = self.user_model(name)["servers"].get("")
            if (bool(server and server.get("ready")) and not server.get("pending")) == ready and (
                ready or not server
            ):
                return
            if time.monotonic() > deadline:
                state = "ready" if ready else "stopped"
                raise AssertionError(f"{name}'s server not {state}: {server}\n{self.log()}")
            time.sleep(0.5)

    def server_url(self, name: str) -> str:
        """The public URL of the user's server as the hub gives it, without the final "/":
        on the hub's origin (``/user/<name>``) or on the user's own (``subdomain_host``)."""
        model = self.api("GET", f"/hub/api/users/{name}?include_stopped_servers=1")
        server = model["servers"].get("")
        assert server, f"{name} has never had a server: spawn it first ({model})"
        url = str(server["url"]).rstrip("/")
        return url if "://" in url else self.url + url

    def user_token(self, name: str) -> str:
        reply = self.api("POST", f"/hub/api/users/{name}/tokens",
                         {"note": "sandbox-kernel hub test", "expires_in": 3600})  # fmt: skip
        return str(reply["token"])


class UserClient:
    """One user's single-user server through the hub's proxy, at its public URL (``url``),
    with that user's token: REST and the kernel websocket, as JupyterLab uses them."""

    def __init__(self, hub: Hub, user: SystemUser) -> None:
        self.hub, self.user = hub, user
        self.token = hub.user_token(user.name)
        self.url = hub.server_url(user.name)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        return self.hub.api(method, self.url + path, body, token=self.token)

    def error(self, method: str, path: str, body: Any = None) -> HubError:
        return self.hub.error(method, self.url + path, body, token=self.token)

    def start_kernel(self) -> str:
        return str(self.api("POST", "/api/kernels", {"name": "sandbox-python"})["id"])

    def execute(self, kernel_id: str, code: str, timeout: float = 180) -> str:
        return asyncio.run(self._execute(kernel_id, code, timeout))

    async def _execute(self, kernel_id: str, code: str, timeout: float) -> str:
        url = self.url.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
        ws = await websocket_connect(
            HTTPRequest(url, headers={"Authorization": f"token {self.token}"}, connect_timeout=60)
        )
        try:
            return await ws_execute(ws, code, self.user.name, timeout)
        finally:
            ws.close()

    def terminal(self, command: str, expect: str, timeout: float = 60) -> str:
        """Open a terminal (as JupyterLab does), type ``command``, return the output once
        it matches the regular expression ``expect`` (the terminal echoes the command: let
        only its output match); the terminal is closed after."""
        name = self.api("POST", "/api/terminals")["name"]
        try:
            return asyncio.run(self._terminal(name, command, expect, timeout))
        finally:
            self.api("DELETE", f"/api/terminals/{name}")

    async def _terminal(self, name: str, command: str, expect: str, timeout: float) -> str:
        url = self.url.replace("http", "ws", 1) + f"/terminals/websocket/{name}"
        ws = await websocket_connect(
            HTTPRequest(url, headers={"Authorization": f"token {self.token}"}, connect_timeout=60)
        )
        try:
            await ws.write_message(json.dumps(["stdin", command + "\r"]))
            out = ""
            while not re.search(expect, out):
                raw = await asyncio.wait_for(ws.read_message(), timeout)
                assert raw is not None, f"terminal closed: {out!r}"
                kind, *data = json.loads(raw)
                if kind == "stdout":
                    out += str(data[0])
            return out
        finally:
            ws.close()


@contextmanager
def admin_dir() -> Iterator[Path]:
    """A root-owned, world-readable folder for what an administrator installs (the
    server config, the kernelspec): pytest's own tmp folders are private to root."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="sandbox-kernel-hub-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
