"""This user's runsc sandboxes and snapshots on disk: the state folders, ``ps``'s table and
``gc``'s removal of what dead Jupyter processes left.

Who calls what: ``runsc.py`` makes its bundles and snapshots under :func:`state_base`
(``state/`` for ``runsc --root``, ``bundles/``, ``images/``) and records a claimed
sandbox's owner in its bundle (:func:`set_annotations`); ``sandbox-kernel ps`` and ``gc``,
through ``RunscBackend.list_sandboxes`` and ``remove_orphans``, call :func:`sandbox_table`
and :func:`remove_orphans`. Each sandbox's owner is its bundle's OCI annotations; each
snapshot's, its folder's ``owner.json``. Everything here blocks.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import SandboxError
from . import state
from .base import SandboxInfo
from .cgroups import DelegatedCgroup, delegated_cgroups, end_all
from .owner import Owner
from .runsc_oci import CGROUP_PREFIX, cgroups_path
from .runsc_tool import Running, end_sandbox, find_runsc, runsc_argv
from .spawned import TOOL_ENV

ROOT_STATE = state.root_base("runsc")
BUNDLE_GRACE = 300.0  # seconds: a bundle without a readable config.json may be being written
SNAPSHOT_PREFIX = "sandbox-kernel-snapshot-"


def state_bases(euid: int, environ: Mapping[str, str]) -> list[Path]:
    """Where this user's runsc state and bundles may live, preferred first (pure)."""
    return state.bases("runsc", euid, environ)


def state_base() -> Path:
    """This user's runsc folder: ``state/`` for ``runsc --root``, ``bundles/``, ``images/``
    (the warm pools' snapshots)."""
    return state.state_base("runsc", ("state", "bundles", "images"))


def existing_bases() -> list[Path]:
    """Every runsc state folder of this user that exists and is private (ps, gc)."""
    return state.existing_bases("runsc")


def set_annotations(bundle: Path, annotations: dict[str, str]) -> None:
    """Record a new owner in a running sandbox's bundle (``ps`` reads it from there; runsc
    read its config at start)."""
    path = bundle / "config.json"
    try:
        config = json.loads(path.read_text())
        config["annotations"] = annotations
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=1))
        tmp.replace(path)
    except (OSError, ValueError):
        pass


def _annotations(bundle: Path, uid: int | None = None) -> dict[str, str]:
    """The bundle's OCI annotations (our owner record). ``uid``: another user's bundle,
    read by root only if its config.json is a regular file of that user's (no link)."""
    config = bundle / "config.json"
    try:
        if uid is not None:
            st = config.lstat()
            if not stat.S_ISREG(st.st_mode) or st.st_uid != uid:
                return {}
        found = json.loads(config.read_text()).get("annotations") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def _listed(runsc: str, base: Path, uid: int | None = None) -> list[dict[str, Any]]:
    """``runsc list`` of one state folder (id, pid, status, bundle). ``uid``: another
    user's folder (root's ``ps``), listed by runsc run as that user, never as root."""
    as_user: dict[str, Any] = {}
    if uid is not None:
        try:
            as_user = {"user": uid, "group": pwd.getpwuid(uid).pw_gid, "extra_groups": []}
        except KeyError:
            return []
    rootless = uid is not None or os.geteuid() != 0
    proc = subprocess.run(
        runsc_argv(runsc, base / "state", "list", "--format", "json", rootless=rootless),
        capture_output=True, text=True, timeout=30, cwd="/", env=TOOL_ENV, **as_user,
    )  # fmt: skip
    if proc.returncode != 0:
        return []
    try:
        found = json.loads(proc.stdout or "[]")
    except ValueError:
        return []
    return [c for c in found or [] if isinstance(c, dict) and isinstance(c.get("id"), str)]


def remove_orphans() -> list[str]:
    """Delete this user's runsc sandboxes whose Jupyter process is gone (their state, bundle
    and cgroups: run detached, a sandbox that ended with its server leaves them), bundles
    and cgroups of sandboxes whose server never cleaned up, and the snapshots of dead
    servers' warm pools. Blocking."""
    try:
        runsc = find_runsc()
    except SandboxError:
        return []
    host = socket.gethostname()
    rootless = os.geteuid() != 0
    removed: list[str] = []
    for base in existing_bases():
        listed = {c["id"] for c in _listed(runsc, base)}
        bundles = base / "bundles"
        on_disk = {d.name for d in bundles.iterdir() if d.is_dir()} if bundles.is_dir() else set()
        for name in sorted(listed | on_disk):
            owner = Owner.from_labels(_annotations(bundles / name))
            if owner is not None:
                if not owner.server_gone(host):
                    continue
            elif name not in on_disk or time.time() - _mtime(bundles / name) < BUNDLE_GRACE:
                continue  # not a sandbox of ours, or its bundle is being written right now
            running = Running(None, runsc, base / "state", bundles / name, rootless, None)
            if rootless:
                running.cgroup = DelegatedCgroup(name, delegated_cgroups())
            end_sandbox(running, name)
            removed.append(name)
        for lock in (base / "state").glob("*_sandbox:*.lock"):  # of sandboxes long gone
            name = lock.name.split("_sandbox:", 1)[0]
            if name not in listed and name not in on_disk:
                lock.unlink(missing_ok=True)
        for folder in _snapshot_folders(base):
            owner = Owner.from_labels(_snapshot_owner(folder))
            if owner is not None:
                if not owner.server_gone(host):
                    continue
            elif time.time() - _mtime(folder) < BUNDLE_GRACE:
                continue  # being made right now
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    if not rootless:  # cgroups of sandboxes whose `runsc run` was killed before cleaning up
        live = {c["id"] for b in existing_bases() for c in _listed(runsc, b)}
        for d in Path("/sys/fs/cgroup").glob(f"*/{CGROUP_PREFIX}*"):
            name = d.name[len(CGROUP_PREFIX) :]
            if name not in live and not (ROOT_STATE / "bundles" / name).exists():
                end_all([d])
    return removed


