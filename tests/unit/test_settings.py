"""The settings table (settings.py) is the one declaration of every setting: the
provisioner's traits, the install flags and the validation all come from it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

from sandbox_kernel import settings
from sandbox_kernel.backends.registry import BACKENDS, backend_settings, make_backend
from sandbox_kernel.cli.flags import from_flags
from sandbox_kernel.cli.main import build_parser
from sandbox_kernel.configured import configure
from sandbox_kernel.errors import PolicyError
from sandbox_kernel.provisioner import SandboxProvisioner
from tests.helpers import REPO


def test_every_setting_is_a_trait_and_every_trait_a_setting() -> None:
    traits = SandboxProvisioner.class_own_traits(config=True)
    assert set(traits) == {s.name for s in settings.SETTINGS}
    for s in settings.SETTINGS:
        trait = traits[s.name]
        assert trait.default() == s.default, s.name
        assert s.help[1:] in trait.help, s.name


def test_install_help_lists_every_setting() -> None:
    install = build_parser()._subparsers._group_actions[0].choices["install"]  # type: ignore[union-attr,index]
    text = install.format_help()
    for s in settings.SETTINGS:
        assert s.option in text, f"install --help lacks {s.option} ({s.name})"


def test_install_flags_become_exactly_the_given_settings() -> None:
    args = build_parser().parse_args(
        ["install", "--memory", "1g", "--env", "A=1", "--env", "B=x=y", "--expose", "8050",
         "--backend", "bwrap", "--accept-unenforced", "tmp_size"]
    )  # fmt: skip
    given = from_flags(args)
    assert given == {
        "memory_limit": "1g",
        "env": {"A": "1", "B": "x=y"},
        "expose_ports": ["8050"],
        "backend": "bwrap",
        "accept_unenforced": ["tmp_size"],
    }
    assert configure(given).policy.memory_bytes == 2**30


def test_a_setting_on_by_default_has_a_no_flag() -> None:
    """pool_snapshots is on by default: --no-pool-snapshots turns it off."""
    args = build_parser().parse_args(
        ["install", "--backend", "runsc", "--no-pool-snapshots", "--platform", "ptrace"]
    )
    given = from_flags(args)
    assert given == {"backend": "runsc", "pool_snapshots": False, "platform": "ptrace"}
    assert configure(given).sandbox_backend.describe()["pool_snapshots"] is False
    unset = from_flags(build_parser().parse_args(["install", "--backend", "runsc"]))
    assert unset == {"backend": "runsc"}, "not given: not written into the kernelspec"


def test_defaults_flow_from_the_table_only() -> None:
    conf = configure({})
    assert conf.policy.memory_bytes == 2 * 2**30 and conf.policy.env_allow == ("TZ",)
    assert conf.exchange.max_runtime_ports == 4 and conf.pool_size == 1
    assert conf.backend == "docker" and conf.max_message == 64 * 2**20


def test_a_changed_default_changes_everywhere() -> None:
    """Change one default in its declaration (in a fresh interpreter, before anything
    reads the table): the trait, the policy, configure() and install --help all follow."""
    code = """
import dataclasses, json
from sandbox_kernel import settings
old = settings.BY_NAME["memory_limit"]
new = dataclasses.replace(old, default="3g")
settings.SETTINGS = tuple(new if s is old else s for s in settings.SETTINGS)
settings.BY_NAME["memory_limit"] = new
from sandbox_kernel.provisioner import SandboxProvisioner
from sandbox_kernel.policy import build_policy
from sandbox_kernel.configured import configure
from sandbox_kernel.cli.flags import from_flags
from sandbox_kernel.cli.main import build_parser
install = build_parser()._subparsers._group_actions[0].choices["install"]
print(json.dumps({
    "trait": SandboxProvisioner.class_own_traits()["memory_limit"].default(),
    "policy": build_policy().memory_bytes,
    "configure": configure({}).policy.memory_bytes,
    "help": "(default: 3g)" in " ".join(install.format_help().split()),
}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == {
        "trait": "3g", "policy": 3 * 2**30, "configure": 3 * 2**30, "help": True,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"memory": "1g"}, "unknown sandbox-provisioner setting"),
        ({"backend": "lxc"}, "backend: 'lxc' is not one of"),
        ({"backend": "docker", "rootfs": "/srv/rootfs"}, "rootfs: applies to"),
        ({"backend": "bwrap", "runtime": "runc"}, "runtime: applies to the docker"),
        ({"max_message_size": "1k"}, "max_message_size"),
        ({"console_output": "syslog"}, "console_output"),
        ({"pool_size": -1}, "pool_size"),
        ({"max_kernels": 5000}, "max_kernels"),
        ({"backend": "bwrap", "accept_unenforced": ["everything"]}, "unknown"),
        ({"backend": "runsc", "platform": "kvm"}, "platform: 'kvm' is not one of systrap, ptrace"),
        ({"backend": "docker", "platform": "ptrace"}, "platform: applies to the runsc"),
        ({"backend": "runsc", "pool_snapshots": "yes"}, "pool_snapshots: expected true or false"),
        ({"backend": "runsc", "pool_snapshot_restores": 0}, "pool_snapshot_restores: 0 must be"),
        ({"backend": "runsc", "pool_snapshot_age": -1.0}, "pool_snapshot_age: -1.0 must be"),
        ({"backend": "bwrap", "pool_snapshots": False}, "pool_snapshots: applies to the runsc"),
    ],
)
def test_configure_refuses_naming_the_setting(config: dict[str, Any], error: str) -> None:
    with pytest.raises(PolicyError, match=error):
        configure(config)


