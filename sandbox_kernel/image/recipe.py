"""What goes into the default kernel image: pure data, no I/O.

``build.py`` turns this recipe into a Docker image without any registry; the
recipe's hash is stored as an image label so a rebuild can be skipped when
nothing changed.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field

DEFAULT_IMAGE = "sandbox-kernel/python:latest"
RECIPE_LABEL = "org.sandbox-kernel.recipe"
SANDBOX_UID = 1000
SANDBOX_HOME = "/home/sandbox"

# Debian packages: only the interpreter; the Python stack comes as wheels.
DEBIAN_PACKAGES = ("python3",)
PYTHON_PACKAGES = (
    "ipykernel>=6.29,<8",
    # ipykernel answers a usage_request (JupyterLab's kernel usage panel) with the kernel's
    # memory and CPU only when psutil is there; ipykernel 7 no longer requires it.
    "psutil>=5.9,<8",
    "ipywidgets>=8,<9",
    "numpy>=1.26,<3",
    "matplotlib>=3.8,<4",
)

# What `pip`, `python3 -m pip` and `%pip` say inside a sandbox, which has no network: the
# cell fails (an autograder notices) and the reader learns who adds packages, and how.
NO_PIP_MESSAGE = (
    "pip cannot install packages in this sandboxed kernel: it has no network, by design. "
    "Whoever runs this Jupyter adds packages to the kernel image: "
    "`sandbox-kernel image build --extra-package PACKAGE` (see docs/packages.md)."
)

_MACHINE_TO_WHEEL_ARCH = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "aarch64": "aarch64",
    "arm64": "aarch64",
}
_MACHINE_TO_DEBIAN_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
}


@dataclass(frozen=True)
class ImageRecipe:
    """Everything that decides the content of the default image."""

    suite: str = "bookworm"
    python_version: str = "3.11"
    debian_packages: tuple[str, ...] = DEBIAN_PACKAGES
    python_packages: tuple[str, ...] = PYTHON_PACKAGES
    extra_python_packages: tuple[str, ...] = field(default_factory=tuple)
    # Bump when build steps change in a way that alters the image.
    revision: int = 7

    @property
    def all_python_packages(self) -> tuple[str, ...]:
        return self.python_packages + self.extra_python_packages

    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def debian_arch(machine: str) -> str:
    try:
        return _MACHINE_TO_DEBIAN_ARCH[machine]
    except KeyError:
        raise ValueError(f"unsupported machine architecture {machine!r}") from None


def wheel_platforms(machine: str) -> list[str]:
    """The manylinux tags a bookworm (glibc 2.36) rootfs can run, newest first."""
    try:
        arch = _MACHINE_TO_WHEEL_ARCH[machine]
    except KeyError:
        raise ValueError(f"unsupported machine architecture {machine!r}") from None
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(36, 16, -1)]
    tags.append(f"manylinux2014_{arch}")
    if arch == "x86_64":
        tags += ["manylinux2010_x86_64", "manylinux1_x86_64"]
    return tags


_MIRROR_RE = re.compile(r"^(?:deb\s+(?:\[[^\]]*\]\s+)?)(\S+://\S+)\s+(\S+)")


def apt_mirror_from_sources(sources: list[str]) -> str | None:
    """Find the Debian archive this machine's apt already uses.

    ``sources`` are the texts of apt's source files (one-line or deb822 style).
    Security and backports-only archives are skipped: debootstrap needs the
    main archive.
    """
    for text in sources:
        for line in text.splitlines():
            line = line.strip()
            uri = None
            if line.startswith("URIs:"):
                parts = line.split()
                uri = parts[1] if len(parts) > 1 else None
            else:
                m = _MIRROR_RE.match(line)
                if m:
                    uri = m.group(1)
            if uri and "security" not in uri and "/debian" in uri:
                return uri.rstrip("/")
    return None