def _snapshot_folders(base: Path) -> list[Path]:
    images = base / "images"
    if not images.is_dir():
        return []
    return sorted(d for d in images.iterdir() if d.is_dir() and d.name.startswith(SNAPSHOT_PREFIX))


def _snapshot_owner(folder: Path) -> dict[str, str]:
    try:
        found = json.loads((folder / "owner.json").read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def _disk_bytes(folder: Path) -> int:
    total = 0
    for f in folder.rglob("*"):
        try:
            total += f.lstat().st_size if f.is_file() else 0
        except OSError:
            pass
    return total


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _proc_times(pid: int) -> tuple[float, float]:
    """(CPU seconds used, start time in seconds since boot) of a process; (0, 0) if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, int(fields[19]) / tick


def _memory_bytes(name: str, pid: int, uid: int | None) -> int:
    """The sandbox's memory: its memory cgroup's usage, else the sandbox process's RSS.
    ``uid``: a rootless sandbox's user (this process's, or another's for root's ``ps``),
    whose delegated cgroup holds it; None: root's sandbox, in runsc's own cgroup."""
    candidates = [] if uid is not None else [Path("/sys/fs/cgroup/memory") / cgroups_path(name)[1:]]
    delegated = delegated_cgroups(uid) if uid is not None else {}
    if "memory" in delegated:
        candidates.append(delegated["memory"] / name)
    for d in candidates:
        try:
            return int((d / "memory.usage_in_bytes").read_text())
        except (OSError, ValueError):
            pass
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def sandbox_table() -> list[SandboxInfo]:
    """This user's running runsc sandboxes and the warm pools' snapshots (blocking; for
    ``sandbox-kernel ps``)."""
    try:
        runsc = find_runsc()
    except SandboxError:
        return []
    rootless = os.geteuid() != 0
    found: list[tuple[Path, dict[str, Any], int | None]] = [
        (base, c, None) for base in existing_bases() for c in _listed(runsc, base)
    ]
    if not rootless:  # root sees every user's sandboxes too (rootless ones, under a hub)
        found += [
            (base, c, uid)
            for base, uid in state.users_bases("runsc")
            for c in _listed(runsc, base, uid)
        ]
    before = {c["id"]: _proc_times(int(c.get("pid") or 0)) for _b, c, _u in found}
    t0 = time.monotonic()
    time.sleep(0.3)
    elapsed = time.monotonic() - t0
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    rows = []
    for base, c, uid in found:
        if c.get("status") == "stopped":
            continue  # ended (its processes are gone); its server or gc removes it
        name, pid = c["id"], int(c.get("pid") or 0)
        bundle = Path(c.get("bundle") or base / "bundles" / name)
        if uid is not None:
            bundle = base / "bundles" / name  # never a path another user's state names
        owner = Owner.from_labels(_annotations(bundle, uid))
        if owner is None:
            continue  # not a sandbox of ours
        cpu, started = _proc_times(pid)
        rows.append(
            SandboxInfo(
                backend="runsc",
                name=name,
                id=name,
                kernel_id=owner.kernel_id,
                pooled=owner.pooled,
                user=owner.user,
                server_pid=owner.server_pid,
                uptime_s=uptime - started if started else 0.0,
                memory_mib=_memory_bytes(name, pid, os.geteuid() if rootless else uid) / 2**20,
                cpu_percent=100.0 * max(0.0, cpu - before[name][0]) / elapsed,
            )
        )
    for base in existing_bases():
        for folder in _snapshot_folders(base):
            owner = Owner.from_labels(_snapshot_owner(folder))
            if owner is None:
                continue
            rows.append(
                SandboxInfo(
                    backend="runsc",
                    name=folder.name,
                    id=folder.name,
                    kernel_id="",
                    pooled=True,
                    user=owner.user,
                    server_pid=owner.server_pid,
                    uptime_s=max(0.0, time.time() - _mtime(folder)),
                    memory_mib=0.0,
                    cpu_percent=None,
                    kind="snapshot",
                    disk_mib=_disk_bytes(folder) / 2**20,
                )
            )
    return rows
