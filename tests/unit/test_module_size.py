"""Every module of the package is small enough to have one job (issue 21): none over
700 lines. A module that grows past it is split along its jobs, as runsc.py was."""

from __future__ import annotations

from pathlib import Path

import sandbox_kernel

ROOT = Path(sandbox_kernel.__file__).parent
MAX_LINES = 700


def test_no_module_is_over_700_lines() -> None:
    sizes = {
        p.relative_to(ROOT.parent): len(p.read_text().splitlines()) for p in ROOT.rglob("*.py")
    }
    assert len(sizes) > 50, "the package's modules were found"
    assert {str(p): n for p, n in sizes.items() if n > MAX_LINES} == {}
