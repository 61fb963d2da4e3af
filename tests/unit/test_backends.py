"""Pure parts of the backends: command lines, capability refusals, names, the BPF filter."""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox_kernel.backends import pipe
from sandbox_kernel.backends import state as state_folders
from sandbox_kernel.backends.base import SandboxBackend
from sandbox_kernel.backends.bpf import seccomp_bpf
from sandbox_kernel.backends.bwrap import bwrap_argv, parse_version
from sandbox_kernel.backends.capabilities import PROPERTIES, check_accepted, refuse_unenforced
from sandbox_kernel.backends.cgroups import v1_mounts
from sandbox_kernel.backends.firejail import chroot_enabled, firejail_argv
from sandbox_kernel.backends.owner import Owner, process_start
from sandbox_kernel.backends.registry import (
    BACKENDS,
    backend_class,
    default_kernel_name,
    display_name,
    make_backend,
)
from sandbox_kernel.backends.spawned import OUTPUT_PIPE_SIZE, output_pipe
from sandbox_kernel.errors import PolicyError, SandboxError
from sandbox_kernel.kernelspec import build_kernelspec
from sandbox_kernel.policy import build_policy

POLICY = build_policy(image="sandbox-kernel/python:latest", tmp_size="64m", home_size="32m")
ROOTFS = Path("/var/lib/sandbox-kernel/rootfs/x")
CMD = ["python3", "-I", "-S", "-c", "pass"]


def _pairs(argv: list[str]) -> list[tuple[str, str]]:
    return list(itertools.pairwise(argv))


def test_bwrap_argv_isolates_everything() -> None:
    argv = bwrap_argv(POLICY, ROOTFS, CMD, seccomp=7)
    for flag in (
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--as-pid-1",
        "--clearenv",
    ):
        assert flag in argv
    pairs = _pairs(argv)
    assert ("--ro-bind", str(ROOTFS)) in pairs and argv[argv.index(str(ROOTFS)) + 1] == "/"
    assert "--bind" not in argv and "--dev-bind" not in argv, "nothing of the host is writable"
    assert ("--cap-drop", "ALL") in pairs and "--cap-add" not in argv
    assert ("--uid", "1000") in pairs and ("--gid", "1000") in pairs
    assert ("--seccomp", "7") in pairs
    size_tmp = argv.index("/tmp") - 5
    assert argv[size_tmp : size_tmp + 6] == [
        "--size", str(64 * 2**20), "--perms", "1777", "--tmpfs", "/tmp",
    ]  # fmt: skip
    assert ("--size", str(32 * 2**20)) in pairs
    shm = argv.index("/dev/shm") - 5
    assert argv[shm : shm + 8] == [
        "--size", str(64 * 2**20), "--perms", "1777", "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
    ], "/dev is read-only (bwrap makes it a tmpfs the sandbox owns); /dev/shm is capped"  # fmt: skip
    assert argv[-len(CMD) - 1 :] == ["--", *CMD]
    assert "--share-net" not in argv


def test_bwrap_argv_without_filter() -> None:
    assert "--seccomp" not in bwrap_argv(POLICY, ROOTFS, CMD, seccomp=-1)


def test_firejail_argv() -> None:
    argv = firejail_argv(POLICY, ROOTFS, CMD)
    for flag in (
        f"--chroot={ROOTFS}",
        "--net=none",
        "--dns=127.0.0.1",  # over the host resolv.conf firejail copies into its chroot
        "--private",
        "--private-tmp",
        "--private-dev",
        "--caps.drop=all",
        "--nonewprivs",
        "--restrict-namespaces",
        "--seccomp.block-secondary",
        "--noprofile",
        f"--rlimit-nofile={POLICY.nofile}",
    ):
        assert flag in argv
    seccomp = [a for a in argv if a.startswith("--seccomp=")]
    assert len(seccomp) == 1 and "ptrace" in seccomp[0] and "bpf" in seccomp[0]
    assert argv[-len(CMD) - 1 :] == ["--", *CMD]


def test_chroot_enabled() -> None:
    assert chroot_enabled("# comment\nchroot yes\n")
    assert not chroot_enabled("# chroot yes\n")
    assert not chroot_enabled("chroot no\n")


def test_parse_version() -> None:
    assert parse_version("bubblewrap 0.8.0\n") == (0, 8, 0)
    assert parse_version("") == ()
    assert parse_version("bubblewrap 0.4.1") < (0, 8, 0)


