"""A warm pool's snapshots: which one new restores read, when to make a new one, when to
delete an old one, and when to give snapshots up.

Who calls what: ``WarmPool`` (``pool.py``; everything on the relay loop) makes one
:class:`SnapshotCycle` from its backend's offer (``SandboxBackend.snapshots``). Before each
restore it asks :meth:`SnapshotCycle.take` for the snapshot to read (made first, through
the pool's ``make``, when there is none or the current one is due for renewal), and after
it reports :meth:`restore_failed` or :meth:`restored`, then :meth:`done_reading`. A
snapshot serves at most ``max_restores`` restores and ``max_age`` seconds (bounding what
copies share: docs/security.md), and is deleted once no restore reads it. A restore that
fails retires its snapshot; ``MAX_RESTORE_FAILURES`` in a row, or a checkpoint that fails,
turn snapshots off for the pool. ``drain`` (the pool's) deletes every snapshot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .backends.base import SandboxBackend, Snapshots
from .errors import SandboxError

# Restore failures in a row after which a pool stops using snapshots.
MAX_RESTORE_FAILURES = 3


@dataclass
class Snapshot:
    """One snapshot of the pool's pre-initialised sandbox and its use so far."""

    id: str
    born: float  # the relay loop's time
    restores: int = 0  # handed out so far
    reading: int = 0  # restores under way
    retired: bool = False  # no new restore; deleted once ``reading`` is 0
    deleted: bool = False


class CheckpointFailed(Exception):
    """The pool's ``make`` could not checkpoint its fresh sandboxes (snapshots go off)."""


class SnapshotCycle:
    def __init__(
        self,
        backend: SandboxBackend,
        log: logging.Logger,
        make: Callable[[], Awaitable[str]],
        track: Callable[[asyncio.Task[Any]], None],
    ) -> None:
        """``make``: a new snapshot's id (raises CheckpointFailed when the checkpoint
        itself failed); ``track``: the pool keeps the making task, so its drain cancels it."""
        self.backend = backend
        self.log = log
        self.make = make
        self.track = track
        self.offer: Snapshots = backend.snapshots()
        # Why this pool stopped using snapshots ('' while it may).
        self.off = "" if self.offer.available else "not available"
        if self.offer.note:
            log.warning("warm pool: no snapshots: %s", self.offer.note)
        self.closed = False
        self.current: Snapshot | None = None  # the one new restores read
        self.kept: list[Snapshot] = []  # every one not yet deleted
        self.making: asyncio.Task[Snapshot] | None = None
        self.failures = 0  # restores failed in a row
        self._deleting: set[asyncio.Task[None]] = set()  # deletions (drain awaits them)

    def may_restore(self) -> bool:
        return not self.off and not self.closed

    def known(self) -> bool:
        """A snapshot exists or is being made (a claim waits for it rather than start cold:
        the burst after the first launch)."""
        return self.current is not None or self.making is not None

    async def take(self) -> Snapshot | None:
        """The snapshot the next restore reads, counted as read; None if none could be
        made (the caller starts a fresh sandbox)."""
        try:
            return await self._take()
        except CheckpointFailed as exc:
            self.stop(f"the checkpoint failed: {exc}")
            return None
        except asyncio.CancelledError:
            raise
        except Exception:
            return None  # the fresh sandbox for the snapshot failed: so would a fresh one

    async def _take(self) -> Snapshot:
        """The current one, or a new one once it is due (made by one caller while the others
        wait for it). Counted with no await after the check, so no snapshot serves more
        than ``max_restores``."""
        loop = asyncio.get_running_loop()
        made: Snapshot | None = None  # the one just waited for: never too old to use once
        while True:
            snap = self.current
            if snap is not None and (
                snap.restores >= self.offer.max_restores
                or (snap is not made and loop.time() - snap.born >= self.offer.max_age)
            ):
                self.retire(snap)
                snap = None
            if snap is not None:
                snap.restores += 1
                snap.reading += 1
                return snap
            if self.making is None:
                self.making = loop.create_task(self._make())
                self.track(self.making)
            made = await asyncio.shield(self.making)

    async def _make(self) -> Snapshot:
        try:
            sid = await self.make()
            snap = Snapshot(sid, asyncio.get_running_loop().time())
            self.kept.append(snap)
            if self.closed:
                self.retire(snap)
                raise SandboxError("the warm pool was drained")
            self.current = snap
            self.log.info("warm pool: snapshot %s made; new sandboxes are restored from it", sid)
            return snap
        finally:
            self.making = None

    def restore_failed(self, snap: Snapshot, exc: Exception) -> None:
        self.failures += 1
        self.log.warning(
            "warm pool: restoring a sandbox from snapshot %s failed (%r); starting a fresh "
            "one instead",
            snap.id,
            exc,
        )
        if self.failures >= MAX_RESTORE_FAILURES:
            self.stop(f"{self.failures} restores failed in a row")
        else:
            self.retire(snap)  # the next restore reads a new snapshot

    def restored(self) -> None:
        self.failures = 0

    def done_reading(self, snap: Snapshot) -> None:
        snap.reading -= 1
        self._delete_if_done(snap)

    def retire(self, snap: Snapshot) -> None:
        snap.retired = True
        if self.current is snap:
            self.current = None
        self._delete_if_done(snap)

    def _delete_if_done(self, snap: Snapshot) -> None:
        if snap.retired and snap.reading == 0 and not snap.deleted:
            snap.deleted = True
            if snap in self.kept:
                self.kept.remove(snap)
            self._delete_soon(snap.id)

    def delete_late(self, checkpoint: asyncio.Future[str]) -> None:
        """A done-callback for a checkpoint the pool gave up on: delete what it made."""
        if not checkpoint.cancelled() and checkpoint.exception() is None:
            self._delete_soon(checkpoint.result())

    def _delete_soon(self, snapshot: str) -> None:
        task = asyncio.get_running_loop().create_task(self._delete(snapshot))
        self._deleting.add(task)
        task.add_done_callback(self._deleting.discard)

    async def _delete(self, snapshot: str) -> None:
        try:
            await asyncio.shield(self.backend.remove_snapshot(snapshot))
        except Exception as exc:
            self.log.warning("warm pool: could not delete snapshot %s: %s", snapshot, exc)

    def stop(self, why: str) -> None:
        if not self.off:
            self.off = why
            self.log.error(
                "warm pool: snapshots turned off for this pool (%s); it starts fresh sandboxes",
                why,
            )
        if self.current is not None:
            self.retire(self.current)

    def drain(self) -> list[Awaitable[None]]:
        """Delete every snapshot: what to await (the pool's drain, after it cancelled its
        tasks, awaits them with its sandboxes' removals)."""
        snapshots, self.kept, self.current = list(self.kept), [], None
        for snap in snapshots:
            snap.deleted = True
        return [*(self._delete(s.id) for s in snapshots), *list(self._deleting)]
