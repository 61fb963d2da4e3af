"""Pure parts of the runsc backend: the OCI bundle, runsc's command lines, cgroup and state
paths (the policy in OCI terms, as test_docker_backend.py checks ``container_spec``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sandbox_kernel.backends.cgroups import DELEGATED_PARENT, DelegatedCgroup, delegated_cgroups
from sandbox_kernel.backends.docker import AGENT_CAPABILITIES, container_spec
from sandbox_kernel.backends.registry import default_kernel_name, display_name, make_backend
from sandbox_kernel.backends.runsc import RunscBackend, oom_kills
from sandbox_kernel.backends.runsc_inventory import ROOT_STATE, state_bases
from sandbox_kernel.backends.runsc_oci import (
    CGROUP_PREFIX,
    cgroups_path,
    oci_config,
    process_identity,
)
from sandbox_kernel.backends.runsc_snapshots import ROOTLESS_NO_SNAPSHOTS
from sandbox_kernel.backends.runsc_snapshots import shape as _shape
from sandbox_kernel.backends.runsc_tool import platform_flags, runsc_argv
from sandbox_kernel.backends.seccomp import seccomp_profile
from sandbox_kernel.errors import PolicyError, SandboxError
from sandbox_kernel.kernelspec import build_kernelspec
from sandbox_kernel.policy import build_policy
from tests.helpers import BACKEND_CONFIGS

POLICY = build_policy(
    image="sandbox-kernel/python:latest", memory_limit="1g", cpu_limit=0.5, nproc_limit=40,
    pids_limit=900, nofile_limit=2048, tmp_size="64m", home_size="32m",
)  # fmt: skip
ROOTFS = Path("/var/lib/sandbox-kernel/rootfs/abc")
CMD = ["python3", "-I", "-S", "-c", "pass"]
LABELS = {"org.sandbox-kernel.managed": "1", "org.sandbox-kernel.server-pid": "42"}


def config(**kw: object) -> dict:  # type: ignore[type-arg]
    args: dict = {"rootfs": ROOTFS, "command": CMD, "annotations": LABELS,  # type: ignore[type-arg]
                  "cgroups_path": "/sandbox-kernel-runsc-x", **kw}  # fmt: skip
    return oci_config(POLICY, **args)


def test_bundle_runs_the_agent_as_the_sandboxs_root_with_few_capabilities() -> None:
    """As under Docker with gVisor: the agent is root of the sandbox's own kernel with only
    what it needs to run the kernel as uid 1000 (with none) and signal it."""
    process = config()["process"]
    assert process["args"] == CMD and process["terminal"] is False
    # Exactly so: an empty additionalGids fails a current runsc's restore-spec check.
    assert process["user"] == {"uid": 0, "gid": 0}
    assert process["noNewPrivileges"] is True
    caps = process["capabilities"]
    agent = sorted(f"CAP_{c}" for c in AGENT_CAPABILITIES)
    assert agent == ["CAP_KILL", "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID"]
    for kind in ("bounding", "effective", "permitted"):
        assert sorted(caps[kind]) == agent, kind
    assert caps["inheritable"] == [] and caps["ambient"] == [], "nothing passes to the kernel"
    assert process["cwd"] == "/", "the home is the kernel's (0700, uid 1000)"
    # The Docker backend's environment, nothing of the server's.
    spec = container_spec(POLICY, runtime="runsc", command=CMD, labels={}, name="n")
    env = dict(e.split("=", 1) for e in process["env"])
    assert env == {**spec["environment"], "PATH": "/usr/local/bin:/usr/bin:/bin"}
    assert spec["user"] == "0:0" and sorted(spec["cap_add"]) == sorted(AGENT_CAPABILITIES)


def test_process_identity_is_the_one_place_for_user_and_caps() -> None:
    identity = process_identity(POLICY)
    process = config()["process"]
    assert {k: process[k] for k in identity} == identity


def test_rlimits() -> None:
    limits = {r["type"]: (r["soft"], r["hard"]) for r in config()["process"]["rlimits"]}
    assert limits == {
        "RLIMIT_NOFILE": (2048, 2048),
        "RLIMIT_NPROC": (40, 40),
        "RLIMIT_CORE": (0, 0),
    }
    with_as = {r["type"]: r["hard"] for r in config(rlimit_as=True)["process"]["rlimits"]}
    assert with_as["RLIMIT_AS"] == 2**30, "rootless without a memory cgroup: per-process cap"


def test_no_host_mount_and_capped_noexec_tmpfs() -> None:
    c = config()
    assert c["root"] == {"path": str(ROOTFS), "readonly": True}
    assert c["hostname"] == "sandbox"
    mounts = {m["destination"]: m for m in c["mounts"]}
    assert set(mounts) == {
        "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/tmp", "/home/sandbox",
        "/dev/net",
    }  # fmt: skip
    for m in c["mounts"]:
        assert m["type"] in ("proc", "tmpfs", "devpts", "mqueue", "sysfs"), "never a bind"
        assert m["source"] == m["type"] and not m["source"].startswith("/")
        assert "nosuid" in m["options"] and "noexec" in m["options"], m
    assert "ro" in mounts["/sys"]["options"]
    assert "ro" in mounts["/dev/net"]["options"], "gVisor's /dev/net/tun covered, read-only"
    for where, size, mode in (("/tmp", 64 * 2**20, "1777"), ("/home/sandbox", 32 * 2**20, "0700"),
                              ("/dev/shm", 64 * 2**20, "1777")):  # fmt: skip
        options = mounts[where]["options"]
        assert mounts[where]["type"] == "tmpfs" and "nodev" in options
        assert f"size={size}" in options and f"mode={mode}" in options
    assert "uid=1000" in mounts["/home/sandbox"]["options"]


def test_namespaces_seccomp_and_annotations() -> None:
    c = config()
    linux = c["linux"]
    assert {n["type"] for n in linux["namespaces"]} == {"pid", "network", "ipc", "uts", "mount"}
    assert all("path" not in n for n in linux["namespaces"]), "never a host namespace"
    assert linux["seccomp"] == seccomp_profile(host_kernel=False)
    assert linux["seccomp"]["defaultAction"] == "SCMP_ACT_ALLOW"
    denied = {n for rule in linux["seccomp"]["syscalls"] for n in rule["names"]}
    assert {"mount", "unshare", "setns", "bpf", "ptrace", "keyctl"} <= denied
    assert "/proc/kcore" in linux["maskedPaths"] and "/proc/sys" in linux["readonlyPaths"]
    assert c["annotations"] == LABELS
    json.dumps(c)  # the file runsc reads


def test_cgroup_resources_only_with_a_path() -> None:
    linux = config()["linux"]
    assert linux["cgroupsPath"] == "/sandbox-kernel-runsc-x"
    assert linux["resources"] == {
        "memory": {"limit": 2**30, "swap": 2**30},  # swap = memory + swap: none
        "cpu": {"quota": 50_000, "period": 100_000},
        "pids": {"limit": 900},
    }
    rootless = config(cgroups_path=None)["linux"]
    assert "cgroupsPath" not in rootless and "resources" not in rootless


def test_cgroups_path_has_one_level() -> None:
    """runsc leaves the parent folders of a cgroup path behind: ours has none."""
    path = cgroups_path("sandbox-kernel-abc-1-ff")
    assert path == f"/{CGROUP_PREFIX}sandbox-kernel-abc-1-ff" and path.count("/") == 1


def test_runsc_argv() -> None:
    argv = runsc_argv("/usr/bin/runsc", Path("/s"), "run", "--bundle", "/b", "n", rootless=False)
    assert argv[:3] == ["/usr/bin/runsc", "--root", "/s"]
    assert "--network=none" in argv and "--oci-seccomp" in argv and "--overlay2=none" in argv
    assert "--rootless" not in argv and argv[-4:] == ["run", "--bundle", "/b", "n"]
    rootless = runsc_argv("runsc", Path("/s"), "list", rootless=True)
    assert "--rootless" in rootless and rootless.index("--rootless") < rootless.index("list")


def test_state_bases() -> None:
    assert state_bases(0, {"XDG_RUNTIME_DIR": "/run/user/0"}) == [ROOT_STATE]
    assert state_bases(1001, {"XDG_RUNTIME_DIR": "/run/user/1001"}) == [
        Path("/run/user/1001/sandbox-kernel/runsc"),
        Path("/tmp/sandbox-kernel-runsc-1001"),
    ]
    assert state_bases(1001, {}) == [Path("/tmp/sandbox-kernel-runsc-1001")]
    assert state_bases(1001, {"XDG_RUNTIME_DIR": "relative"}) == [
        Path("/tmp/sandbox-kernel-runsc-1001")
    ]


def test_delegated_cgroups_must_be_the_users_own(tmp_path: Path) -> None:
    mounts = {c: tmp_path / c for c in ("memory", "cpu", "pids")}
    me = os.geteuid()
    import pwd

    user = pwd.getpwuid(me).pw_name
    for c in ("memory", "pids"):
        d = mounts[c] / DELEGATED_PARENT / user
        d.mkdir(parents=True)
        (d / "cgroup.procs").write_text("")
    (mounts["cpu"] / DELEGATED_PARENT / "someone-else").mkdir(parents=True)
    found = delegated_cgroups(me, mounts)
    assert found == {c: mounts[c] / DELEGATED_PARENT / user for c in ("memory", "pids")}
    assert delegated_cgroups(me + 1, mounts) == {}, "another uid's folders are not ours"
    cgroup = DelegatedCgroup("sb-1", found)
    assert cgroup.dirs == {c: found[c] / "sb-1" for c in ("memory", "pids")}


def test_oom_kills(tmp_path: Path) -> None:
    (tmp_path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert oom_kills(tmp_path) == 2
    assert oom_kills(tmp_path / "gone") == 0


def test_registry_entry() -> None:
    assert display_name("runsc") == "Python 3 (sandboxed, runsc)"
    assert "host kernel" not in display_name("runsc") and "weaker" not in display_name("runsc")
    assert default_kernel_name("runsc") == "sandbox-python-runsc"
    backend = make_backend(
        "runsc", __import__("logging").getLogger(), {"accept_unenforced": ["cpu_limit"]}
    )
    assert backend.name == "runsc"
    with pytest.raises(Exception, match="unknown"):
        make_backend("runsc", __import__("logging").getLogger(), {"accept_unenforced": ["all"]})


def test_other_runtime_is_refused() -> None:
    """The runsc backend always runs gVisor: runtime names one of its two binaries, anything
    else (runc) is refused, naming it, already when the kernelspec is written; so is Docker's
    allow_weaker_runtime."""
    with pytest.raises(Exception, match="runtime: the runsc backend runs 'runsc' or"):
        build_kernelspec({**BACKEND_CONFIGS["runsc"], "runtime": "runc"})
    with pytest.raises(Exception, match="allow_weaker_runtime: applies to the docker backend"):
        build_kernelspec({**BACKEND_CONFIGS["runsc"], "allow_weaker_runtime": True})


def test_platform_reaches_every_runsc_call() -> None:
    assert platform_flags("ptrace")[-1] == "--platform=ptrace"
    argv = runsc_argv(
        "runsc", Path("/s"), "run", "n", rootless=False, flags=platform_flags("ptrace")
    )
    assert "--platform=ptrace" in argv and "--network=none" in argv and "--oci-seccomp" in argv
    assert argv.index("--platform=ptrace") < argv.index("run")
    log = __import__("logging").getLogger()
    ptrace = make_backend("runsc", log, {"platform": "ptrace"})
    assert isinstance(ptrace, RunscBackend) and ptrace.flags == platform_flags("ptrace")
    default = make_backend("runsc", log, {})
    assert isinstance(default, RunscBackend) and default.platform == "systrap"
    # Sandboxes of different platforms never share a warm pool (its key is describe()).
    assert ptrace.describe() != default.describe()


def test_snapshots_as_root_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Root: the pool may restore, renewed after pool_snapshot_restores restores or
    pool_snapshot_age seconds. Rootless runsc cannot restore: off, with a note to log. Off
    on purpose: off without a note."""
    log = __import__("logging").getLogger()
    backend = make_backend("runsc", log, {"pool_snapshot_restores": 5, "pool_snapshot_age": 60.0})
    monkeypatch.setattr(RunscBackend, "rootless", staticmethod(lambda: False))
    snaps = backend.snapshots()
    assert snaps.available and (snaps.max_restores, snaps.max_age) == (5, 60.0)
    monkeypatch.setattr(RunscBackend, "rootless", staticmethod(lambda: True))
    snaps = backend.snapshots()
    assert not snaps.available and snaps.note == ROOTLESS_NO_SNAPSHOTS
    assert "rootless runsc cannot restore" in snaps.note and "pool_snapshots=False" in snaps.note
    off = make_backend("runsc", log, {"pool_snapshots": False}).snapshots()
    assert not off.available and off.note == ""


