"""Deliver the agent into the sandbox over its stdin: no volume, no image rebuild.

The container's command is a tiny stage-1 program (``bootstrap_command``) that
reads a 10-digit length and then that many bytes of stage-2 code from fd 0,
unbuffered (buffering would swallow the frames that follow). Stage 2 installs
the agent's modules (``sandbox_kernel/inside/``) from their source text and runs
``inside.agent.main``. Any image
with ``python3`` (>= 3.8) works unchanged.
"""

from __future__ import annotations

import functools
from importlib import resources

# Shipped in this order: each module imports only the ones before it.
AGENT_MODULES = (
    "sandbox_kernel.inside.protocol",
    "sandbox_kernel.inside.ops",
    "sandbox_kernel.inside.mux",
    "sandbox_kernel.inside.exchange",
    "sandbox_kernel.inside.agent",
)
# Written by the agent onto the kernel's PYTHONPATH (see inside/exchange.py).
KERNEL_HELPERS = ("sandbox_kernel.inside.sandboxed",)

_STAGE1 = """import os
def r(n):
    b = b''
    while len(b) < n:
        c = os.read(0, n - len(b))
        if not c:
            raise SystemExit(3)
        b += c
    return b
exec(compile(r(int(r(10))), '<sandbox-agent>', 'exec'))
"""

_STAGE2 = """import sys, types
def _install(name, source):
    parts = name.split('.')
    for i in range(1, len(parts)):
        pkg = '.'.join(parts[:i])
        if pkg not in sys.modules:
            mod = types.ModuleType(pkg)
            mod.__path__ = []
            sys.modules[pkg] = mod
            if i > 1:
                setattr(sys.modules['.'.join(parts[:i - 1])], parts[i - 1], mod)
    mod = types.ModuleType(name)
    mod.__file__ = '<sandbox-agent:%s>' % name
    mod.__package__ = name.rpartition('.')[0]
    sys.modules[name] = mod
    exec(compile(source, mod.__file__, 'exec'), mod.__dict__)
    setattr(sys.modules[mod.__package__], parts[-1], mod)
for _name, _source in MODULES:
    _install(_name, _source)
sys.modules['sandbox_kernel.inside.agent'].main(**MAIN_KWARGS)
"""


def bootstrap_command(python: str = "python3") -> list[str]:
    """The container command: isolated mode, no site-packages, read stage 2 from stdin."""
    return [python, "-I", "-S", "-c", _STAGE1]


def _module_source(name: str) -> str:
    package, _, module = name.rpartition(".")
    return resources.files(package).joinpath(module + ".py").read_text(encoding="utf-8")


@functools.lru_cache(maxsize=8)
def agent_payload(
    escaped_stdin: bool = True,
    kernel_user: str | None = None,
    kernel_rlimits: tuple[tuple[str, int], ...] = (),
) -> bytes:
    """Stage 2 with the agent's sources, prefixed by its 10-digit length.

    ``escaped_stdin``: frames after this payload carry the stdin escaping of
    ``protocol.escape_stdin`` (Docker's attach); the payload itself has no ctrl-p
    byte, since ``repr`` escapes control characters. ``kernel_user``: ``uid:gid`` the
    agent runs the kernel as when it starts as root (backends that keep the two apart).
    ``kernel_rlimits``: (name, value) of the resource limits the agent sets on the kernel,
    where the sandbox sets none itself (``Preflight.agent_rlimits``).
    """
    modules = [(name, _module_source(name)) for name in AGENT_MODULES]
    helpers = {name.rpartition(".")[2] + ".py": _module_source(name) for name in KERNEL_HELPERS}
    main_kwargs = {
        "escaped_stdin": escaped_stdin,
        "helpers": helpers,
        "kernel_user": kernel_user,
        "kernel_rlimits": dict(kernel_rlimits) or None,
    }
    code = ("MODULES = %r\nMAIN_KWARGS = %r\n" % (modules, main_kwargs) + _STAGE2).encode()
    assert b"\x10" not in code
    return b"%010d" % len(code) + code
