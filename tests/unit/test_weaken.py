"""scripts/weaken.py's pure parts: every weakening still applies to this checkout (its text
is found exactly once), and the rotating shares CI runs cover every weakening."""

from __future__ import annotations

import datetime
import importlib.util
import sys
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import REPO


def _weaken() -> ModuleType:
    spec = importlib.util.spec_from_file_location("weaken", REPO / "scripts" / "weaken.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["weaken"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


weaken = _weaken()


@pytest.mark.parametrize("w", weaken.WEAKENINGS, ids=[w.name for w in weaken.WEAKENINGS])
def test_each_weakening_applies_to_this_checkout(w: Any) -> None:
    assert weaken.not_applicable(w) == "", f"{w.name}: re-anchor it in scripts/weaken.py"


def test_weakening_names_are_unique() -> None:
    names = [w.name for w in weaken.WEAKENINGS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_the_shares_cover_every_weakening_once(n: int) -> None:
    shares = [weaken.share_of(weaken.WEAKENINGS, k, n) for k in range(1, n + 1)]
    flat = [w.name for share in shares for w in share]
    assert sorted(flat) == sorted(w.name for w in weaken.WEAKENINGS)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_the_dated_share_runs_through_every_share_in_n_days() -> None:
    day = datetime.date(2026, 12, 7)
    picked = {weaken.parse_share("3", day + datetime.timedelta(days=i)) for i in range(3)}
    assert picked == {(1, 3), (2, 3), (3, 3)}
    assert weaken.parse_share("2/3", day) == (2, 3)


@pytest.mark.parametrize("text", ["0", "4/3", "0/2", "a/2", "", "1/x"])
def test_a_bad_share_is_refused_naming_the_form(text: str) -> None:
    with pytest.raises(ValueError, match="give N or K/N"):
        weaken.parse_share(text, datetime.date(2026, 12, 7))
