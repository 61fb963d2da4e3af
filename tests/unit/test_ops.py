"""The CONTROL message table (relay/ops.py): what each side accepts, and the docs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sandbox_kernel.inside import ops
from sandbox_kernel.inside.protocol import ProtocolError

REPO = Path(__file__).resolve().parents[2]

HELLO = {
    "op": "hello",
    "version": 1,
    "python": "3.11.2",
    "release": "4.4.0",
    "uid": 0,
    "kernel_uid": 1000,
    "pid": 1,
    "undumpable": True,
    "helpers": True,
}


RESUMED = {
    **HELLO,
    "op": "resumed",
    "prewarmed": True,
    "kernel_pid": 7,
    "kernel_process_uid": 1000,
}


def test_a_valid_message_passes_unchanged() -> None:
    assert ops.check(dict(HELLO), ops.AGENT_OPS) == HELLO
    assert ops.check(dict(RESUMED), ops.AGENT_OPS) == RESUMED
    assert ops.check({"op": "resume"}, ops.HOST_OPS) == {"op": "resume"}
    reply = {"op": "reply", "req": 3, "ok": False, "error": "no"}
    assert ops.check(reply, ops.HOST_OPS) == reply


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"op": "start"}, "unexpected control op 'start'"),  # a host op, from the agent
        ({"op": "x" * 500}, "unexpected control op"),
        ({**HELLO, "extra": 1}, "unknown field 'extra'"),
        ({**HELLO, "uid": "0"}, "field uid has the wrong type"),
        ({**HELLO, "uid": True}, "field uid has the wrong type"),  # a bool is not a number
        ({**HELLO, "helpers": 1}, "field helpers has the wrong type"),
        ({k: v for k, v in HELLO.items() if k != "release"}, "missing release"),
        ({"op": "expose", "req": 1.5, "port": 80}, "field req has the wrong type"),
        ({"op": "exited", "status": None, "why": ""}, "field status has the wrong type"),
        ({**RESUMED, "prewarmed": 1}, "field prewarmed has the wrong type"),
        ({k: v for k, v in RESUMED.items() if k != "kernel_pid"}, "missing kernel_pid"),
        ({k: v for k, v in RESUMED.items() if k != "uid"}, "missing uid"),
        ({"op": "resume"}, "unexpected control op 'resume'"),  # the host's, from the agent
    ],
)
def test_the_host_refuses_anything_else_from_the_agent(message: dict[str, Any], error: str) -> None:
    with pytest.raises(ProtocolError, match=error) as info:
        ops.check(message, ops.AGENT_OPS)
    assert len(str(info.value)) < 200  # never echoes much of what the peer sent


def test_both_sides_know_the_same_constants() -> None:
    for table in (ops.AGENT_OPS, ops.HOST_OPS):
        for op in table:
            assert getattr(ops, op.upper()) == op


def test_docs_protocol_tables_are_generated_from_the_table() -> None:
    doc = (REPO / "docs" / "protocol.md").read_text()
    assert ops.with_tables(doc) == doc, (
        "docs/protocol.md is out of date: rewrite it with "
        "`python -c 'from pathlib import Path; from sandbox_kernel.inside import ops; "
        'p = Path("docs/protocol.md"); p.write_text(ops.with_tables(p.read_text()))\'`'
    )
    for op in [*ops.AGENT_OPS, *ops.HOST_OPS]:
        assert f"| `{op}` |" in doc
