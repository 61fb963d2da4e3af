"""What may cross the sandbox boundary on purpose: exposed ports and files (pure).

Three explicit channels, each off unless configured or asked for, each capped:

* **exposed ports**: a server the kernel runs on the sandbox's own loopback is
  reachable from the host's 127.0.0.1 (never another interface) through the relay,
  at ports the operator lists (``expose_ports``) or the kernel asks for at run time
  (at most ``max_runtime_ports``). Connections only ever go host -> sandbox.
* **files in**: host files and folders listed by the operator (``copy_in``) are
  copied into the sandbox's home at each start, up to ``copy_in_limit`` bytes.
  Never a mount: the sandbox gets bytes, not a view of the host.
* **files out**: the kernel may hand a file to the host (``sandboxed.export``); it is
  written as a *new* file in a sub-folder of the notebook's folder (``export_dir``),
  under a sanitised name, up to ``export_limit`` bytes per kernel.

No I/O here; the provisioner builds one :class:`ExchangePolicy` from its traits.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import PolicyError
from ..inside.protocol import KERNEL_INSIDE_PORTS
from ..settings import BY_NAME, bounds, check, group

MAX_EXPOSED_PORTS = int(bounds("max_runtime_ports")[1])
MAX_EXPORT_FILES = 256
MAX_EXPORT_FILES_PER_KERNEL = 100
# The settings (settings.py) this module turns into an exchange policy.
EXCHANGE_SETTINGS = group("exchange")
_NAME_CHARS = re.compile(r"^[\w .,()+=@~#%&!\[\]{}-]+$")
_MAX_NAME = 200


@dataclass(frozen=True)
class PortMapping:
    """Host 127.0.0.1:``host`` -> sandbox 127.0.0.1:``inside``; ``host`` 0 = any free port."""

    inside: int
    host: int = 0


@dataclass(frozen=True)
class ExchangePolicy:
    """Built only by :func:`build_exchange_policy` (defaults: the settings table's)."""

    expose: tuple[PortMapping, ...]
    max_runtime_ports: int
    copy_in: tuple[str, ...]
    copy_in_bytes: int
    copy_in_notebook_folder: bool
    export_bytes: int  # 0: the kernel may not export files
    export_dir: str
    export_files: int = MAX_EXPORT_FILES_PER_KERNEL


def check_port(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise PolicyError(f"{what}: {value!r} is not a TCP port (1-65535)")
    if value in KERNEL_INSIDE_PORTS:
        raise PolicyError(
            f"{what}: port {value} is one of the kernel's own ZeroMQ ports inside the sandbox "
            f"({min(KERNEL_INSIDE_PORTS)}-{max(KERNEL_INSIDE_PORTS)}); pick another"
        )
    return value


def parse_port_mapping(value: object) -> PortMapping:
    """``8050`` or ``"8050"`` (any free host port) or ``"18050:8050"`` (host:inside,
    as in ``docker run -p``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return PortMapping(check_port(value, "expose_ports"))
    if not isinstance(value, str) or not re.fullmatch(r"\s*\d{1,5}(\s*:\s*\d{1,5})?\s*", value):
        raise PolicyError(
            f"expose_ports: {value!r} is not a port; use INSIDE (e.g. 8050) or "
            "HOST:INSIDE (e.g. '18050:8050'); the host side is always 127.0.0.1"
        )
    parts = [int(p) for p in value.split(":")]
    inside = check_port(parts[-1], "expose_ports")
    host = 0
    if len(parts) == 2:
        host = parts[0]
        if not 1024 <= host <= 65535:
            raise PolicyError(f"expose_ports: host port {host} must be in 1024-65535")
    return PortMapping(inside, host)


def build_exchange_policy(**given: Any) -> ExchangePolicy:
    """The exchange policy from its settings (those not given take the settings table's
    defaults); raise :class:`PolicyError` naming the setting and the fix."""
    unknown = sorted(set(given) - set(EXCHANGE_SETTINGS))
    if unknown:
        raise TypeError(f"not exchange settings: {', '.join(unknown)}")
    v = {n: given[n] if n in given else BY_NAME[n].default for n in EXCHANGE_SETTINGS}
    max_runtime_ports, copy_in = v["max_runtime_ports"], v["copy_in"]
    copy_in_limit, export_limit, export_dir = v["copy_in_limit"], v["export_limit"], v["export_dir"]
    expose = tuple(parse_port_mapping(port) for port in v["expose_ports"])
    if len({m.inside for m in expose}) != len(expose):
        raise PolicyError("expose_ports: a sandbox port is listed twice")
    hosts = [m.host for m in expose if m.host]
    if len(set(hosts)) != len(hosts):
        raise PolicyError("expose_ports: a host port is listed twice")
    if len(expose) > MAX_EXPOSED_PORTS:
        raise PolicyError(f"expose_ports: at most {MAX_EXPOSED_PORTS} ports")
    check("max_runtime_ports", max_runtime_ports)
    entries = tuple(copy_in)
    notebook_folder = bool(check("copy_in_notebook_folder", v["copy_in_notebook_folder"]))
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip() or "\0" in entry:
            raise PolicyError(f"copy_in: {entry!r} is not a path")
    copy_bytes = check("copy_in_limit", copy_in_limit)
    export_bytes = check("export_limit", export_limit)
    export_folder = export_dir if isinstance(export_dir, str) else ""
    if not _is_plain_name(export_folder):
        raise PolicyError(
            f"export_dir: {export_dir!r} must be one plain folder name (no '/', no leading '.'), "
            "created inside the notebook's folder"
        )
    return ExchangePolicy(
        expose=expose,
        max_runtime_ports=max_runtime_ports,
        copy_in=entries,
        copy_in_bytes=copy_bytes,
        copy_in_notebook_folder=notebook_folder,
        export_bytes=export_bytes,
        export_dir=export_folder,
    )


def _is_plain_name(name: str) -> bool:
    return (
        bool(name)
        and len(name) <= _MAX_NAME
        and not name.startswith((".", "-", " "))
        and not name.endswith((" ", "."))
        and _NAME_CHARS.fullmatch(name) is not None
    )


def export_name(requested: object) -> str:
    """The host file name for a file the kernel exports: its base name, if harmless.

    Refused: hidden names (``.bashrc``), path tricks, control characters, and anything
    outside letters, digits and common punctuation, so an exported file can never
    land anywhere but the export folder or pass for a config file there.
    """
    if not isinstance(requested, str):
        raise PolicyError("export: the file name must be a string")
    name = unicodedata.normalize("NFC", requested.replace("\\", "/").rsplit("/", 1)[-1])
    if not _is_plain_name(name):
        # The name is the sandbox's: quoted short, so a refusal never grows with it.
        shown = repr(requested[:60]) + ("..." if len(requested) > 60 else "")
        raise PolicyError(
            f"export: {shown} is not an allowed file name (letters, digits, spaces and "
            "common punctuation; no leading '.' or '-', at most 200 characters)"
        )
    return name


def numbered_name(name: str, n: int) -> str:
    """``report.csv`` -> ``report (n).csv``: the n-th alternative when the name is taken."""
    if n == 0:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return f"{name} ({n})"
    return f"{stem} ({n}).{ext}"


def inside_dest(parts: Iterable[str]) -> str:
    """A relative POSIX path inside the sandbox's home for a copied-in file; refuses any
    component that could climb out (``..``) or is empty."""
    clean = []
    for part in parts:
        if part in ("", ".", "..") or "/" in part or "\0" in part:
            raise PolicyError(f"copy_in: cannot copy a file named {part!r}")
        clean.append(part)
    if not clean:
        raise PolicyError("copy_in: empty destination")
    return "/".join(clean)
