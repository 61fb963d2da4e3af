"""Headless Chromium for the tests that use a real browser: Debian's ``chromium``
(installed by quickstart.sh), driven by Playwright (the test extra; no browser download)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = "/usr/bin/chromium"
WAIT_MS = 120_000  # generous: other suites share the machine's two cores


def require_browser() -> Any:
    """Playwright (pip, test extra) and Debian's chromium (apt, quickstart): fail, don't skip."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: run `.venv/bin/pip install -e '.[test]'`")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: run `apt-get install chromium` (scripts/quickstart.sh)"
        )
    return sync_playwright


@contextmanager
def chromium_page(
    failure: Path, height: int = 900, log: Callable[[], str] | None = None
) -> Iterator[Page]:
    """A page (1280 wide, ``height`` high) in headless Chromium; if the block fails, a
    screenshot of it is saved to ``failure`` (and ``log()``, e.g. the server's log, beside
    it as ``.log``)."""
    failure.parent.mkdir(exist_ok=True)
    failure.unlink(missing_ok=True)
    failure.with_suffix(".log").unlink(missing_ok=True)
    with require_browser()() as pw:
        # As root (CI) Chromium's own sandbox cannot start; this is the test browser.
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": height})
            page.set_default_timeout(WAIT_MS)
            try:
                yield page
            except Exception:
                page.screenshot(path=str(failure))
                if log is not None:
                    failure.with_suffix(".log").write_text(log())
                raise
        finally:
            browser.close()


def wait_for(cond: Callable[[], bool], what: str, timeout: float = WAIT_MS / 1000) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)
