"""docs/security.md shows the backend gap table exactly as the code defines it."""

from __future__ import annotations

from sandbox_kernel.security.expectations import GAPS, TABLE_END, TABLE_START, markdown_table
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
