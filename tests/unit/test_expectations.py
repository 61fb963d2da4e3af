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
