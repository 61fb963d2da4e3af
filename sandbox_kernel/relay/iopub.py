"""What the host says on a kernel's IOPub: why its sandbox was stopped (pure).

The relay passes the kernel's ZeroMQ bytes through untouched. On the IOPub port it also
reads the first frames of each message (``zmtp.ZmtpLimiter``'s ``on_message``) to know
the request the kernel was answering: the parent header of its latest message parented
to an ``execute_request`` (:class:`IopubWatch`). When the host knows why the sandbox
ended (its memory limit, a protocol error), the session writes one more message into each
client's IOPub connection, between two of the kernel's messages: an ``error`` signed with
the kernel's key and parented to that request (:func:`stopped_message`), so the cell that
was running shows the reason (JupyterLab, nbclient) before jupyter_client restarts the
kernel. The parent header comes from the kernel, which holds the key anyway: copying it
gives the kernel nothing it could not sign itself.

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


def stopped_message(
    reason: str, parent: dict[str, Any], key: bytes, signature_scheme: str
) -> list[bytes]:
    """The frames of an IOPub ``error`` saying why the kernel was stopped, as a kernel's
    jupyter_client Session would sign it (HMAC over header, parent, metadata, content)."""
    text = stopped_text(reason)
    header = {
        "msg_id": uuid.uuid4().hex,
        "msg_type": "error",
        "username": "sandbox-kernel",
        "session": uuid.uuid4().hex,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "version": "5.3",
    }
    content = {"ename": ENAME, "evalue": text, "traceback": [text]}
    parts = [json.dumps(p).encode() for p in (header, parent, {}, content)]
    signature = b""
    if key:
        digest = getattr(hashlib, signature_scheme.split("-", 1)[-1])
        mac = hmac.new(key, digestmod=digest)
        for part in parts:
            mac.update(part)
        signature = mac.hexdigest().encode()
    return [TOPIC, DELIM, signature, *parts]
