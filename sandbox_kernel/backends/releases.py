"""Which gVisor release a kernel runs on: the date in ``runsc --version``.

The release decides which of gVisor's documented gaps hold
(``security.expectations.gaps_of``); ``doctor`` and the tests ask :func:`runtime_release`
for the binary a kernel of a backend and runtime really runs, never a name's assumption.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from ..errors import SandboxError
from .gvisor import CURRENT_SETUP
from .runsc_tool import find_runsc

# A release date in `runsc --version`: Debian's "0.0~20240729.0", upstream's
# "release-20240729.0", setup-host's current build "v0.0.0-20260905035102-160fafc42237".
_RELEASE = re.compile(r"(?<![0-9])(20[0-9]{6})")


def parse_release(version: str) -> int:
    """The release date (YYYYMMDD) in ``runsc --version``'s output (pure); SandboxError if
    it names none (a `go install` build without setup-host's stamp says VERSION_MISSING)."""
    first = version.strip().splitlines()[0] if version.strip() else ""
    found = _RELEASE.search(first)
    if not found:
        raise SandboxError(
            f"cannot tell the gVisor release from `runsc --version` ({first or 'no output'!r}): "
            f"install a released runsc, or build the current one with `{CURRENT_SETUP}`"
        )
    return int(found.group(1))


def release_of(runsc: str) -> int:
    """The release of the runsc binary ``runsc`` (blocking: runs ``runsc --version``)."""
    try:
        out = subprocess.run(
            [runsc, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxError(f"`{runsc} --version` failed ({exc})") from None
    return parse_release(out)


def runtime_release(backend: str, runtime: str) -> int:
    """The gVisor release a ``backend`` kernel of ``runtime`` runs on: the binary dockerd
    registered under that name (``docker``), or the runsc backend's (blocking). Called by
    ``doctor`` and the tests, which hold a kernel to that release's gap table."""
    if backend == "runsc":
        return release_of(find_runsc(runtime))
    import docker

    runtimes = docker.from_env().info().get("Runtimes") or {}
    path = (runtimes.get(runtime) or {}).get("path")
    if not path:
        raise SandboxError(f"dockerd has no runtime {runtime!r}: run `sandbox-kernel setup-host`")
    return release_of(shutil.which(path) or path)
