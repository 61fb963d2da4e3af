"""Files in: copy the operator's chosen host files into a sandbox's home at start.

The provisioner plans the copy in ``pre_launch`` (:func:`plan_copy_in`, blocking
file-system reads, run in a worker thread) and sends it on the relay loop right
before the kernel starts (:func:`send_copy_in`). The bytes go through the agent's
pipe; the sandbox never sees a host path or a mount. Symbolic links and special
files are skipped (a link could point anywhere on the host).
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass

from ..errors import PolicyError, SandboxError
from ..inside import ops
from ..inside.mux import send_file_data
from ..relay.session import AgentSession
from ..settings import format_size
from .policy import ExchangePolicy, inside_dest


@dataclass(frozen=True)
class CopyItem:
    """One folder (``source`` None) or file to create at ``dest`` under the home."""

    dest: str
    source: str | None = None
    size: int = 0
    mode: int = 0o644


def plan_copy_in(
    entries: tuple[str, ...],
    base_dir: str,
    limit: int,
    log: logging.Logger | None = None,
    exclude: str = "",
) -> list[CopyItem]:
    """What to copy for ``copy_in`` entries (absolute, or relative to ``base_dir``, the
    notebook's folder): each lands in the home under its own base name. ``exclude`` (the
    export folder) is never copied: what a sandbox exported must not come back in at the
    next start. Raises PolicyError for a missing entry, a name clash or more than
    ``limit`` bytes, naming the file where the limit was passed."""
    items: list[CopyItem] = []
    total = 0
    seen: set[str] = set()
    excluded = os.path.realpath(exclude) if exclude else ""

    def skipped(path: str) -> bool:
        if excluded and os.path.realpath(path) == excluded:
            if log is not None:
                log.info("copy_in: skipping %s (the export folder)", path)
            return True
        return False

    def add_file(path: str, dest: str, st: os.stat_result) -> None:
        nonlocal total
        total += st.st_size
        if total > limit:
            raise PolicyError(
                f"copy_in: {path} ({format_size(st.st_size)}) takes the copy past "
                f"copy_in_limit={format_size(limit)} ({format_size(total)} so far); raise "
                "copy_in_limit, or list fewer or smaller files"
            )
        items.append(CopyItem(dest, path, st.st_size, stat.S_IMODE(st.st_mode) & 0o755))

    for entry in entries:
        path = os.path.abspath(os.path.join(base_dir, os.path.expanduser(entry)))
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise PolicyError(f"copy_in: {entry!r} ({path}): {exc.strerror}") from None
        if skipped(path) or (excluded and os.path.realpath(path).startswith(excluded + os.sep)):
            continue
        top = inside_dest([os.path.basename(path.rstrip(os.sep))])
        if top in seen:
            raise PolicyError(f"copy_in: two entries are named {top!r} in the sandbox's home")
        seen.add(top)
        if stat.S_ISREG(st.st_mode):
            add_file(path, top, st)
        elif stat.S_ISDIR(st.st_mode):
            items.append(CopyItem(top))
            for root, dirs, files in os.walk(path, followlinks=False):
                rel = os.path.relpath(root, path)
                prefix = [] if rel == "." else rel.split(os.sep)
                for name in sorted(dirs):
                    if os.path.islink(os.path.join(root, name)):
                        continue  # os.walk does not descend into it either
                    if skipped(os.path.join(root, name)):
                        dirs.remove(name)  # nor into the export folder
                        continue
                    items.append(CopyItem(inside_dest([top, *prefix, name])))
                for name in sorted(files):
                    full = os.path.join(root, name)
                    fst = os.lstat(full)
                    if not stat.S_ISREG(fst.st_mode):
                        if log is not None:
                            log.info("copy_in: skipping %s (not a regular file)", full)
                        continue
                    add_file(full, inside_dest([top, *prefix, name]), fst)
                dirs.sort()
        else:
            raise PolicyError(f"copy_in: {entry!r} ({path}) is not a regular file or folder")
    return items


def notebook_folder_entries(notebook_dir: str, exclude: str) -> tuple[str, ...]:
    """``copy_in_notebook_folder``: the notebook folder's entries as ``copy_in`` entries
    (each lands in the home under its own name, where the kernel starts), hidden ones
    (``.ssh``, ``.jupyter``, ...: a notebook folder may be the user's home) and the export
    folder left out. Blocking (a directory listing)."""
    excluded = os.path.realpath(exclude) if exclude else ""
    entries = []
    for name in sorted(os.listdir(notebook_dir)):
        path = os.path.join(notebook_dir, name)
        if name.startswith(".") or os.path.realpath(path) == excluded:
            continue
        mode = os.lstat(path).st_mode
        if stat.S_ISREG(mode) or stat.S_ISDIR(mode):  # links and sockets stay out, silently
            entries.append(path)
    return tuple(entries)


def plan_kernel_files(
    exchange: ExchangePolicy, notebook_dir: str, log: logging.Logger | None = None
) -> list[CopyItem]:
    """Everything copied into a kernel's home at its start: ``copy_in`` and, with
    ``copy_in_notebook_folder``, the notebook's folder, together within ``copy_in_limit``
    (:func:`plan_copy_in`; the provisioner calls this in a worker thread). A name in both
    is refused as a clash."""
    export_folder = os.path.join(notebook_dir, exchange.export_dir)
    entries = exchange.copy_in
    if exchange.copy_in_notebook_folder:
        entries += notebook_folder_entries(notebook_dir, export_folder)
    return plan_copy_in(entries, notebook_dir, exchange.copy_in_bytes, log, export_folder)


async def send_copy_in(session: AgentSession, items: list[CopyItem], home: str) -> int:
    """On the relay loop: send ``items`` to the agent, which writes them under ``home``;
    return the bytes copied. Raises SandboxError if the sandbox refused (e.g. full)."""
    assert session.requests is not None
    session.send_control({"op": ops.PUT_START, "home": home})
    sent = 0
    for item in items:
        if item.source is None:
            session.send_control({"op": ops.PUT_DIR, "path": item.dest})
            continue
        session.send_control({"op": ops.PUT_BEGIN, "path": item.dest, "mode": item.mode})
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(item.source, flags)
        except OSError as exc:
            raise SandboxError(f"copy_in: cannot read {item.source}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            # As planned: a file growing meanwhile cannot pass the limit.
            sent += await send_file_data(session.mux, f, item.size, ops.PUT_DATA)
        await session.pipe_writable()  # raises if the sandbox went away meanwhile
        session.send_control({"op": ops.PUT_END})
    reply = await session.requests.ask({"op": ops.PUT_DONE})
    if not reply.get("ok"):
        raise SandboxError(f"copy_in: the sandbox refused the files: {reply.get('error')}")
    return sent
