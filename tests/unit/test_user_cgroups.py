"""UserCgroupSpawner's pure parts: where a user's cgroups are, what limits they get, and
the refusals (no cgroup v1, unusable names, bad limits)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox_kernel.backends.cgroups import limit_files
from sandbox_kernel.errors import SandboxError
from sandbox_kernel.hub import UserCgroupSpawner, user_cgroup_dirs

MOUNTS = {c: Path(f"/sys/fs/cgroup/{c}") for c in ("memory", "cpu", "pids")}


def test_each_user_has_a_folder_per_controller() -> None:
    assert user_cgroup_dirs("alice", MOUNTS) == {
        "memory": Path("/sys/fs/cgroup/memory/sandbox-kernel-users/alice"),
        "cpu": Path("/sys/fs/cgroup/cpu/sandbox-kernel-users/alice"),
        "pids": Path("/sys/fs/cgroup/pids/sandbox-kernel-users/alice"),
    }


def test_without_cgroup_v1_the_spawn_is_refused_naming_what_to_use() -> None:
    with pytest.raises(SandboxError, match=r"no cgroup v1 cpu, pids controller.*SystemdSpawner"):
        user_cgroup_dirs("alice", {"memory": MOUNTS["memory"]})


@pytest.mark.parametrize("name", ["", "..", ".", "a/b"])
def test_names_that_are_not_a_folder_are_refused(name: str) -> None:
    with pytest.raises(SandboxError, match="user name"):
        user_cgroup_dirs(name, MOUNTS)


def test_limits_are_totals_without_extra_swap() -> None:
    files = limit_files(4 * 2**30, 1.5, 2048)
    assert files["memory"] == {
        "memory.limit_in_bytes": str(4 * 2**30),
        "memory.memsw.limit_in_bytes": str(4 * 2**30),
    }
    assert files["cpu"] == {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "150000"}
    assert files["pids"] == {"pids.max": "2048"}


@pytest.mark.parametrize(
    ("trait", "value", "message"),
    [
        ("user_memory_limit", "lots", "user_memory_limit"),
        ("user_memory_limit", "64m", "below 128m"),
        ("user_cpu_limit", 0.0, "user_cpu_limit"),
        ("user_pids_limit", 10, "below 64"),
    ],
)
def test_bad_limits_are_refused_before_anything_is_made(
    trait: str, value: object, message: str
) -> None:
    spawner = UserCgroupSpawner(**{trait: value})
    with pytest.raises(Exception, match=message):
        spawner._limits()


def test_named_servers_are_refused() -> None:
    """Two servers of one user would share (and, at a stop, end) each other's cgroups."""
    import asyncio
    from types import SimpleNamespace

    class Named(UserCgroupSpawner):
        name = "second"  # the server's name (a property of JupyterHub's database record)

    spawner = Named(user=SimpleNamespace(name="alice"))
    with pytest.raises(SandboxError, match="allow_named_servers = False"):
        asyncio.run(spawner.start())


