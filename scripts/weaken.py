"""Weaken one isolation property at a time in a copy of the code; the tests must notice.

    .venv/bin/python scripts/weaken.py                 # every weakening (a quarter of an hour)
    .venv/bin/python scripts/weaken.py --only env-secret-names --only mounts-bwrap
    .venv/bin/python scripts/weaken.py --list
    .venv/bin/python scripts/weaken.py --baseline      # first the same tests, unweakened
    .venv/bin/python scripts/weaken.py --share 3       # CI: a third of them, by the date

For each weakening: copy the checkout (its git-tracked and untracked, not ignored, files)
to a temporary folder, replace one exact piece of source text there, and run the tests that
should notice, against real sandboxes, with the copy first on the import path (the kernel's
provisioner, backends and agent all come from the copy). Reports, per weakening, the tests
that failed. A weakening no test notices, or one whose text is no longer in the code, is a
failure of this script (exit code 1). The copy is removed afterwards; the tests clean up
their own sandboxes. docs/security.md shows its last table.

CI runs a rotating share (``--share N``): the weakenings are dealt into N shares in list
order (share K holds every Nth one, from the Kth), and the share is chosen by the UTC date,
so any N consecutive days of CI runs try every weakening (``--share K/N`` picks one).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ATTACKS = "tests/security/test_attacks.py"
BACKEND_ATTACKS = "tests/security/test_backend_attacks.py"

BRIDGE = "sk-weaken-bridge"  # the Docker network of the network-bridge weakening
PYTEST = (sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider")
Run = tuple[str, ...]  # pytest arguments of one run: a file and optionally "-k", expression


def attacks(k: str) -> Run:
    """The catalogue under the default backend (gVisor), attacks matching ``k``."""
    return (ATTACKS, "-k", k)


def on(backend: str, k: str) -> Run:
    """The catalogue (and the backend's other checks) under ``backend``, matching ``k``."""
    return (BACKEND_ATTACKS, "-k", f"{backend} and ({k})")


@dataclass(frozen=True)
class Weakening:
    name: str
    what: str
    path: str  # relative to the checkout
    old: str  # exact text, present once
    new: str
    runs: tuple[Run, ...]
    also: tuple[tuple[str, str, str], ...] = ()  # more (path, old, new) edits, same rules
    network: str = ""  # a Docker bridge network of that name exists while its tests run

    @property
    def edits(self) -> tuple[tuple[str, str, str], ...]:
        return ((self.path, self.old, self.new), *self.also) if self.path else self.also


def _docker(name: str, what: str, old: str, new: str, k: str, *extra: Run) -> Weakening:
    """A change to ``container_spec``: it applies to the docker and docker-runc backends."""
    return Weakening(
        name,
        what,
        "sandbox_kernel/backends/docker.py",
        old,
        new,
        (attacks(k), on("docker-runc", k), *extra),
    )


_BOOT = "sandbox_kernel/boot.py"
_NO_ROOT_CHECK_KERNEL = (
    _BOOT,
    "    if uid == 0:\n",
    "    if False:\n",
)
_NO_ROOT_CHECK_HELLO = (
    _BOOT,
    '    if not preflight.kernel_user_apart and hello.get("uid") == 0:\n',
    "    if False:\n",
)
_ROOT_TEST: Run = ("tests/integration/test_errors.py", "-k", "would_run_as_root")


def _bounds(k: str) -> Run:
    """The host-bounds attack ``k`` from a sandbox holding its pipe, under gVisor."""
    return ("tests/security/test_host_bounds.py", "-k", f"{k} and docker and not runc")


_SPEC_CAPS = '        "cap_drop": ["ALL"],\n'
_SECCOMP_OPT = "            seccomp_security_opt(host_kernel=runtime not in GVISOR_RUNTIMES),\n"
_SECCOMP = "sandbox_kernel/backends/seccomp.py"
_NS_RULES = "priv-namespaces or priv-user-namespace or priv-userns or clone3"
_ENV_TESTS: Run = ("tests/integration/test_environment.py",)
_FORBIDDEN_ENV = (
    'r"^(JPY_|JUPYTERHUB_|JUPYTER_|DOCKER_|SANDBOX_KERNEL_)|TOKEN|SECRET|PASSW|CREDENTIAL|API_KEY|"'
)


_RUNSC = "sandbox_kernel/backends/runsc.py"
_RUNSC_OCI = "sandbox_kernel/backends/runsc_oci.py"


def _snapshots(k: str) -> Run:
    """The snapshot-backed warm pool's tests (runsc backend, root) matching ``k``."""
    return ("tests/integration/test_runsc_snapshots.py", "-k", k)


def _clone_flag(flag: str, value: str) -> Weakening:
    return Weakening(
        f"seccomp-clone-{flag.removeprefix('CLONE_').lower()}",
        f"the seccomp rule refusing clone({flag}) removed (profile and bwrap filter)",
        _SECCOMP,
        f'    "{flag}": {value},\n',
        "",
        (attacks(_NS_RULES), on("docker-runc", _NS_RULES), on("bwrap", _NS_RULES)),
    )


WEAKENINGS: tuple[Weakening, ...] = (
    # -- the five (the agent's uid 0 check aside) -----------------------------------
    _docker(
        "mounts-docker",
        "a host folder bound read-only at /tmp/host (container_spec volumes)",
        '        "volumes": {},\n',
        '        "volumes": {"/usr/share/doc": {"bind": "/tmp/host", "mode": "ro"}},\n',
        "fs-",
    ),
    Weakening(
        "mounts-bwrap",
        "a host folder bound read-only at /tmp/host (bwrap_argv --ro-bind)",
        "sandbox_kernel/backends/bwrap.py",
        '        "--cap-drop", "ALL",\n',
        '        "--ro-bind", "/usr/share/doc", "/tmp/host",\n        "--cap-drop", "ALL",\n',
        (on("bwrap", "fs-"),),
    ),
    Weakening(
        "mounts-firejail",
        "the host's /dev/shm shared (firejail_argv --keep-dev-shm; firejail binds host "
        "folders only inside its chroot, so there is no read-only host bind to add)",
        "sandbox_kernel/backends/firejail.py",
        '        "--private-dev",\n',
        '        "--private-dev",\n        "--keep-dev-shm",\n',
        (on("firejail", "fs-"),),
    ),
    Weakening(
        "seccomp-clone3-runc",
        "the runc profile's clone3 -> ENOSYS rule removed",
        _SECCOMP,
        '        rules.append({**_deny(list(ENOSYS_SYSCALLS)), "errnoRet": ENOSYS})\n',
        "",
        (on("docker-runc", "priv- or clone3"),),
    ),
    Weakening(
        "seccomp-clone3-bwrap",
        "the bwrap filter's clone3 -> ENOSYS rule removed",
        "sandbox_kernel/backends/bpf.py",
        "        for name in ENOSYS_SYSCALLS:\n            rule(_act_errno(errno.ENOSYS), name)\n",
        "",
        (on("bwrap", "priv- or clone3"),),
    ),
    Weakening(
        "env-secret-names",
        "secret-like names (TOKEN, SECRET, PASSW, CREDENTIAL, API_KEY) no longer refused",
        "sandbox_kernel/policy.py",
        _FORBIDDEN_ENV,
        'r"^(JPY_|JUPYTERHUB_|JUPYTER_|DOCKER_|SANDBOX_KERNEL_)|"',
        (_ENV_TESTS,),
    ),
    Weakening(
        "env-plumbing-names",
        "JPY_, JUPYTERHUB_, JUPYTER_, DOCKER_, SANDBOX_KERNEL_ names no longer refused",
        "sandbox_kernel/policy.py",
        _FORBIDDEN_ENV,
        'r"TOKEN|SECRET|PASSW|CREDENTIAL|API_KEY|"',
        (_ENV_TESTS,),
    ),
    Weakening(
        "env-allow-unchecked",
        "names in env_allow no longer checked against the filter",
        "sandbox_kernel/policy.py",
        '    for name in allow:\n        check_env_name(name, "env_allow")\n',
        "",
        (_ENV_TESTS,),
    ),
    Weakening(
        "runsc-network-none",
        "the preflight no longer requires runsc --network=none",
        "sandbox_kernel/backends/docker.py",
        "            missing = [a for a in REQUIRED_RUNSC_ARGS if a not in args]\n",
        "            missing = [a for a in REQUIRED_RUNSC_ARGS if a not in args]\n"
        "            missing = [a for a in missing if a != '--network=none']\n",
        (
            ("tests/integration/test_errors.py", "-k", "network_none"),
            ("tests/integration/test_doctor.py", "-k", "network_none"),
        ),
    ),
    # -- the weakenings the suite already caught ---------------------------------------------
    Weakening(
        "network-bridge",
        "a Docker bridge network instead of none (one of the script's own: Docker's default "
        "bridge needs docker0, which some hosts lack)",
        "sandbox_kernel/backends/docker.py",
        '        "network_mode": "none",\n',
        f'        "network_mode": "{BRIDGE}",\n',
        (attacks("net-"), on("docker-runc", "net-")),
        network=BRIDGE,
    ),
    _docker(
        "network-host",
        "the host's network",
        '        "network_mode": "none",\n',
        '        "network_mode": "host",\n',
        "net-",
    ),
    _docker(
        "root-writable",
        "a writable root filesystem",
        '        "read_only": True,\n',
        '        "read_only": False,\n',
        "fs-",
    ),
    Weakening(
        "uid-0",
        "the kernel runs as uid 0 (the policy's user, with the host's root checks removed)",
        "sandbox_kernel/policy.py",
        'SANDBOX_USER = "1000:1000"\n',
        'SANDBOX_USER = "0:0"\n',
        (attacks("priv-ids"), on("docker-runc", "priv-ids"), on("bwrap", "priv-ids")),
        also=(_NO_ROOT_CHECK_KERNEL, _NO_ROOT_CHECK_HELLO),
    ),
    Weakening(
        "gid-0",
        "the kernel runs with gid 0",
        "sandbox_kernel/policy.py",
        'SANDBOX_USER = "1000:1000"\n',
        'SANDBOX_USER = "1000:0"\n',
        (attacks("priv-ids"), on("docker-runc", "priv-ids"), on("bwrap", "priv-ids")),
    ),
    Weakening(
        "root-check-kernel",
        "the host no longer refuses a kernel that reports uid 0 (boot.check_kernel)",
        *_NO_ROOT_CHECK_KERNEL,
        (_ROOT_TEST,),
    ),
    Weakening(
        "root-check-hello",
        "the host no longer refuses an agent that reports uid 0 where it shares the kernel's "
        "uid (boot.check_hello)",
        *_NO_ROOT_CHECK_HELLO,
        (_ROOT_TEST,),
    ),
    Weakening(
        "agent-shares-uid-gvisor",
        "under gVisor the agent runs as the kernel's uid again (no root agent apart)",
        "sandbox_kernel/backends/docker.py",
        '        "user": "0:0" if gvisor else policy.user,\n',
        '        "user": policy.user,\n',
        (attacks("priv-agent or info-agent"),),
        also=(
            (
                "sandbox_kernel/backends/docker.py",
                "            kernel_user_apart=gvisor,\n",
                "            kernel_user_apart=False,\n",
            ),
        ),
    ),
    Weakening(
        "agent-dumpable",
        "the agent stays dumpable (no PR_SET_DUMPABLE 0), yet reports itself undumpable",
        "sandbox_kernel/inside/agent.py",
        "        return bool(libc.prctl(4, 0, 0, 0, 0) == 0)  # 4 = PR_SET_DUMPABLE\n",
        "        return True\n",
        tuple(on(b, "agent") for b in ("docker-runc", "bwrap", "firejail")),
    ),
    _docker(
        "caps-kept",
        "Docker's default capabilities kept",
        _SPEC_CAPS,
        '        "cap_drop": [],\n',
        "priv-",
    ),
    _docker(
        "cap-sys-admin",
        "CAP_SYS_ADMIN added",
        _SPEC_CAPS,
        _SPEC_CAPS + '        "cap_add": ["SYS_ADMIN"],\n',
        "priv-",
    ),
    _docker(
        "no-new-privileges-off",
        "no-new-privileges not set",
        '            "no-new-privileges",\n',
        "",
        "priv-",
    ),
    _docker(
        "privileged",
        "a privileged container",
        '        "privileged": False,\n',
        '        "privileged": True,\n',
        "priv- or fs-",
    ),
    _docker(
        "seccomp-unconfined",
        "no seccomp profile at all",
        _SECCOMP_OPT,
        '            "seccomp=unconfined",\n',
        "priv-",
    ),
    _docker(
        "seccomp-docker-default",
        "Docker's default seccomp profile instead of ours",
        _SECCOMP_OPT,
        "",
        "priv-",
    ),
    _docker(
        "device-added",
        "a host device (/dev/kmsg) added",
        '        "devices": [],\n',
        '        "devices": ["/dev/kmsg:/dev/kmsg:r"],\n',
        "priv-dev",
    ),
    _docker(
        "tmp-unsized",
        "/tmp without its size cap",
        '            "/tmp": f"{tmpfs_opts},size={policy.tmp_bytes},mode=1777",\n',
        '            "/tmp": f"{tmpfs_opts},mode=1777",\n',
        "fs-",
    ),
    Weakening(
        "bwrap-dev-writable",
        "bwrap's /dev left writable (no --remount-ro)",
        "sandbox_kernel/backends/bwrap.py",
        '        "--remount-ro", "/dev",\n',
        "",
        (on("bwrap", "fs-"),),
    ),
    Weakening(
        "server-env-passed",
        "the whole server environment passed into the kernel",
        "sandbox_kernel/policy.py",
        '        env = {"HOME": self.home,',
        '        env = {**server_env, "HOME": self.home,',
        (
            attacks("info-server-env"),
            ("tests/integration/test_isolation.py", "-k", "environment"),
        ),
    ),
    Weakening(
        "seccomp-denied-list",
        "the profile's list of always-refused syscalls removed (mount, bpf, keyctl...)",
        _SECCOMP,
        "    rules = [_deny(list(DENIED))]\n",
        "    rules = []\n",
        (attacks("priv-"), on("docker-runc", "priv-")),
    ),
    *(
        _clone_flag(flag, value)
        for flag, value in (
            ("CLONE_NEWNS", "0x00020000"),
            ("CLONE_NEWCGROUP", "0x02000000"),
            ("CLONE_NEWUTS", "0x04000000"),
            ("CLONE_NEWIPC", "0x08000000"),
            ("CLONE_NEWUSER", "0x10000000"),
            ("CLONE_NEWPID", "0x20000000"),
            ("CLONE_NEWNET", "0x40000000"),
        )
    ),
    Weakening(
        "seccomp-af-packet",
        "the profile's rule refusing packet sockets removed",
        _SECCOMP,
        '    rules.append(_deny(["socket"], af_packet))\n',
        "",
        (
            attacks("net- or priv-userns"),
            on("docker-runc", "net- or priv-userns"),
            # The current gVisor refuses packet sockets in a user namespace by itself;
            # Debian's runsc does not.
            on("debian-runsc", "net- or priv-userns"),
        ),
    ),
    Weakening(
        "seccomp-mknod-char",
        "the rules refusing character device nodes removed (profile and bwrap filter)",
        _SECCOMP,
        '"S_IFCHR": 0o020000, ',
        "",
        (
            attacks("priv-mknod or priv-userns"),
            on("docker-runc", "priv-mknod or priv-userns"),
            on("bwrap", "priv-mknod or priv-userns"),
            # The current gVisor refuses device nodes by itself; Debian's runsc does not.
            on("debian-runsc", "priv-mknod or priv-userns"),
        ),
    ),
    Weakening(
        "seccomp-mknod-block",
        "the rules refusing block device nodes removed (profile and bwrap filter)",
        _SECCOMP,
        ', "S_IFBLK": 0o060000',
        "",
        (
            attacks("priv-mknod or priv-userns"),
            on("docker-runc", "priv-mknod or priv-userns"),
            on("bwrap", "priv-mknod or priv-userns"),
            on("debian-runsc", "priv-mknod or priv-userns"),
        ),
    ),
    Weakening(
        "seccomp-io-uring",
        "io_uring no longer refused on the host-kernel backends",
        _SECCOMP,
        'HOST_KERNEL_DENIED = ("io_uring_setup", "io_uring_enter", "io_uring_register")',
        "HOST_KERNEL_DENIED: tuple[str, ...] = ()",
        tuple(on(b, "priv-kernel-attack-surface") for b in ("docker-runc", "bwrap", "firejail")),
    ),
    Weakening(
        "runsc-oci-seccomp",
        "the preflight no longer requires runsc --oci-seccomp",
        "sandbox_kernel/backends/docker.py",
        "            missing = [a for a in REQUIRED_RUNSC_ARGS if a not in args]\n",
        "            missing = [a for a in REQUIRED_RUNSC_ARGS if a not in args]\n"
        "            missing = [a for a in missing if a != '--oci-seccomp']\n",
        (("tests/integration/test_errors.py", "-k", "oci_seccomp"),),
    ),
    # The host-side bounds (docs/security.md, "Host-side bounds").
    Weakening(
        "bound-pipe-backlog",
        "no bound on what the host queues for a sandbox that stops reading",
        "sandbox_kernel/relay/session.py",
        "        if queued > MAX_PIPE_BACKLOG:\n",
        "        if False:\n",
        (_bounds("backlog"),),
    ),
    Weakening(
        "bound-agent-errors",
        "an agent may report any number of errors",
        "sandbox_kernel/relay/session.py",
        "        if self._agent_error_seen:\n",
        "        if False:\n",
        (_bounds("errors"),),
    ),
    Weakening(
        "bound-expose-slot",
        "a run-time port's slot is taken only once it is bound (after an await)",
        "sandbox_kernel/exchange/host.py",
        "        self._binding.add(inside)\n",
        "",
        (_bounds("expose"),),
    ),
    Weakening(
        "bound-console",
        "the kernel's console output passed on without its limit and rate",
        "sandbox_kernel/relay/console.py",
        "        allowed = min(len(out), self._budget())\n",
        "        allowed = len(out)\n",
        (_bounds("console_output"),),
    ),
    Weakening(
        "bound-message-size",
        "the kernel's ZeroMQ traffic no longer checked for message size",
        "sandbox_kernel/relay/session.py",
        "                limiter.feed(data)\n",
        "                pass\n",
        (_bounds("message"),),
    ),
    Weakening(
        "bound-streams",
        "a sandbox may hold any number of relayed connections (MAX_STREAMS raised)",
        "sandbox_kernel/inside/mux.py",
        "MAX_STREAMS = 64\n",
        "MAX_STREAMS = 1_000_000\n",
        (("tests/security/test_host_bounds.py", "-k", "relayed_connections"),),
    ),
    Weakening(
        "bound-message-per-frame",
        "the ZeroMQ size bound applied to each frame instead of the whole message",
        "sandbox_kernel/relay/zmtp.py",
        "        total = size if flags & _COMMAND else self._message + size\n",
        "        total = size\n",
        (_bounds("multipart"),),
    ),
    # -- the runsc backend's OCI spec --------------------------------------------------------
    # Two one-line changes of it are not weakenings under this gVisor (runsc 20240729), so
    # no test can notice them (docs/security.md): `noNewPrivileges: false` (runsc logs
    # "noNewPrivileges ignored. PR_SET_NO_NEW_PRIVS is assumed to always be set", and the
    # sandbox's first process reports no_new_privs 1 either way), and empty `maskedPaths`
    # and `readonlyPaths` (runsc never reads them: the masked files do not exist in gVisor's
    # /proc and /sys, and /proc/sys is writable to the root agent with or without them).
    Weakening(
        "root-writable-runsc",
        "the runsc backend's root filesystem mounted writable",
        _RUNSC_OCI,
        '        "root": {"path": str(rootfs), "readonly": True},\n',
        '        "root": {"path": str(rootfs), "readonly": False},\n',
        (on("runsc", "fs-root-read-only or fs-write-outside-tmpfs or fs-mount-census"),),
    ),
    Weakening(
        "root-writable-bwrap",
        "bubblewrap's root filesystem bound writable",
        "sandbox_kernel/backends/bwrap.py",
        '        "--ro-bind", str(rootfs), "/",\n',
        '        "--bind", str(rootfs), "/",\n',
        (on("bwrap", "fs-root-read-only or fs-write-outside-tmpfs or fs-mount-census"),),
    ),
    Weakening(
        "tun-uncovered-runsc",
        "gVisor's /dev/net/tun no longer covered by an empty read-only tmpfs (runsc backend)",
        _RUNSC_OCI,
        '        _mount("/dev/net", "tmpfs", "ro", *safe, "size=4k", "mode=0755"),\n',
        "",
        (on("runsc", "net-interface-config or net-userns-tun"),),
    ),
    Weakening(
        "tun-uncovered-docker",
        "gVisor's /dev/net/tun no longer covered by an empty read-only tmpfs (Docker backend)",
        "sandbox_kernel/backends/docker.py",
        '            "/dev/net": "ro,nosuid,nodev,noexec,size=4k,mode=0755",\n',
        "",
        (attacks("net-interface-config or net-userns-tun"),),
    ),
    # -- snapshots (runsc backend's warm pool) ------------------------------------------------
    Weakening(
        "snapshot-age",
        "a warm pool's snapshot never renewed by age (pool_snapshot_age ignored)",
        "sandbox_kernel/pool_snapshots.py",
        "or (snap is not made and loop.time() - snap.born >= self.offer.max_age)",
        "or False",
        (_snapshots("renewed_after_its_age"),),
    ),
    Weakening(
        "snapshot-other-policy",
        "the runsc backend restores a snapshot made under another policy",
        _RUNSC,
        "        if record.shape != shape(self.describe(), policy):\n",
        "        if False:\n",
        (_snapshots("another_policy"),),
    ),
    Weakening(
        "snapshot-renewal",
        "a kernel restored from a warm pool's snapshot keeps the state every copy shares "
        "(random, numpy's generator, session id, ident) instead of renewing it at its claim",
        "sandbox_kernel/inside/prewarm_kernel.py",
        "    renew(app)\n",
        "",
        (_snapshots("renew_what_they_share"),),
    ),
    # -- the hub's per-user cgroups -----------------------------------------------------------
    Weakening(
        "hub-cpu-pids-totals",
        "the hub writes a user's memory total into their cgroups, but not the CPU and pids totals",
        "sandbox_kernel/backends/cgroups.py",
        "        write_limits(d, limits.get(controller, {}))\n",
        '        if controller == "memory":\n'
        "            write_limits(d, limits.get(controller, {}))\n",
        (("tests/integration/test_hub.py", "-k", "configured_totals"),),
    ),
)


@dataclass
class Outcome:
    weakening: Weakening
    applied: bool
    ran: int = 0
    failed: tuple[str, ...] = ()  # an assertion failed: the test noticed
    errored: tuple[str, ...] = ()  # no sandbox to test (its launch was refused or failed)
    error: str = ""  # the first such error
    seconds: float = 0.0
    note: str = ""

    @property
    def noticed(self) -> bool:
        return self.applied and bool(self.failed)

    @property
    def verdict(self) -> str:
        if not self.applied:
            return "NOT APPLIED"
        if self.failed:
            return "noticed"
        return "NO SANDBOX RAN" if self.errored else "NOT NOTICED"


def checkout_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.decode()
    return sorted(p for p in out.split("\0") if p and (REPO / p).is_file())


def copy_checkout(dest: Path) -> None:
    for rel in checkout_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)


