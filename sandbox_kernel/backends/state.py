"""Per-user state folders of the backends that run sandboxes themselves (no daemon keeps
their state): root's under /run/sandbox-kernel/<kind>; an ordinary user's under
$XDG_RUNTIME_DIR/sandbox-kernel/<kind> (under JupyterHub, ``UserCgroupSpawner`` makes
that folder for each server), else, without XDG_RUNTIME_DIR, a 0700 folder under /tmp
named by uid. Each must be a folder of the server's own uid that nobody else can enter:
another user could otherwise plant or read a sandbox's state. A folder that is not is
refused with its owner and the fix, never passed over for another (a predictable /tmp
name can be taken first by another user). Used by ``runsc_inventory.py`` (``runsc --root``,
its bundles and snapshots) and ``pipe.py`` (a record per sandbox, for ``ps`` and ``gc``).
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import SandboxError


def root_base(kind: str) -> Path:
    return Path("/run/sandbox-kernel") / kind


def bases(kind: str, euid: int, environ: Mapping[str, str]) -> list[Path]:
    """Where this user's state of ``kind`` may live, preferred first (pure)."""
    if euid == 0:
        return [root_base(kind)]
    found = []
    runtime_dir = environ.get("XDG_RUNTIME_DIR", "")
    if runtime_dir.startswith("/"):
        found.append(Path(runtime_dir) / "sandbox-kernel" / kind)
    found.append(Path(f"/tmp/sandbox-kernel-{kind}-{euid}"))
    return found


def private_problem(path: Path) -> str:
    """'' if ``path`` is a real folder of ours that nobody else can enter, else why not."""
    try:
        st = path.lstat()
    except OSError as exc:
        return str(exc)
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a folder"
    if st.st_uid != os.geteuid():
        return f"{path} belongs to {_owner(st.st_uid)}, not to this server's uid {os.geteuid()}"
    if st.st_mode & 0o077:
        return f"{path} has mode {stat.S_IMODE(st.st_mode):o}; it must be 0700"
    return ""


def _owner(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def state_base(kind: str, subdirs: Iterable[str] = ()) -> Path:
    """This user's state folder of ``kind`` (and its ``subdirs``), created 0700; raises
    SandboxError naming the folder, its owner and the fix if it is not a private folder of
    this user's (nothing else is tried)."""
    found = bases(kind, os.geteuid(), os.environ)
    base = found[0]
    if len(found) > 1:  # XDG_RUNTIME_DIR is set: it is used, or nothing is
        why = private_problem(base.parents[1])
        if why:
            raise SandboxError(
                f"XDG_RUNTIME_DIR is not a private folder of this user: {why}. Point "
                "XDG_RUNTIME_DIR at a folder of this user's with mode 0700 (logind makes "
                "/run/user/<uid>; UserCgroupSpawner makes one per server), or unset it"
            )
    for d in (base, *(base / s for s in subdirs)):
        try:
            d.mkdir(mode=0o700, parents=d is base)
        except FileExistsError:
            pass
        why = private_problem(d)
        if why:
            raise SandboxError(f"cannot keep sandbox state in {d}: {why}. {_fix(d)}")
    return base


def _fix(folder: Path) -> str:
    if folder.is_relative_to("/tmp"):
        return (
            "Another user may have created it to stop this one's sandboxes: only they or root "
            f"can remove it (`sudo rm -rf {folder}`). Or set XDG_RUNTIME_DIR to a folder of "
            "this user's with mode 0700 (under JupyterHub, UserCgroupSpawner does)"
        )
    return f"Remove it, or make it a folder of this user's with mode 0700 (`chmod 700 {folder}`)"


def existing_bases(kind: str) -> list[Path]:
    """Every state folder of ``kind`` of this user that exists and is private (ps, gc)."""
    return [b for b in bases(kind, os.geteuid(), os.environ) if not private_problem(b)]


# The per-server runtime folders UserCgroupSpawner makes (sandbox_kernel/hub.py).
HUB_RUNTIME_PARENT = Path("/run/sandbox-kernel-users")


def users_bases(kind: str) -> list[tuple[Path, int]]:
    """Root's view for ``ps``: every ordinary user's private state folder of ``kind``
    (a hub server's runtime folder, logind's ``/run/user/<uid>``, the ``/tmp`` fallback),
    with the uid owning it. Only real folders of a non-root uid with mode 0700 count; what
    is in them is the user's, to be read as that user."""
    patterns = (
        (HUB_RUNTIME_PARENT, f"*/sandbox-kernel/{kind}"),
        (Path("/run/user"), f"*/sandbox-kernel/{kind}"),
        (Path("/tmp"), f"sandbox-kernel-{kind}-*"),
    )
    found = []
    for parent, pattern in patterns:
        for path in sorted(parent.glob(pattern)):
            try:
                st = path.lstat()
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and st.st_uid != 0 and not st.st_mode & 0o077:
                found.append((path, st.st_uid))
    return found
