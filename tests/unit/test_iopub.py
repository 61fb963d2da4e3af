"""What the host writes on a kernel's IOPub when it knows why the sandbox ended (pure):
a message jupyter_client accepts as the kernel's, parented to the running request, and
written only between two of the kernel's messages."""

from __future__ import annotations

import json

from jupyter_client.session import Session

from sandbox_kernel.relay.iopub import (
    DELIM,
    ENAME,
    IopubWatch,
    ShellWatch,
    idle_message,
    stopped_message,
    stopped_reply,
)
from sandbox_kernel.relay.zmtp import GREETING_SIZE, ZmtpLimiter, encode_message

KEY = b"k" * 64
GREETING = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL" + b"\x00" * 16 + b"\x00" * 32
READY = b"\x04\x19\x05READY\x0bSocket-Type\x00\x00\x00\x03PUB"  # a command frame


def kernel_message(session: Session, msg_type: str, parent: dict) -> list[bytes]:  # type: ignore[type-arg]
    msg = session.msg(msg_type, {"name": "stdout", "text": "x" * 1000}, parent=parent)
    return [b"kernel.x.stream", *session.serialize(msg)]


def test_the_message_passes_jupyter_clients_signature_check() -> None:
    client = Session(key=KEY, signature_scheme="hmac-sha256")
    request = client.msg("execute_request", {"code": "bomb()"})
    parent = json.loads(client.pack(request["header"]))  # as read off the wire
    frames = stopped_message("it hit its memory limit (1g)", parent, KEY, "hmac-sha256")
    _, rest = client.feed_identities(frames)
    msg = client.deserialize(rest)  # raises on a bad signature
    assert msg["msg_type"] == "error" and msg["parent_header"]["msg_id"] == request["msg_id"]
    assert msg["content"]["ename"] == ENAME
    assert (
        msg["content"]["evalue"] == "The sandboxed kernel was stopped: it hit its memory limit (1g)"
    )
    other = Session(key=b"other" * 8, signature_scheme="hmac-sha256")
    try:
        other.deserialize(other.feed_identities(frames)[1])
    except ValueError:
        pass
    else:
        raise AssertionError("a message signed with another key was accepted")


def test_the_watch_keeps_the_running_request_and_the_message_boundary() -> None:
    kernel = Session(key=KEY)
    request = Session(key=KEY).msg("execute_request", {"code": "1"})
    watch = IopubWatch()
    limiter = ZmtpLimiter(1 << 20, watch.on_message, 8192, 5)
    assert not limiter.between_messages
    limiter.feed(GREETING + READY)
    assert limiter.between_messages and watch.parent is None
    wire = encode_message(kernel_message(kernel, "stream", request["header"]))
    for i in range(len(wire)):  # byte by byte: never "between" inside a message
        limiter.feed(wire[i : i + 1])
        assert limiter.between_messages is (i == len(wire) - 1)
    assert watch.parent is not None and watch.parent["msg_id"] == request["msg_id"]
    # A message parented to something else (e.g. kernel_info) leaves the request as it was.
    info = Session(key=KEY).msg("kernel_info_request", {})
    limiter.feed(encode_message(kernel_message(kernel, "status", info["header"])))
    assert watch.parent["msg_id"] == request["msg_id"]


def test_encoded_frames_read_back_whole() -> None:
    seen: list[list[bytes | None]] = []
    limiter = ZmtpLimiter(1 << 20, seen.append, 1 << 20, 10)
    limiter.feed(GREETING + READY)
    frames = [b"t", DELIM, b"", b"h" * 300, json.dumps({"a": 1}).encode()]
    limiter.feed(encode_message(frames))
    assert seen == [frames] and len(GREETING) == GREETING_SIZE


def test_the_shell_reply_and_idle_end_the_request_for_its_client() -> None:
    """The execute_reply on shell (what nbclient waits for) and the idle on IOPub are
    signed, parented to the running request, and say why."""
    client = Session(key=KEY, signature_scheme="hmac-sha256")
    request = client.msg("execute_request", {"code": "bomb()"})
    parent = json.loads(client.pack(request["header"]))
    reply = client.deserialize(
        client.feed_identities(stopped_reply("why", parent, KEY, "hmac-sha256"))[1]
    )
    assert reply["msg_type"] == "execute_reply"
    assert reply["parent_header"]["msg_id"] == request["msg_id"]
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == ENAME
    assert reply["content"]["evalue"] == "The sandboxed kernel was stopped: why"
    idle = client.deserialize(client.feed_identities(idle_message(parent, KEY, "hmac-sha256"))[1])
    assert idle["content"] == {"execution_state": "idle"}
    assert idle["parent_header"]["msg_id"] == request["msg_id"]


def test_the_shell_watch_knows_its_client_and_what_was_answered() -> None:
    """Only the connection of the client that sent the request, and only while it has no
    reply, gets the host's reply (another client, or a finished cell, gets nothing)."""
    kernel = Session(key=KEY)
    mine, other = Session(key=KEY), Session(key=KEY)
    watch = ShellWatch()
    limiter = ZmtpLimiter(1 << 20, watch.on_message, 8192, 5)
    limiter.feed(GREETING + READY)
    info = mine.msg("kernel_info_request", {})
    limiter.feed(
        encode_message(kernel.serialize(kernel.msg("kernel_info_reply", {}, parent=info["header"])))
    )
    running = json.loads(mine.pack(mine.msg("execute_request", {"code": "1"})["header"]))
    elsewhere = json.loads(other.pack(other.msg("execute_request", {"code": "1"})["header"]))
    assert watch.waits_for(running) and not watch.waits_for(elsewhere)
    limiter.feed(encode_message(kernel.serialize(kernel.msg("execute_reply", {}, parent=running))))
    assert not watch.waits_for(running)