def test_a_snapshot_restores_only_under_its_own_settings_and_policy() -> None:
    log = __import__("logging").getLogger()
    backend = make_backend("runsc", log, {})
    shape = _shape(backend.describe(), POLICY)
    assert shape == _shape(make_backend("runsc", log, {}).describe(), POLICY)
    other_policy = build_policy(image="sandbox-kernel/python:latest", memory_limit="2g")
    assert shape != _shape(backend.describe(), other_policy)
    ptrace = make_backend("runsc", log, {"platform": "ptrace"})
    assert shape != _shape(ptrace.describe(), POLICY)


def test_release_from_runsc_version() -> None:
    from sandbox_kernel.backends.gvisor import CURRENT
    from sandbox_kernel.backends.releases import parse_release

    assert parse_release("runsc version 0.0~20240729.0\nspec: 1.0.2-dev\n") == 20240729
    assert parse_release("runsc version release-20251215.0\n") == 20251215
    current = f"runsc version {CURRENT['RUNSC_CURRENT_PIN']}\nspec: 1.2.1\n"
    assert parse_release(current) == 20260905
    for unknown in ("runsc version VERSION_MISSING\n", ""):
        with pytest.raises(SandboxError, match="SANDBOX_KERNEL_RUNSC=current"):
            parse_release(unknown)


def test_runtime_names_the_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    """runsc-current is setup-host's build and never another runsc in its place."""
    from sandbox_kernel.backends import runsc, runsc_tool
    from sandbox_kernel.backends.gvisor import CURRENT_RUNSC

    assert CURRENT_RUNSC.startswith("/usr/local/lib/sandbox-kernel/runsc-v0.0.0-2026")
    monkeypatch.setattr(runsc_tool, "CURRENT_RUNSC", "/nonexistent/runsc")
    with pytest.raises(SandboxError, match="SANDBOX_KERNEL_RUNSC=current sandbox-kernel setup"):
        runsc_tool.find_runsc("runsc-current")
    assert runsc.RunscBackend(runtime="runsc-current").describe()["runtime"] == "runsc-current"
    with pytest.raises(PolicyError, match="runtime: the runsc backend runs"):
        runsc.RunscBackend(runtime="runc")