def test_refusal_names_every_missing_property() -> None:
    missing = {"memory_limit": "no memory cgroup", "pids_limit": "no pids cgroup"}
    with pytest.raises(SandboxError) as err:
        refuse_unenforced("bwrap", missing, ())
    text = str(err.value)
    assert "memory_limit (no memory cgroup)" in text and "pids_limit (no pids cgroup)" in text
    assert "fail closed" in text and "accept_unenforced" in text
    with pytest.raises(SandboxError, match="pids_limit") as err:
        refuse_unenforced("bwrap", missing, ["memory_limit"])
    assert "memory_limit (" not in str(err.value)
    warnings = refuse_unenforced("bwrap", missing, ["memory_limit", "pids_limit"])
    assert len(warnings) == 2 and all("does NOT enforce" in w for w in warnings)
    assert refuse_unenforced("bwrap", {}, ()) == ()


def test_accept_unenforced_is_validated() -> None:
    assert check_accepted(["tmp_size"]) == ("tmp_size",)
    with pytest.raises(PolicyError, match="nonsense"):
        check_accepted(["nonsense"])
    with pytest.raises(PolicyError, match="accept_unenforced"):
        make_backend(
            "docker", __import__("logging").getLogger(), {"accept_unenforced": ["seccomp"]}
        )
    assert "network" in PROPERTIES and "seccomp" in PROPERTIES


def test_a_spawned_sandbox_writes_into_an_enlarged_pipe() -> None:
    """The pipe a runsc, bubblewrap or firejail sandbox writes its frames into holds 1 MiB
    where the host allows it (fs.pipe-max-size), not Linux's 64 KiB, at which the agent and
    the relay took turns per frame (docs/performance.md); where it does not, the default."""
    allowed = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    read_end, write_end = output_pipe()
    try:
        size = fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert size == (OUTPUT_PIPE_SIZE if allowed >= OUTPUT_PIPE_SIZE else 64 * 1024)


def test_names_and_tiers() -> None:
    assert next(iter(BACKENDS)) == "docker"
    assert display_name("docker") == "Python 3 (sandboxed)"
    assert display_name("bwrap") == "Python 3 (sandboxed, bubblewrap: host kernel)"
    assert "weaker" in display_name("docker-runc")
    assert default_kernel_name("docker") == "sandbox-python"
    assert default_kernel_name("firejail") == "sandbox-python-firejail"
    # docker-runc means runc, and choosing it is the opt-in to a runtime without gVisor.
    runc = make_backend("docker-runc", __import__("logging").getLogger(), {})
    assert runc.describe() == {
        "backend": "docker-runc",
        "runtime": "runc",
        "allow_weaker_runtime": True,
    }
    docker = make_backend("docker", __import__("logging").getLogger(), {})
    assert docker.describe()["runtime"] == "runsc"
    with pytest.raises(PolicyError, match="allow_weaker_runtime"):
        make_backend("docker", __import__("logging").getLogger(), {"runtime": "runc"})
    with pytest.raises(PolicyError, match="backend"):
        display_name("lxc")


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("what", ["list_sandboxes", "remove_orphans"])
def test_every_backend_lists_and_removes_its_orphans(name: str, what: str) -> None:
    """`sandbox-kernel ps` and `gc` see a backend only through these two: the base class's
    empty defaults would leave its sandboxes unlisted and a dead server's for good."""
    found = getattr(backend_class(name), what).__func__
    assert found is not getattr(SandboxBackend, what).__func__, f"{name} has no {what}"


def test_kernelspec_per_backend() -> None:
    spec = build_kernelspec({"backend": "bwrap"})
    assert spec["display_name"] == "Python 3 (sandboxed, bubblewrap: host kernel)"
    assert spec["metadata"]["kernel_provisioner"]["config"]["backend"] == "bwrap"
    assert build_kernelspec({"backend": "docker-runc"})["display_name"].startswith("Python 3 (")
    assert build_kernelspec({}, display_name="Mine")["display_name"] == "Mine"
    with pytest.raises(PolicyError, match="backend"):
        build_kernelspec({"backend": "chroot"})
    with pytest.raises(
        PolicyError, match="accept_unenforced: applies to the runsc, bwrap, firejail"
    ):
        build_kernelspec({"backend": "docker", "accept_unenforced": ["tmp_size"]})
    with pytest.raises(PolicyError, match="unknown"):
        build_kernelspec({"backend": "bwrap", "accept_unenforced": ["everything"]})