def run_tests(
    copy: Path, runs: tuple[Run, ...], log: Path
) -> tuple[int, list[str], list[str], str]:
    """Run each pytest run in ``copy``: (tests run, those that failed, those that errored or
    were skipped, the first error's last line)."""
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    which = subprocess.run(
        [sys.executable, "-c", "import sandbox_kernel; print(sandbox_kernel.__file__)"],
        cwd=copy,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not Path(which).is_relative_to(copy):
        raise SystemExit(f"the copy is not the code under test ({which}): check the venv")
    ran, failed, errored, error = 0, [], [], ""
    for i, run in enumerate(runs):
        xml = copy / f"junit-{i}.xml"
        with log.open("a") as out:
            out.write(f"\n$ pytest {' '.join(run)}\n")
            out.flush()
            subprocess.run(
                [*PYTEST, "--junitxml", str(xml), *run],
                cwd=copy,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=3600,
            )
        if not xml.exists():
            errored.append(" ".join(run))
            error = error or "pytest did not run (see the log)"
            continue
        for case in ET.parse(xml).getroot().iter("testcase"):
            ran += 1
            name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
            if case.find("failure") is not None:
                failed.append(name)
                continue
            problem = case.find("error")
            if problem is None:
                problem = case.find("skipped")
            if problem is not None:
                errored.append(name)
                lines = (problem.get("message") or "?").strip().splitlines() or ["?"]
                line = lines[-1].removeprefix("failed on setup with ").strip('"')
                error = error or (line if len(line) <= 200 else "..." + line[-200:])
    return ran, failed, errored, error


def not_applicable(w: Weakening, root: Path = REPO) -> str:
    """Why ``w`` cannot be applied to the code under ``root`` ("" when it can)."""
    for path, old, _new in w.edits:
        count = (root / path).read_text().count(old)
        if count != 1:
            return f"its text is found {count} times in {path}"
    return ""


@contextlib.contextmanager
def docker_network(name: str) -> Iterator[None]:
    """A Docker bridge network ``name`` while the block runs (none for ""), removed after."""
    if not name:
        yield
        return
    subprocess.run(["docker", "network", "create", name], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["docker", "network", "rm", name], check=False, capture_output=True)


def restore_shared_venv() -> None:
    """The hub tests install the code under test, here the weakened copy, into the shared
    venv other users' servers run from: put this checkout back there."""
    subprocess.run(
        [sys.executable, "-c", "from tests.integration.hub import reinstall_shared_venv as r; r()"],
        cwd=REPO,
        check=True,
        timeout=900,
    )


def weaken(w: Weakening, keep_logs: Path | None) -> Outcome:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"sk-weaken-{w.name}-") as tmp:
        copy = Path(tmp) / "checkout"
        copy_checkout(copy)
        if why := not_applicable(w, copy):
            return Outcome(w, False, note=why)
        for path, old, new in w.edits:
            source = copy / path
            source.write_text(source.read_text().replace(old, new))
        log = Path(tmp) / "pytest.log"
        try:
            with docker_network(w.network):
                ran, failed, errored, error = run_tests(copy, w.runs, log)
        finally:
            if any(run[0].startswith("tests/integration/test_hub") for run in w.runs):
                restore_shared_venv()
        if keep_logs is not None:
            shutil.copy(log, keep_logs / f"{w.name}.log")
    seconds = time.monotonic() - started
    return Outcome(w, True, ran, tuple(failed), tuple(errored), error, seconds)


