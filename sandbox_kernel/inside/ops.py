"""The relay's CONTROL messages as data: every op, who sends it, and its fields (pure).

Shipped into the sandbox with the agent (see ``bundle.py``), so both ends check
the same table. Whoever receives a CONTROL message validates it with :func:`check`: an
unknown op, a missing field, a field of the wrong type or an unknown field is a
:class:`~.protocol.ProtocolError` (on the host, that ends the sandbox). Handlers are
looked up by op in each side's dispatch table (``relay/session.py``, ``inside/agent.py``).
The op tables of ``docs/protocol.md`` are generated from here (:func:`markdown`), and a
unit test keeps them equal. Standard library only, Python >= 3.8.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .protocol import ProtocolError


class Field(NamedTuple):
    types: tuple[type, ...]
    required: bool
    doc: str


def _f(types: Any, doc: str, required: bool = True) -> Field:
    return Field(types if isinstance(types, tuple) else (types,), required, doc)


def _opt(types: Any, doc: str) -> Field:
    return _f(types, doc, required=False)


Ops = dict[str, tuple[str, dict[str, Field]]]  # op -> (what it means, its fields)

# Agent -> host (untrusted: the host refuses anything else).
HELLO = "hello"
STARTED = "started"
PREWARMED = "prewarmed"
RESUMED = "resumed"
EXITED = "exited"
ERROR = "error"
REPLY = "reply"
EXPOSE = "expose"
EXPORT_BEGIN = "export_begin"
EXPORT_DATA = "export_data"
EXPORT_END = "export_end"

# Host -> agent.
START = "start"
PREWARM = "prewarm"
PUT_START = "put_start"
PUT_DIR = "put_dir"
PUT_BEGIN = "put_begin"
PUT_DATA = "put_data"
PUT_END = "put_end"
PUT_DONE = "put_done"
SIGNAL = "signal"
SHUTDOWN = "shutdown"
RESUME = "resume"

_REQ = _f(int, "the request's id, echoed by the `reply`")
_KERNEL = {
    "pid": _f(int, "the kernel's pid"),
    "uid": _f(int, "the kernel's real uid, read from /proc/<pid>/status (-1: unreadable)"),
}
_RESULT = {
    "req": _REQ,
    "ok": _f(bool, "whether the request succeeded"),
    "error": _opt(str, "why not"),
    "host_port": _opt(int, "`expose`: the port on the host's 127.0.0.1"),
    "path": _opt(str, "`export_end`: where the file landed, relative to the notebook's folder"),
    "files": _opt(int, "`put_done`: files written"),
    "bytes": _opt(int, "`put_done`: bytes written"),
}
_LAUNCH = {
    "argv": _f(list, "the kernel's command"),
    "env": _f(dict, "its whole environment (str -> str)"),
    "cwd": _f((str, type(None)), "its working directory (null: the home)"),
    "connection_file": _f(str, "where the connection file goes inside the sandbox"),
    "connection": _f(dict, "the connection file's content (ports 15001-15005, key...)"),
}

_HELLO = {
    "version": _f(int, "the protocol's VERSION"),
    "python": _f(str, "the image's Python version"),
    "release": _f(str, "`uname -r` as seen inside (gVisor: not the host's)"),
    "uid": _f(int, "the agent's uid"),
    "kernel_uid": _f(int, "the uid it will start the kernel as"),
    "pid": _f(int, "the agent's pid"),
    "undumpable": _f(bool, "the agent made itself undumpable (PR_SET_DUMPABLE 0)"),
    "helpers": _f(bool, "the `sandboxed` module and the agent's socket are in place"),
}

AGENT_OPS: Ops = {
    HELLO: ("first frame, as soon as the agent runs", dict(_HELLO)),
    RESUMED: (
        "answer to `resume`: the agent runs (in a sandbox restored from a snapshot: its "
        "facts as at `hello`, which a restored agent never sends again)",
        {
            **_HELLO,
            "prewarmed": _f(bool, "a pre-initialised kernel waits for its key"),
            "kernel_pid": _f(int, "that kernel's pid (-1: no kernel)"),
            "kernel_process_uid": _f(
                int, "its real uid, read from /proc/<pid>/status (-1: no kernel, unreadable)"
            ),
        },
    ),
    STARTED: ("the kernel runs and holds its real key", dict(_KERNEL)),
    PREWARMED: ("warm pool: the kernel is initialised, waiting for its key", dict(_KERNEL)),
    EXITED: (
        "last message: the kernel exited, or the agent ends",
        {
            "status": _f(int, "exit status, or -signal"),
            "why": _f(str, "the reason"),
        },
    ),
    ERROR: (
        "the kernel failed to start, or a protocol error from the host (at most one)",
        {"message": _f(str, "what went wrong")},
    ),
    REPLY: ("answer to a host request (`put_done`)", dict(_RESULT)),
    EXPOSE: (
        "the kernel asks for a sandbox port on the host's 127.0.0.1",
        {"req": _REQ, "port": _f(int, "the sandbox port")},
    ),
    EXPORT_BEGIN: (
        "the kernel offers a file",
        {"req": _REQ, "name": _f(str, "its requested name"), "size": _f(int, "its size")},
    ),
    EXPORT_DATA: ("the next bytes of that file", {"data": _f(str, "base64, at most 32 KiB raw")}),
    EXPORT_END: ("the file is complete", {"req": _REQ}),
}

HOST_OPS: Ops = {
    START: (
        "start the kernel (or hand the pre-warmed one its key)",
        {**_LAUNCH, "exposed": _f(dict, "sandbox port -> host port, for `sandboxed.ports()`")},
    ),
    PREWARM: ("warm pool: start a kernel initialised up to its key", dict(_LAUNCH)),
    PUT_START: ("files follow", {"home": _f(str, "the folder they go under")}),
    PUT_DIR: ("create a folder", {"path": _f(str, "relative, `/`-separated")}),
    PUT_BEGIN: (
        "create a file, new (never through a link)",
        {"path": _f(str, "relative, `/`-separated"), "mode": _f(int, "masked to 0755")},
    ),
    PUT_DATA: ("its next bytes", {"data": _f(str, "base64, at most 32 KiB raw")}),
    PUT_END: ("the file is complete", {}),
    PUT_DONE: ("all files sent; the agent replies with counts or the first error", {"req": _REQ}),
    REPLY: ("answer to an agent request", dict(_RESULT)),
    SIGNAL: ("signal the kernel's process group", {"signum": _f(int, "the signal")}),
    SHUTDOWN: ("the agent ends with status 0", {}),
    RESUME: (
        "the agent answers `resumed`: sent before a checkpoint (every frame before it is "
        "then consumed, none is cut in two by the snapshot) and to a restored agent, which "
        "continues on new pipes without a bundle or `hello`",
        {},
    ),
}


def check(message: dict[str, Any], ops: Ops) -> dict[str, Any]:
    """``message`` if it is a valid op of ``ops``; ProtocolError naming what is wrong."""
    op = message.get("op")
    entry = ops.get(op) if isinstance(op, str) else None
    if entry is None:
        raise ProtocolError("unexpected control op %s" % _short(op))
    fields = entry[1]
    for name, value in message.items():
        if name == "op":
            continue
        field = fields.get(name)
        if field is None:
            raise ProtocolError("%s: unknown field %s" % (op, _short(name)))
        if not _is(value, field.types):
            raise ProtocolError("%s: field %s has the wrong type" % (op, name))
    missing = [name for name, field in fields.items() if field.required and name not in message]
    if missing:
        raise ProtocolError("%s: missing %s" % (op, ", ".join(sorted(missing))))
    return message


def _is(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # JSON true is not a number here
        return bool in types
    return isinstance(value, types)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def markdown(ops: Ops) -> str:
    """A table of ``ops`` for docs/protocol.md."""
    rows = ["| op | fields | meaning |", "| --- | --- | --- |"]
    for op, (doc, fields) in ops.items():
        parts = []
        for name, field in fields.items():
            kind = " or ".join("null" if t is type(None) else t.__name__ for t in field.types)
            parts.append(
                "`%s` (%s%s): %s" % (name, kind, "" if field.required else ", optional", field.doc)
            )
        rows.append("| `%s` | %s | %s |" % (op, "; ".join(parts) or "none", doc))
    return "\n".join(rows) + "\n"


DOC_SECTIONS = {"agent": AGENT_OPS, "host": HOST_OPS}


def with_tables(doc: str) -> str:
    """``doc`` (docs/protocol.md) with its generated op tables rewritten from here."""
    for name, ops in DOC_SECTIONS.items():
        start, end = "<!-- ops:%s:start -->\n" % name, "<!-- ops:%s:end -->" % name
        head, _, rest = doc.partition(start)
        _, _, tail = rest.partition(end)
        doc = head + start + markdown(ops) + end + tail
    return doc
