"""What the host says on a kernel's IOPub and shell: why its sandbox was stopped (pure).

The relay passes the kernel's ZeroMQ bytes through untouched. On the IOPub port it also
reads the first frames of each message (``zmtp.ZmtpLimiter``'s ``on_message``) to know
the request the kernel was answering: the parent header of its latest message parented
to an ``execute_request`` (:class:`IopubWatch`). When the host knows why the sandbox
ended (its memory limit, a protocol error), the session writes one more message into each
client's IOPub connection, between two of the kernel's messages: an ``error`` signed with
the kernel's key and parented to that request (:func:`stopped_message`), so the cell that
was running shows the reason (JupyterLab, nbclient) before jupyter_client restarts the
kernel, and a ``status: idle`` after it (the request is over: without it Jupyter Server
keeps the bomb's "busy" as the kernel's state, and on the browser's reconnect after the
restart it then skips its "nudge", which is what waits until the reconnected IOPub
subscription receives: the page could stay at kernel status "Unknown", the next cell's
output lost). Until the restart is over the server reports the kernel idle. On each shell connection
of the client that sent that request (:class:`ShellWatch`: the client sessions its
replies went to) and that has no reply to it yet, it writes the request's
``execute_reply``, status ``error`` with the same reason (:func:`stopped_reply`): a
client waiting for the reply (nbclient, so ``nbconvert --execute --allow-errors``)
records the error and goes on instead of finding the kernel dead. The parent header comes
from the kernel, which holds the key anyway: copying it gives the kernel nothing it could
not sign itself.

Who calls what: ``relay/session.py`` feeds the watch and sends the message; the
provisioner gives the reason, the key and the signature scheme.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import uuid
from typing import Any

DELIM = b"<IDS|MSG>"
# A PUB message: [topic, DELIM, signature, header, parent_header, metadata, content...];
# the parent header is all the watch reads. Headers are a few hundred bytes.
CAPTURE_FRAMES = 5
CAPTURE_BYTES = 8192
ENAME = "SandboxKernelStopped"
TOPIC = b"sandbox-kernel.error"


def stopped_text(reason: str) -> str:
    """The one line people see, in the notebook and from ``sandbox-kernel run``."""
    return f"The sandboxed kernel was stopped: {reason}"


class IopubWatch:
    """Fed each IOPub message's first frames; keeps the latest execute_request header."""

    def __init__(self) -> None:
        self.parent: dict[str, Any] | None = None

    def on_message(self, frames: list[bytes | None]) -> None:
        try:
            at = frames.index(DELIM)
        except ValueError:
            return
        raw = frames[at + 3] if len(frames) > at + 3 else None
        if raw is None:
            return
        try:
            parent = json.loads(raw)
        except ValueError:
            return
        if isinstance(parent, dict) and parent.get("msg_type") == "execute_request":
            self.parent = parent


class ShellWatch:
    """Fed each shell reply's first frames on one client connection: the client sessions
    it answers (a reply's parent is that client's request) and the requests answered."""

    # Answered request ids kept: only the running one matters, a client has few in flight.
    KEPT = 64

    def __init__(self) -> None:
        self.sessions: set[str] = set()
        self.answered: list[str] = []

    def on_message(self, frames: list[bytes | None]) -> None:
        try:  # a reply to a DEALER: [DELIM, signature, header, parent, ...]
            at = frames.index(DELIM)
            parent = json.loads(frames[at + 3] or b"")
        except (ValueError, IndexError):
            return
        if not isinstance(parent, dict) or not isinstance(parent.get("session"), str):
            return
        if len(self.sessions) < self.KEPT:
            self.sessions.add(parent["session"])
        if parent.get("msg_type") == "execute_request" and isinstance(parent.get("msg_id"), str):
            self.answered = [*self.answered[-(self.KEPT - 1) :], parent["msg_id"]]

    def waits_for(self, parent: dict[str, Any]) -> bool:
        """This connection's client sent ``parent`` (an execute_request) and has no reply."""
        return parent.get("session") in self.sessions and parent.get("msg_id") not in self.answered


def _signed(
    msg_type: str,
    content: dict[str, Any],
    parent: dict[str, Any],
    key: bytes,
    signature_scheme: str,
    metadata: dict[str, Any] | None = None,
) -> list[bytes]:
    """[DELIM, signature, header, parent, metadata, content] as a kernel's jupyter_client
    Session would sign it (HMAC over the four parts)."""
    header = {
        "msg_id": uuid.uuid4().hex,
        "msg_type": msg_type,
        "username": "sandbox-kernel",
        "session": uuid.uuid4().hex,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "version": "5.3",
    }
    parts = [json.dumps(p).encode() for p in (header, parent, metadata or {}, content)]
    signature = b""
    if key:
        digest = getattr(hashlib, signature_scheme.split("-", 1)[-1])
        mac = hmac.new(key, digestmod=digest)
        for part in parts:
            mac.update(part)
        signature = mac.hexdigest().encode()
    return [DELIM, signature, *parts]


def _error_content(reason: str) -> dict[str, Any]:
    text = stopped_text(reason)
    return {"ename": ENAME, "evalue": text, "traceback": [text]}


def stopped_message(
    reason: str, parent: dict[str, Any], key: bytes, signature_scheme: str
) -> list[bytes]:
    """The frames of an IOPub ``error`` saying why the kernel was stopped."""
    return [TOPIC, *_signed("error", _error_content(reason), parent, key, signature_scheme)]


def idle_message(parent: dict[str, Any], key: bytes, signature_scheme: str) -> list[bytes]:
    """The IOPub ``status: idle`` that ends the request ``parent`` for its client."""
    content = {"execution_state": "idle"}
    return [
        b"kernel.sandbox-kernel.status",
        *_signed("status", content, parent, key, signature_scheme),
    ]


def stopped_reply(
    reason: str, parent: dict[str, Any], key: bytes, signature_scheme: str
) -> list[bytes]:
    """The frames of the shell ``execute_reply`` (status error) to ``parent``, for a
    DEALER client (no routing identity), saying why the kernel was stopped."""
    content = {"status": "error", "execution_count": None, **_error_content(reason)}
    metadata = {"status": "error"}
    return _signed("execute_reply", content, parent, key, signature_scheme, metadata)
