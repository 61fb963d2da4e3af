"""The runsc backend's OCI bundle: a sandbox's ``config.json`` (pure, unit-tested).

Who calls what: ``runsc.py`` writes :func:`oci_config` into each new bundle (and the
probe's); ``runsc_tool.py`` and ``runsc_inventory.py`` find a root sandbox's cgroup by
:func:`cgroups_path`. The sandbox is the Docker backend's (``container_spec``) in OCI
terms: no host mount at all, size-capped ``noexec,nosuid,nodev`` tmpfs for everything
writable, the exported image root read-only, our seccomp profile, the agent as the
sandbox's root with few capabilities (:func:`process_identity`), rlimits, and (root) the
cgroup runsc makes with the policy's memory, CPU and pids caps.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..policy import SANDBOX_PATH, SandboxPolicy
from .cgroups import CFS_PERIOD_US, cfs_quota_us
from .gvisor import AGENT_CAPABILITIES
from .seccomp import seccomp_profile

CGROUP_PREFIX = "sandbox-kernel-runsc-"
SHM_BYTES = 64 * 2**20  # Docker's default /dev/shm size

# Docker's defaults for a container's /proc and /sys.
MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
)  # fmt: skip
READONLY_PATHS = (
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)  # fmt: skip


def process_identity(policy: SandboxPolicy) -> dict[str, Any]:
    """Who the sandbox's first process (the agent) is, as for the Docker backend under gVisor:
    root of the sandbox's own kernel holding only AGENT_CAPABILITIES (none inheritable or
    ambient), no_new_privs, in ``/``; it runs the kernel under the policy's uid with no
    capability (``Preflight.kernel_user_apart``), so kernel code cannot reach the agent's
    pipe or process. The one place that says who the agent is."""
    caps = [f"CAP_{c}" for c in AGENT_CAPABILITIES]
    return {
        # No "additionalGids" (none is the same as []): a current runsc (2026) checks that a
        # restore's spec equals the checkpointed one, which it saved without an empty list,
        # so [] here made every snapshot restore fail ("User" does not match).
        "user": {"uid": 0, "gid": 0},
        "capabilities": {
            "bounding": caps,
            "effective": caps,
            "permitted": caps,
            "inheritable": [],
            "ambient": [],
        },
        "noNewPrivileges": True,
        "cwd": "/",
    }


def cgroups_path(name: str) -> str:
    """The cgroup runsc creates (as root) for sandbox ``name``: one level, so no parent
    folder is left behind when runsc removes it."""
    return "/" + CGROUP_PREFIX + name


def _mount(destination: str, kind: str, *options: str) -> dict[str, Any]:
    return {"destination": destination, "type": kind, "source": kind, "options": list(options)}


def _mounts(policy: SandboxPolicy) -> list[dict[str, Any]]:
    """No host path at all: kernel file systems, runsc's own /dev, and size-capped tmpfs for
    everything writable (nothing there can be executed)."""
    uid, _, gid = policy.user.partition(":")
    safe = ("nosuid", "noexec", "nodev")
    return [
        _mount("/proc", "proc", *safe),
        _mount("/dev", "tmpfs", "nosuid", "noexec", "strictatime", "mode=755", "size=65536k"),
        _mount("/dev/pts", "devpts", "nosuid", "noexec", "newinstance", "ptmxmode=0666"),
        _mount("/dev/shm", "tmpfs", *safe, "mode=1777", f"size={SHM_BYTES}"),
        _mount("/dev/mqueue", "mqueue", *safe),
        _mount("/sys", "sysfs", *safe, "ro"),
        _mount("/tmp", "tmpfs", *safe, "mode=1777", f"size={policy.tmp_bytes}"),
        _mount(policy.home, "tmpfs", *safe, "mode=0700", f"size={policy.home_bytes}",
               f"uid={uid}", f"gid={gid or uid}"),
        # gVisor puts /dev/net/tun in every sandbox; an empty read-only tmpfs hides it (mount
        # and device mknod are refused by seccomp, so it cannot be uncovered).
        _mount("/dev/net", "tmpfs", "ro", *safe, "size=4k", "mode=0755"),
    ]  # fmt: skip


def oci_config(
    policy: SandboxPolicy,
    *,
    rootfs: Path,
    command: list[str],
    annotations: Mapping[str, str],
    cgroups_path: str | None,
    rlimit_as: bool = False,
) -> dict[str, Any]:
    """The bundle's ``config.json``: ``policy`` in OCI terms (pure, unit-tested).

    ``cgroups_path``: where runsc creates the sandbox's cgroup with the policy's memory, CPU
    and pids caps (root); None: no cgroup from runsc (rootless runsc ignores it anyway).
    ``rlimit_as``: also cap each process's address space at ``memory_limit`` (rootless
    without a memory cgroup: the only memory bound left).
    """
    rlimits = [
        {"type": "RLIMIT_NOFILE", "soft": policy.nofile, "hard": policy.nofile},
        {"type": "RLIMIT_NPROC", "soft": policy.nproc, "hard": policy.nproc},
        {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
    ]
    if rlimit_as:
        rlimits.append(
            {"type": "RLIMIT_AS", "soft": policy.memory_bytes, "hard": policy.memory_bytes}
        )
    linux: dict[str, Any] = {
        "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
        "seccomp": seccomp_profile(host_kernel=False),
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
    }
    if cgroups_path is not None:
        linux["cgroupsPath"] = cgroups_path
        linux["resources"] = {
            # swap = memory + swap in OCI terms: equal to the limit means no swap at all.
            "memory": {"limit": policy.memory_bytes, "swap": policy.memory_bytes},
            "cpu": {"quota": cfs_quota_us(policy.cpus), "period": CFS_PERIOD_US},
            # gVisor counts RLIMIT_NPROC per sandbox (a fork bomb meets EAGAIN inside); the
            # host pids cgroup is the looser backstop, as under Docker.
            "pids": {"limit": policy.pids_limit},
        }
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            **process_identity(policy),
            "args": list(command),
            "env": [f"HOME={policy.home}", f"PATH={SANDBOX_PATH}", "LANG=C.UTF-8"],
            "rlimits": rlimits,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "sandbox",
        "mounts": _mounts(policy),
        "linux": linux,
        "annotations": dict(annotations),
    }
