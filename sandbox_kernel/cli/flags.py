"""``sandbox-kernel install``'s settings flags, one per setting of ``settings.py``.

Who calls what: ``main.py`` adds them to the ``install`` parser with :func:`add_flags`
and collects what was given with :func:`from_flags`; ``configure`` validates the result
(through ``kernelspec.py``) before anything is written.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..backends.registry import BACKENDS
from ..errors import PolicyError
from ..settings import SETTINGS, range_text


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One ``install`` flag per setting; none has a default of its own (unset: the
    setting's default applies and nothing is written into the kernelspec)."""
    group = parser.add_argument_group(
        "settings (docs: `sandbox-kernel install --help`; validated before anything is written)"
    )
    for s in SETTINGS:
        where = f" [{', '.join(s.backends)} only]" if s.backends else ""
        shown = s.default if s.default not in ([], {}, "", None) else None
        default = f" (default: {shown})" if shown is not None else ""
        bounds = f" ({range_text(s.name)})" if s.bounds else ""
        text = (s.help + where + default + bounds).replace("%", "%%")  # argparse formats %
        kw: dict[str, Any] = {"dest": s.name, "help": text, "default": None}
        if s.kind == "bool":
            # On by default: --no-NAME turns it off (and --NAME says so explicitly).
            kw["action"] = argparse.BooleanOptionalAction if s.default else "store_true"
        elif s.kind in ("list", "ports"):
            kw.update(
                action="append", metavar=s.metavar or "VALUE", help=kw["help"] + "; repeatable"
            )
        elif s.kind == "dict":
            kw.update(action="append", metavar="NAME=VALUE", help=kw["help"] + "; repeatable")
        elif s.kind == "enum":
            kw["choices"] = s.choices
        elif s.kind == "backend":
            kw["choices"] = list(BACKENDS)
        elif s.kind in ("int", "int?"):
            kw["type"] = int
        elif s.kind == "float":
            kw["type"] = float
        group.add_argument(s.option, **kw)


def from_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line (only those), in kernelspec form."""
    given: dict[str, Any] = {}
    for s in SETTINGS:
        value = getattr(args, s.name, None)
        if value is None:
            continue
        if s.kind == "dict":
            value = dict(_pair(item) for item in value)
        given[s.name] = value
    return given


def _pair(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise PolicyError(f"env: {item!r} is not NAME=VALUE")
    return name, value
