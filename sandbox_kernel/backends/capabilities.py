"""Which policy properties a backend enforces, and the fail-closed refusal (pure).

Every backend reports, for one policy on one host, the properties of
:data:`PROPERTIES` it cannot enforce (with the reason and the fix). The
provisioner's preflight calls :func:`refuse_unenforced`: a missing property
refuses the launch, naming it, unless the operator listed it in the loudly
named ``accept_unenforced`` setting; accepted gaps become a warning logged at
every launch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..errors import PolicyError, SandboxError

# Property -> what it means. Names match the provisioner's settings where one exists.
PROPERTIES: dict[str, str] = {
    "host_files": "no host file is visible: a private, read-only kernel root filesystem",
    "network": "no network: only the sandbox's own loopback",
    "unprivileged_user": "the kernel runs as an unprivileged uid with no capabilities",
    "no_new_privs": "no_new_privs: setuid binaries and file capabilities grant nothing",
    "seccomp": "a seccomp filter denies namespaces, mounts, BPF, ptrace, keyrings...",
    "memory_limit": "memory cap (no swap beyond it)",
    "cpu_limit": "CPU cap",
    "nproc_limit": "per-sandbox process limit (a fork bomb meets EAGAIN)",
    "pids_limit": "host pids cgroup backstop",
    "nofile_limit": "open files limit (RLIMIT_NOFILE)",
    "tmp_size": "size caps of /tmp and the home folder (tmpfs)",
}


def check_accepted(names: Iterable[str]) -> tuple[str, ...]:
    """Validate ``accept_unenforced``: known property names only."""
    accepted = tuple(names)
    unknown = sorted(set(accepted) - set(PROPERTIES))
    if unknown:
        raise PolicyError(
            f"accept_unenforced: unknown propert{'y' if len(unknown) == 1 else 'ies'} "
            f"{', '.join(unknown)}; known: {', '.join(PROPERTIES)}"
        )
    return accepted


def refuse_unenforced(
    backend: str, missing: Mapping[str, str], accepted: Iterable[str]
) -> tuple[str, ...]:
    """Raise naming every missing property the operator did not accept; return warnings
    for the accepted ones."""
    accepted = set(accepted)
    refused = {k: v for k, v in missing.items() if k not in accepted}
    if refused:
        what = "; ".join(f"{k} ({v})" for k, v in sorted(refused.items()))
        raise SandboxError(
            f"backend {backend!r} cannot enforce this policy on this host: {what}. Refusing to "
            "start the kernel (fail closed). Fix the host, choose another backend, or accept the "
            f"gap explicitly with accept_unenforced={sorted(refused)!r}"
        )
    return tuple(
        f"backend {backend!r} does NOT enforce {k} ({v}); accepted by accept_unenforced"
        for k, v in sorted(missing.items())
    )