def test_every_setting_has_a_group_and_the_readers_take_theirs_from_the_table() -> None:
    from sandbox_kernel.exchange.policy import EXCHANGE_SETTINGS
    from sandbox_kernel.policy import POLICY_SETTINGS

    assert {s.group for s in settings.SETTINGS} == {"sandbox", "policy", "pool", "exchange", "host"}
    assert POLICY_SETTINGS == settings.group("policy") and "memory_limit" in POLICY_SETTINGS
    assert EXCHANGE_SETTINGS == settings.group("exchange") and "copy_in" in EXCHANGE_SETTINGS


NUMBERS = [s for s in settings.SETTINGS if s.kind in ("int", "int?", "float", "size")]


@pytest.mark.parametrize("s", NUMBERS, ids=[s.name for s in NUMBERS])
def test_every_number_is_bounded_by_the_table_wherever_it_is_read(s: settings.Setting) -> None:
    """The table's bounds are the ones enforced: configure (the provisioner's and install's
    one validation) refuses a value just outside them naming the setting and its range, and
    one of the wrong type naming the setting; the bounds themselves pass the check."""
    assert s.bounds is not None, f"{s.name} declares no bounds"
    lo, hi = s.bounds
    backend = s.backends[0] if s.backends else "docker"
    step = 0.001 if s.kind == "float" else 1
    for bad in (lo - step, hi + step):
        with pytest.raises(
            PolicyError, match=f"^{s.name}: .*{re.escape(settings.range_text(s.name))}"
        ):
            configure({"backend": backend, s.name: bad})
    for wrong in (True, "lots" if s.kind == "size" else str(s.default)):
        with pytest.raises(PolicyError, match=f"^{s.name}: "):
            configure({"backend": backend, s.name: wrong})
    assert settings.check(s.name, lo) == lo and settings.check(s.name, hi) == hi
    assert settings.range_text(s.name) in _install_help()


def _install_help() -> str:
    """Every flag's help text of ``sandbox-kernel install``."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert isinstance(sub.choices, dict)
    return " ".join(a.help or "" for a in sub.choices["install"]._actions)


def test_backend_settings_reach_only_their_backend() -> None:
    values = settings.resolve({"backend": "bwrap", "rootfs": "/srv/r"})
    assert backend_settings("bwrap", values) == {"rootfs": "/srv/r", "accept_unenforced": []}
    assert set(backend_settings("docker", settings.resolve({}))) == {
        "runtime", "allow_weaker_runtime",
    }  # fmt: skip


class _Elsewhere:
    """A backend that lives outside the package: one class, one registry line."""


def test_a_new_backend_is_one_module_and_one_registry_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sandbox_kernel.backends.base import SandboxBackend
    from sandbox_kernel.cli import main as cli

    class Elsewhere(SandboxBackend):
        name = "elsewhere"
        label = "sandboxed, elsewhere"

        async def preflight(self, policy: Any) -> Any: ...
        async def create(self, *a: Any, **k: Any) -> str:
            return ""

        async def attach(self, *a: Any) -> None: ...
        async def start(self, *a: Any) -> None: ...
        async def kill(self, *a: Any) -> None: ...
        async def remove(self, *a: Any) -> None: ...

        @classmethod
        def list_sandboxes(cls) -> list[Any]:
            return ["listed"]

    monkeypatch.setattr(sys.modules[__name__], "_Elsewhere", Elsewhere)
    monkeypatch.setitem(BACKENDS, "elsewhere", f"{__name__}:_Elsewhere")
    backend = make_backend("elsewhere", __import__("logging").getLogger(), {})
    assert isinstance(backend, Elsewhere)
    assert configure({"backend": "elsewhere"}).backend == "elsewhere"
    from sandbox_kernel.backends.registry import display_name

    assert display_name("elsewhere") == "Python 3 (sandboxed, elsewhere)"
    assert ("elsewhere", Elsewhere.list_sandboxes) in [
        (n, f) for n, f in cli._per_backend("list_sandboxes") if n == "elsewhere"
    ]