def test_v1_mounts(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n"
        "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
    )
    found = v1_mounts(str(mounts))
    assert found == {
        "memory": Path("/sys/fs/cgroup/memory"),
        "cpu": Path("/sys/fs/cgroup/cpu,cpuacct"),
    }
    assert v1_mounts(str(tmp_path / "absent")) == {}


def test_seccomp_filter_compiles_with_libseccomp() -> None:
    """The real libseccomp builds the filter: a whole number of 8-byte BPF instructions."""
    bpf = seccomp_bpf()
    assert len(bpf) % 8 == 0 and 40 < len(bpf) // 8 < 4096


def test_remove_empty_cgroups_keeps_busy_ones(tmp_path: Path) -> None:
    from sandbox_kernel.backends.cgroups import PARENT, remove_empty

    mem = tmp_path / "memory"
    (mem / PARENT / "ended").mkdir(parents=True)
    (mem / PARENT / "running").mkdir()
    (mem / PARENT / "running" / "cgroup.procs").write_text("42\n")  # stands for EBUSY
    assert remove_empty({"memory": mem, "pids": tmp_path / "absent"}) == ["ended"]
    assert (mem / PARENT / "running").is_dir()


def test_runc_profile_adds_host_kernel_rules_only_under_runc() -> None:
    import json

    from sandbox_kernel.backends.docker import container_spec

    def profile(runtime: str) -> dict[str, object]:
        spec = container_spec(POLICY, runtime=runtime, command=CMD, labels={}, name="n")
        opt = next(o for o in spec["security_opt"] if o.startswith("seccomp="))
        return json.loads(opt[len("seccomp=") :])  # type: ignore[no-any-return]

    runc, runsc = profile("runc"), profile("runsc")
    runc_rules = runc["syscalls"]
    assert {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38} in runc_rules  # type: ignore[operator]
    assert any("io_uring_setup" in r["names"] for r in runc_rules)  # type: ignore[attr-defined]
    names = [n for r in runsc["syscalls"] for n in r["names"]]  # type: ignore[attr-defined]
    assert "clone3" not in names and "io_uring_setup" not in names, "gVisor's profile unchanged"


