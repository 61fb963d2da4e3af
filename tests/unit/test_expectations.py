"""The gap table (security/expectations.py): it names real attacks, never a way out of the
sandbox, and docs/security.md shows it exactly as the code defines it."""

from __future__ import annotations

import re

from sandbox_kernel.security import ATTACKS
from sandbox_kernel.security.expectations import (
    GAP_DETAILS,
    GAPS,
    TABLE_END,
    TABLE_START,
    markdown_table,
)
from tests.helpers import REPO


def test_security_doc_matches_the_gap_table() -> None:
    doc = (REPO / "docs" / "security.md").read_text()
    start, end = doc.index(TABLE_START), doc.index(TABLE_END) + len(TABLE_END)
    assert doc[start:end] + "\n" == markdown_table(), (
        "docs/security.md is out of date: paste the output of "
        "`python -c 'from sandbox_kernel.security.expectations import markdown_table as t; "
        "print(t())'`"
    )


def test_every_backend_has_an_entry() -> None:
    from sandbox_kernel.backends.registry import BACKENDS

    assert set(GAPS) == set(BACKENDS)


def test_gvisor_gaps_follow_the_runsc_release() -> None:
    """The three gaps the current gVisor closes hold on 20240729 and not on the current
    build; gVisor's gaps need a release, other backends' do not."""
    import pytest

    from sandbox_kernel.security.expectations import CLOSED_IN, expected_blocked, gaps_of

    closed = {"fs-noexec-loader", "net-userns-address", "info-agent-proc"}
    assert set(CLOSED_IN) == closed
    for backend in ("docker", "runsc"):
        assert set(gaps_of(backend, 20240729)) == closed | {"fs-noexec-memory"}
        assert set(gaps_of(backend, 20260905)) == {"fs-noexec-memory"}
        assert expected_blocked(backend, "info-agent-proc", 20260905)
        assert not expected_blocked(backend, "info-agent-proc", 20251214)
        with pytest.raises(ValueError, match="release"):
            gaps_of(backend)
    assert gaps_of("bwrap") == GAPS["bwrap"]
    assert "runsc 20260905 and later: blocked" in markdown_table()


def test_gap_table_names_real_attacks() -> None:
    ids = {a.id for a in ATTACKS}
    for backend, gaps in GAPS.items():
        assert set(gaps) <= ids, f"{backend}: unknown attack ids {set(gaps) - ids}"
        assert all(why.strip() for why in gaps.values()), f"{backend}: every gap says why"
    # What must hold everywhere, whatever else a backend lets through: nothing outside the
    # sandbox is reached (network) or read (host files).
    never = {
        "net-userns-egress",
        "net-lan-host",
        "net-host-loopback",
        "net-host-addresses",
        "net-dns-query",
        "net-icmp-echo",
        "fs-host-markers",
        "fs-proc-root",
        "fs-proc-links",
    }
    for backend, gaps in GAPS.items():
        assert not never & set(gaps), f"{backend} may not document {never & set(gaps)} as gaps"
    for backend, details in GAP_DETAILS.items():
        assert set(details) <= set(GAPS[backend]), f"{backend}: details of undocumented gaps"
        for pattern in details.values():
            re.compile(pattern)
