"""What every gVisor backend (``docker``, ``runsc``) insists on (pure data), and where
the current gVisor ``SANDBOX_KERNEL_RUNSC=current setup-host`` builds is
(``host/runsc_current.env``, read once at import): the runtime ``runsc-current``."""

from __future__ import annotations

import string
from importlib import resources

# What the agent keeps as root of a gVisor sandbox, to start the kernel under the
# policy's uid and signal it (inside/agent.py); every other capability is dropped, and
# the kernel holds none.
AGENT_CAPABILITIES = ("SETUID", "SETGID", "KILL", "SETPCAP")

# runsc flags the sandbox needs: no host network namespace, and enforcement of the
# container's seccomp profile inside gVisor (without it, runsc ignores the profile).
REQUIRED_RUNSC_ARGS = ("--network=none", "--oci-seccomp")


def current_build() -> dict[str, str]:
    """``host/runsc_current.env`` (RUNSC_CURRENT_PIN, _RUNTIME, _DIR), as bash reads it."""
    text = resources.files("sandbox_kernel.host").joinpath("runsc_current.env").read_text()
    values: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = string.Template(value.strip()).substitute(values)
    return values


CURRENT = current_build()
CURRENT_RUNTIME = CURRENT["RUNSC_CURRENT_RUNTIME"]
# Where setup-host puts the current runsc, and containerd's shim of the same build.
CURRENT_RUNSC = f"{CURRENT['RUNSC_CURRENT_DIR']}/runsc"
CURRENT_SETUP = "sudo SANDBOX_KERNEL_RUNSC=current sandbox-kernel setup-host"
CURRENT_SHIM = f"{CURRENT['RUNSC_CURRENT_DIR']}/containerd-shim-runsc-v1"
