"""Exposed ports, copy-in plans and export names: the pure rules, and the host's
handling of a hostile agent's export frames."""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from sandbox_kernel.errors import PolicyError
from sandbox_kernel.exchange.files_in import CopyItem, plan_copy_in
from sandbox_kernel.exchange.host import HostExchange
from sandbox_kernel.exchange.policy import (
    PortMapping,
    build_exchange_policy,
    export_name,
    numbered_name,
    parse_port_mapping,
)
from sandbox_kernel.relay.listeners import HostListeners


@pytest.mark.parametrize(
    ("value", "mapping"),
    [
        (8050, PortMapping(8050)),
        ("8050", PortMapping(8050)),
        (" 18050 : 80 ", PortMapping(80, 18050)),
    ],
)
def test_port_mappings(value: object, mapping: PortMapping) -> None:
    assert parse_port_mapping(value) == mapping


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, "not a TCP port"),
        (70000, "not a TCP port"),
        (True, "not a port"),
        ("15003", "ZeroMQ"),
        ("80:8050", "1024-65535"),
        ("1.2.3.4:80:80", "not a port"),
        ("0.0.0.0:8050", "not a port"),
        ("http", "not a port"),
    ],
)
def test_bad_port_mappings(value: object, error: str) -> None:
    with pytest.raises(PolicyError, match=error):
        parse_port_mapping(value)


def test_policy_checks() -> None:
    assert build_exchange_policy().export_bytes == 64 * 2**20
    assert build_exchange_policy(export_limit=0).export_bytes == 0
    for kwargs, error in (
        ({"expose_ports": [8050, "18050:8050"]}, "listed twice"),
        ({"expose_ports": ["20000:8050", "20000:8051"]}, "listed twice"),
        ({"max_runtime_ports": -1}, "max_runtime_ports"),
        ({"max_runtime_ports": 65}, "max_runtime_ports"),
        ({"copy_in": [""]}, "copy_in"),
        ({"copy_in_limit": "lots"}, "copy_in_limit"),
        ({"export_dir": "../up"}, "export_dir"),
        ({"export_dir": ".hidden"}, "export_dir"),
        ({"export_dir": ""}, "export_dir"),
    ):
        with pytest.raises(PolicyError, match=error):
            build_exchange_policy(**kwargs)


@pytest.mark.parametrize(
    ("requested", "name"),
    [
        ("results.csv", "results.csv"),
        ("/home/sandbox/out/plot 1.png", "plot 1.png"),
        ("../../etc/passwd", "passwd"),
        ("a\\b.txt", "b.txt"),
        ("Übersicht (final).xlsx", "Übersicht (final).xlsx"),
    ],
)
def test_export_names(requested: str, name: str) -> None:
    assert export_name(requested) == name


@pytest.mark.parametrize(
    "requested",
    [".bashrc", "..", ".", "", "x/", "-rf", "a\nb", "a\x00b", "name ", "x" * 201, "a:b", 5],
)
def test_refused_export_names(requested: object) -> None:
    with pytest.raises(PolicyError):
        export_name(requested)


def test_numbered_names() -> None:
    assert [numbered_name("r.csv", n) for n in range(3)] == ["r.csv", "r (1).csv", "r (2).csv"]
    assert numbered_name("README", 2) == "README (2)"
    assert numbered_name("archive.tar.gz", 1) == "archive.tar (1).gz"


def test_copy_in_plan(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "x.txt").write_text("xx")
    (tmp_path / "d" / "link").symlink_to("/etc")
    (tmp_path / "d" / "flink").symlink_to("/etc/hostname")
    os.mkfifo(tmp_path / "d" / "fifo")
    (tmp_path / "one.csv").write_text("1,2\n")
    plan = plan_copy_in(("one.csv", str(tmp_path / "d")), str(tmp_path), 100)
    assert plan == [
        CopyItem("one.csv", str(tmp_path / "one.csv"), 4, 0o644),
        CopyItem("d"),
        CopyItem("d/sub"),
        CopyItem("d/sub/x.txt", str(tmp_path / "d" / "sub" / "x.txt"), 2, 0o644),
    ]
    with pytest.raises(PolicyError, match="copy_in_limit"):
        plan_copy_in(("one.csv", "d"), str(tmp_path), 5)
    with pytest.raises(PolicyError, match="No such file"):
        plan_copy_in(("nope",), str(tmp_path), 100)
    with pytest.raises(PolicyError, match=r"named 'one\.csv'"):
        plan_copy_in(("one.csv", str(tmp_path / "d" / ".." / "one.csv")), str(tmp_path), 100)


class _Session:
    """Records replies; stands in for the relay session (pure host logic under test)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.on_request: Any = None

    def send_control(self, msg: dict[str, Any]) -> None:
        self.sent.append(msg)


def _exchange(tmp_path: Path, **kwargs: Any) -> tuple[HostExchange, _Session]:
    ex = HostExchange(
        build_exchange_policy(**kwargs), HostListeners({}), str(tmp_path), logging.getLogger("t")
    )
    session = _Session()
    ex.attach(session)  # type: ignore[arg-type]
    return ex, session


def _data(raw: bytes) -> dict[str, Any]:
    return {"op": "export_data", "data": base64.b64encode(raw).decode()}


def test_hostile_export_frames_leave_nothing(tmp_path: Path) -> None:
    ex, session = _exchange(tmp_path, export_limit="1k")
    # More bytes than announced: the file is dropped, the end is refused.
    ex.handle({"op": "export_begin", "req": 1, "name": "a.txt", "size": 3})
    ex.handle(_data(b"abcd"))
    ex.handle({"op": "export_end", "req": 2})
    # Fewer bytes than announced.
    ex.handle({"op": "export_begin", "req": 3, "name": "b.txt", "size": 3})
    ex.handle(_data(b"ab"))
    ex.handle({"op": "export_end", "req": 4})
    # Not base64.
    ex.handle({"op": "export_begin", "req": 5, "name": "c.txt", "size": 3})
    ex.handle({"op": "export_data", "data": "!!!"})
    ex.handle({"op": "export_end", "req": 6})
    # A lying size over the budget; then data and end without a begin.
    ex.handle({"op": "export_begin", "req": 7, "name": "d.txt", "size": 5000})
    ex.handle(_data(b"x"))
    ex.handle({"op": "export_end", "req": 8})
    oks = {m["req"]: m["ok"] for m in session.sent}
    assert oks == {1: True, 2: False, 3: True, 4: False, 5: True, 6: False, 7: False, 8: False}
    assert os.listdir(tmp_path / "sandbox-exports") == []
    # A proper one still works, and a half-received file vanishes when the sandbox goes.
    ex.handle({"op": "export_begin", "req": 9, "name": "ok.txt", "size": 2})
    ex.handle(_data(b"ok"))
    ex.handle({"op": "export_end", "req": 10})
    assert session.sent[-1] == {
        "op": "reply",
        "req": 10,
        "ok": True,
        "path": "sandbox-exports/ok.txt",
    }
    ex.handle({"op": "export_begin", "req": 11, "name": "half.txt", "size": 10})
    ex.handle(_data(b"half"))
    ex.detach()
    assert os.listdir(tmp_path / "sandbox-exports") == ["ok.txt"]
