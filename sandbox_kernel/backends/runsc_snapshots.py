"""The runsc backend's snapshots (root only; ``pool_snapshots``): a warm pool's
pre-initialised sandbox checkpointed to disk, and the record of each snapshot this process
made.

Who calls what: ``RunscBackend.snapshots`` asks :func:`offered` what the pool may do;
``RunscBackend.checkpoint`` runs :func:`checkpoint` in a worker thread: an uncompressed
``runsc checkpoint`` into ``<state>/images/<name>/image`` (about 50 MiB: the sandbox's
memory), beside ``owner.json`` (``gc`` reads it); ``RunscBackend.restore`` looks the record
up in :data:`SNAPSHOTS` and restores a new sandbox from it under the same flags, with the
same command and only if its :func:`shape` (settings and policy) matches. Snapshots go
with their pool (``remove_snapshot``: :func:`remove`), at exit (:func:`remove_all`) and,
after a crash, with ``gc`` (``runsc_inventory.remove_orphans``). Rootless runsc cannot
restore, so the pool starts fresh sandboxes there (a logged note).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import SandboxError
from ..policy import SandboxPolicy
from .base import Snapshots
from .owner import Owner
from .runsc_inventory import SNAPSHOT_PREFIX, state_base
from .runsc_tool import Running, runsc_call
from .spawned import STDERR_TAIL, Registry

ROOTLESS_NO_SNAPSHOTS = (
    "rootless runsc cannot restore a checkpoint, so the warm pool starts each sandbox afresh "
    "(pool_snapshots=False silences this note)"
)


@dataclass(frozen=True)
class SnapshotRecord:
    """A snapshot this process made: where, and what its restores must match."""

    folder: Path  # <state>/images/<name>: owner.json, and image/ (runsc's files)
    command: tuple[str, ...]
    shape: str  # the backend's settings and the policy it was made under (a digest)


# Every snapshot this process made and has not removed (remove_all deletes them at exit).
SNAPSHOTS: Registry[SnapshotRecord] = Registry()


def shape(describe: Mapping[str, Any], policy: SandboxPolicy) -> str:
    """A digest of a backend's settings (``describe``) and a policy: a snapshot's restores
    must run under the same (pure)."""
    text = json.dumps([describe, asdict(policy)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def offered(wanted: bool, rootless: bool, max_restores: int, max_age: float) -> Snapshots:
    """What a warm pool may do with snapshots (``pool_snapshots``: ``wanted``)."""
    if not wanted:
        return Snapshots(False)
    if rootless:
        return Snapshots(False, note=ROOTLESS_NO_SNAPSHOTS)
    return Snapshots(True, max_restores=max_restores, max_age=max_age)


def checkpoint(running: Running | None, sandbox_id: str, owner: Owner) -> str:
    """Checkpoint sandbox ``sandbox_id`` into a new snapshot of ``owner``'s; returns its
    name. Blocking."""
    if running is None:
        raise SandboxError(f"sandbox {sandbox_id} is gone")
    if running.rootless:
        raise SandboxError(ROOTLESS_NO_SNAPSHOTS)
    name = SNAPSHOT_PREFIX + secrets.token_hex(6)
    folder = state_base() / "images" / name
    folder.mkdir(mode=0o700)
    # From now on, remove_all (at exit) deletes it too.
    SNAPSHOTS.add(name, SnapshotRecord(folder, running.command, running.shape))
    try:
        (folder / "owner.json").write_text(json.dumps(owner.labels()))
        # Uncompressed: 4x faster to write and to restore, and a restored sandbox does
        # not keep the decompressor's ~50 MiB of heap (docs/backends.md).
        done = runsc_call(running, "checkpoint", "--compression=none",
                          "--image-path", str(folder / "image"), sandbox_id,
                          timeout=120)  # fmt: skip
        if done.returncode != 0:
            raise SandboxError(f"runsc checkpoint failed: {done.stderr.strip()[-STDERR_TAIL:]}")
    except BaseException:
        remove(name)
        raise
    return name


def remove(snapshot: str) -> None:
    """Delete a snapshot of this process's; nothing if it is gone. Blocking."""
    record = SNAPSHOTS.take(snapshot)
    if record is not None:
        shutil.rmtree(record.folder, ignore_errors=True)


def remove_all() -> None:
    """At exit (``RunscBackend.remove_all``): every snapshot this process made."""
    for _name, record in SNAPSHOTS.take_all():
        shutil.rmtree(record.folder, ignore_errors=True)