def table(outcomes: list[Outcome]) -> str:
    rows = ["| weakening | tests run | noticed by |", "|---|---|---|"]
    for o in outcomes:
        if not o.applied:
            caught = f"**NOT APPLIED**: {o.note}"
        elif o.failed:
            shown = ", ".join(f"`{t}`" for t in o.failed[:3])
            more = len(o.failed) - 3
            caught = f"{len(o.failed)}: {shown}" + (f" and {more} more" if more > 0 else "")
            if o.errored:
                caught += f"; {len(o.errored)} more had no sandbox ({o.error})"
        elif o.errored:
            caught = f"**no sandbox ran** in {len(o.errored)}: {o.error}"
        else:
            caught = "**NOT NOTICED**"
        caught = caught.replace("|", "\\|")
        rows.append(f"| `{o.weakening.name}`: {o.weakening.what} | {o.ran} | {caught} |")
    return "\n".join(rows)


def parse_share(text: str, today: datetime.date) -> tuple[int, int]:
    """``K/N`` or ``N`` (K then comes from ``today``: day after day, K runs through 1..N);
    (K, N), or ValueError naming the fix (pure)."""
    why = f"--share {text!r}: give N or K/N (whole numbers, 1 <= K <= N)"
    k_text, _, n_text = text.rpartition("/")
    try:
        n = int(n_text)
        k = int(k_text) if k_text else today.toordinal() % max(n, 1) + 1
    except ValueError:
        raise ValueError(why) from None
    if not 1 <= k <= n:
        raise ValueError(why)
    return k, n