def test_profile_refuses_tun_creation_and_raw_ip_sockets_by_argument() -> None:
    """The argument rules of the Docker profile: TUNSETIFF on the request's low 32 bits;
    raw sockets only for AF_INET/AF_INET6 (netlink sockets, SOCK_RAW too, stay allowed)."""
    from sandbox_kernel.backends.seccomp import seccomp_profile

    for host_kernel in (False, True):
        rules = seccomp_profile(host_kernel)["syscalls"]
        ioctl = [r for r in rules if r["names"] == ["ioctl"]]
        assert ioctl == [
            {
                "names": ["ioctl"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 1,
                "args": [
                    {
                        "index": 1,
                        "value": 0xFFFFFFFF,
                        "valueTwo": 0x400454CA,
                        "op": "SCMP_CMP_MASKED_EQ",
                    }
                ],
            }
        ]
        socket_args = [r["args"] for r in rules if r["names"] == ["socket"]]
        raw_type = {"index": 1, "value": 0xF, "valueTwo": 3, "op": "SCMP_CMP_MASKED_EQ"}
        for family in (2, 10):
            same_family = {"index": 0, "value": family, "valueTwo": 0, "op": "SCMP_CMP_EQ"}
            assert [same_family, raw_type] in socket_args
        assert [{"index": 0, "value": 17, "valueTwo": 0, "op": "SCMP_CMP_EQ"}] in socket_args
        assert not any(args == [raw_type] for args in socket_args), "SOCK_RAW alone hits netlink"


_FILTERED_CHILD = r"""
import ctypes, errno, json, os, platform, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR_IOCTL = {"x86_64": 16, "aarch64": 29}[platform.machine()]

def attempts():
    out = {}
    for name, args in (("raw inet", (socket.AF_INET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 1)),
                       ("raw inet6", (socket.AF_INET6, socket.SOCK_RAW, 58)),
                       ("netlink", (socket.AF_NETLINK, socket.SOCK_RAW, 0)),
                       ("tcp", (socket.AF_INET, socket.SOCK_STREAM, 0))):
        try:
            socket.socket(*args).close()
            out[name] = "OK"
        except OSError as e:
            out[name] = errno.errorcode[e.errno]
    fd = os.open("/dev/null", os.O_RDWR)
    buf = ctypes.create_string_buffer(40)
    for name, request in (("TUNSETIFF", 0x400454CA), ("TUNSETIFF, high bits", (1 << 32) | 0x400454CA)):
        rv = libc.syscall(ctypes.c_long(NR_IOCTL), ctypes.c_long(fd), ctypes.c_ulong(request), buf)
        out[name] = "OK" if rv == 0 else errno.errorcode[ctypes.get_errno()]
    os.close(fd)
    return out

before = attempts()
prog = open(sys.argv[1], "rb").read()
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
fprog = Fprog(len(prog) // 8, prog)
assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0, ctypes.get_errno()  # SECCOMP_MODE_FILTER
print(json.dumps({"before": before, "after": attempts()}))
"""


def test_compiled_filter_refuses_tun_and_raw_ip_sockets_but_not_netlink(tmp_path: Path) -> None:
    """The libseccomp-compiled filter, loaded for real in a child process: the same
    attempts before (control) and after it."""
    import json
    import os
    import subprocess
    import sys

    assert os.geteuid() == 0, "run as root: the control needs raw sockets to be possible"
    prog = tmp_path / "filter.bpf"
    prog.write_bytes(seccomp_bpf())
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _FILTERED_CHILD, str(prog)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["before"]["raw inet"] == got["before"]["raw inet6"] == "OK"
    assert got["before"]["TUNSETIFF"] == got["before"]["TUNSETIFF, high bits"] == "ENOTTY"
    assert got["after"] == {
        "raw inet": "EPERM",
        "raw inet6": "EPERM",
        "netlink": "OK",
        "tcp": "OK",
        "TUNSETIFF": "EPERM",
        "TUNSETIFF, high bits": "EPERM",
    }


def test_unreachable_docker_names_the_real_cause() -> None:
    import errno

    from sandbox_kernel.backends.docker import unreachable_message

    denied = unreachable_message(
        "/var/run/docker.sock", errno.EACCES, "x", user="alice (uid 1001)",
        socket_owner=("root", "docker", 0o660),
    )  # fmt: skip
    assert denied.startswith("permission denied on the Docker socket /var/run/docker.sock")
    assert "root:docker, mode 660" in denied and "alice (uid 1001)" in denied
    assert "'docker' group" in denied and "--backend runsc" in denied and "Start it" not in denied
    for code, state in ((errno.ENOENT, "no socket"), (errno.ECONNREFUSED, "nothing listens")):
        stopped = unreachable_message("/run/d.sock", code, "x", user="root (uid 0)")
        assert state in stopped and "setup-host" in stopped and "permission" not in stopped
    other = unreachable_message("tcp://10.0.0.1:2375", None, "timed out", user="root (uid 0)")
    assert "timed out" in other and "setup-host" in other
    # A DOCKER_HOST pointing nowhere looks like a stopped daemon: the message names it.
    wrong = unreachable_message(
        "/tmp/nothing.sock", errno.ENOENT, "x", user="root (uid 0)",
        docker_host="unix:///tmp/nothing.sock",
    )  # fmt: skip
    assert "DOCKER_HOST='unix:///tmp/nothing.sock'" in wrong and "unset DOCKER_HOST" in wrong


def test_pipe_records_name_a_process_by_pid_and_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gc kills a dead server's sandbox by its recorded pid only if that pid still is the
    process it recorded (same start time): a reused pid is never signalled, and ps does not
    list it; the record goes either way."""
    monkeypatch.setattr(state_folders, "existing_bases", lambda kind: [tmp_path])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = Owner(gone.pid, "1", socket.gethostname(), "u", "k1")
    procs = [subprocess.Popen(["sleep", "60"], start_new_session=True) for _ in ("kept", "killed")]
    kept, killed = procs
    try:
        for name, proc, start in (
            ("reused", kept, "1"),
            ("orphan", killed, process_start(killed.pid)),
        ):
            record = {"backend": "bwrap", "name": name, "pid": proc.pid, "pid_start": start,
                      "started": 0, "labels": dead.labels(), "cgroups": []}  # fmt: skip
            (tmp_path / f"{name}.json").write_text(json.dumps(record))
        assert [r.name for r in pipe.PipeBackend.list_sandboxes()] == ["orphan"]
        assert sorted(pipe.PipeBackend.remove_orphans()) == ["orphan", "reused"]
        assert killed.wait(timeout=10) == -9 and kept.poll() is None
        assert not list(tmp_path.iterdir())
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