@pytest.mark.parametrize("still_listed", [False, True])
def test_a_cgroup_member_is_killed_only_while_it_is_still_listed(
    still_listed: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """kill_members pins each listed pid, lists again, and signals only what is still
    listed: a pid whose process left (and whose number may now be another process's)
    between the two listings is not signalled."""
    import subprocess

    from sandbox_kernel.backends import cgroups

    proc = subprocess.Popen(["sleep", "60"])
    listings = iter([{proc.pid}, {proc.pid} if still_listed else set()])
    monkeypatch.setattr(cgroups, "members", lambda _folder: next(listings))
    try:
        killed = cgroups.kill_members(tmp_path)
        if still_listed:
            assert killed == {proc.pid} and proc.wait(timeout=5) == -9
        else:
            assert killed == set() and proc.poll() is None, "a pid no longer listed was killed"
    finally:
        proc.kill()
        proc.wait()


def test_shared_memory_dirs_are_the_world_writable_tmpfs_mounts(tmp_path: Path) -> None:
    from sandbox_kernel.hub import shared_memory_dirs

    shm, private, disk = (tmp_path / n for n in ("shm dir", "private", "disk"))
    for d, mode in ((shm, 0o1777), (private, 0o700), (disk, 0o1777)):
        d.mkdir()
        d.chmod(mode)
    mounts = tmp_path / "mounts"
    mounts.write_text(
        f"tmpfs {str(shm).replace(' ', chr(92) + '040')} tmpfs rw,nosuid 0 0\n"
        f"tmpfs {private} tmpfs rw 0 0\n/dev/sda1 {disk} ext4 rw 0 0\n"
    )
    assert shared_memory_dirs(str(mounts)) == [shm]


def test_remove_files_of_removes_one_owners_files_everywhere_below(tmp_path: Path) -> None:
    from sandbox_kernel.hub import remove_files_of

    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("x", "a/y", "a/b/z"):
        (tmp_path / name).write_text("data")
    (tmp_path / "link").symlink_to("/etc/hostname")
    me = os.geteuid()
    assert remove_files_of(me + 1, [tmp_path]) == [], "another owner's files stay"
    removed = remove_files_of(me, [tmp_path])
    assert sorted(removed) == sorted(str(tmp_path / n) for n in ("a", "x", "link"))
    assert list(tmp_path.iterdir()) == [] and Path("/etc/hostname").exists()


def test_segments_of_are_those_the_user_owns_or_created() -> None:
    from sandbox_kernel.hub import segments_of

    table = (
        "       key      shmid perms       size  cpid  lpid nattch   uid   gid  cuid  cgid\n"
        "         0         11  1600    1048576   100   100      0  1003  1003  1003  1003\n"
        "         0         12  1600    1048576   101   101      0  1004  1004  1003  1003\n"
        "         0         13  1600    1048576   102   102      1  1004  1004  1004  1004\n"
    )
    assert segments_of(1003, table) == [11, 12]  # 12: given away to uid 1004, created by 1003
    assert segments_of(1005, table) == []


def record_end_sessions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """hub.end_session replaced by a list of the users it was called for."""
    from sandbox_kernel import hub

    ended: list[str] = []

    def end_session(user: str, dirs: object) -> tuple[list[int], list[str]]:
        ended.append(user)
        return [], []

    monkeypatch.setattr(hub, "end_session", end_session)
    return ended


def test_a_server_found_dead_is_cleaned_up_once_and_a_stopping_one_by_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """JupyterHub calls stop() only for a server poll() finds running: poll() finding it
    dead ends what it left (once); during stop() the end is stop's own."""
    import asyncio
    from types import SimpleNamespace

    from jupyterhub.spawner import LocalProcessSpawner

    from sandbox_kernel import hub

    ended = record_end_sessions(monkeypatch)
    monkeypatch.setattr(hub, "v1_mounts", lambda: MOUNTS)

    async def dead(self: LocalProcessSpawner) -> int:
        self.pid = 0  # as LocalProcessSpawner.clear_state
        return 0

    async def stopped(self: LocalProcessSpawner, now: bool = False) -> None:
        await self.poll()

    monkeypatch.setattr(LocalProcessSpawner, "poll", dead)
    monkeypatch.setattr(LocalProcessSpawner, "stop", stopped)
    spawner = UserCgroupSpawner(user=SimpleNamespace(name="alice"))
    spawner.pid = 4242
    assert asyncio.run(spawner.poll()) == 0 and ended == ["alice"]
    assert asyncio.run(spawner.poll()) == 0 and ended == ["alice"], "cleaned up twice"
    spawner.pid = 4243
    asyncio.run(spawner.stop())
    assert ended == ["alice", "alice"]


def test_a_server_that_fails_to_start_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A start that fails after the cgroups were made removes them (JupyterHub does not
    stop a server poll() finds not running)."""
    import asyncio
    from types import SimpleNamespace

    from sandbox_kernel import hub

    ended = record_end_sessions(monkeypatch)
    monkeypatch.setattr(UserCgroupSpawner, "_delegate", lambda self, *limits: {})

    def refused(user: str) -> None:
        raise SandboxError("no runtime folder")

    monkeypatch.setattr(hub, "make_runtime_dir", refused)
    spawner = UserCgroupSpawner(user=SimpleNamespace(name="alice"))
    with pytest.raises(SandboxError, match="no runtime folder"):
        asyncio.run(spawner.start())
    assert ended == ["alice"]