def share_of(weakenings: tuple[Weakening, ...], k: int, n: int) -> list[Weakening]:
    """Share ``k`` of ``n`` (pure): every nth weakening from the kth, so neighbours in the
    list (often alike in cost) are spread over the shares, and the n shares cover all."""
    return list(weakenings[k - 1 :: n])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", metavar="NAME", help="repeatable")
    parser.add_argument("--list", action="store_true", help="list the weakenings and exit")
    parser.add_argument(
        "--baseline", action="store_true", help="first run the same tests unweakened"
    )
    parser.add_argument("--logs", type=Path, help="keep each weakening's pytest log here")
    parser.add_argument(
        "--share",
        metavar="[K/]N",
        help="run share K of N (K from the UTC date when omitted: N consecutive days cover "
        "every weakening)",
    )
    args = parser.parse_args()
    names = {w.name for w in WEAKENINGS}
    if args.list:
        for w in WEAKENINGS:
            why = not_applicable(w)
            print(f"{w.name:26} {w.what}" + (f"  [DOES NOT APPLY: {why}]" if why else ""))
        return 0 if all(not not_applicable(w) for w in WEAKENINGS) else 1
    unknown = sorted(set(args.only or ()) - names)
    if unknown:
        parser.error(f"unknown weakening(s) {unknown}; see --list")
    chosen = [w for w in WEAKENINGS if not args.only or w.name in args.only]
    if args.share:
        if args.only:
            parser.error("--share and --only exclude each other")
        try:
            k, n = parse_share(args.share, datetime.datetime.now(datetime.timezone.utc).date())
        except ValueError as exc:
            parser.error(str(exc))
        chosen = share_of(WEAKENINGS, k, n)
        print(
            f"share {k}/{n}: {len(chosen)} of the {len(WEAKENINGS)} weakenings "
            f"({', '.join(w.name for w in chosen)})",
            flush=True,
        )
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
    if args.baseline:
        runs = tuple(dict.fromkeys(r for w in chosen for r in w.runs))
        base = weaken(Weakening("baseline", "nothing weakened", "", "", "", runs), args.logs)
        bad = base.failed + base.errored
        print(f"baseline: {base.ran} tests, {len(bad)} did not pass ({base.seconds:.0f}s)")
        if bad:
            print("the tests do not pass without any weakening:", *bad, sep="\n  ")
            return 1
    outcomes = []
    for w in chosen:
        outcome = weaken(w, args.logs)
        outcomes.append(outcome)
        by = f"; noticed by {outcome.failed[0]}" if outcome.noticed else ""
        print(
            f"{w.name}: {outcome.verdict} ({len(outcome.failed)} of {outcome.ran} tests failed, "
            f"{len(outcome.errored)} without a sandbox, {outcome.seconds:.0f}s{by})",
            flush=True,
        )
    print()
    print(table(outcomes))
    return 0 if all(o.noticed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
