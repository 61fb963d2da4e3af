"""A kernelspec's settings, checked and turned into what the provisioner uses (pure).

:func:`configure` is the one validation of every setting (``settings.py`` declares them):
the provisioner calls it at each launch with its trait values (and keeps the backend
object it builds), ``sandbox-kernel install`` (``kernelspec.py``) and ``doctor`` before
anything is written or run. A bad value raises PolicyError naming the setting and the fix.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .backends.base import SandboxBackend
from .backends.registry import check_backend, make_backend
from .errors import PolicyError
from .exchange.policy import EXCHANGE_SETTINGS, ExchangePolicy, build_exchange_policy
from .kernel_slots import check_max_kernels
from .policy import POLICY_SETTINGS, SandboxPolicy, build_policy, format_size, parse_size
from .settings import check, resolve

MAX_MESSAGE_SIZE_CAP = 64 * 2**30


@dataclass(frozen=True)
class Configured:
    backend: str
    # The backend object, built once from its settings (its own checks ran; no host check
    # until its preflight): the provisioner's for this kernel.
    sandboxes: SandboxBackend
    policy: SandboxPolicy
    exchange: ExchangePolicy
    pool_size: int
    max_message: int
    console_output: str
    console_limit: int
    max_kernels: int
    values: dict[str, Any] = field(default_factory=dict)  # every setting, defaults filled in


def configure(config: Mapping[str, Any], log: logging.Logger | None = None) -> Configured:
    """``config`` (setting -> value; missing ones take their defaults), validated; ``log``
    is the backend's."""
    values = resolve(config)
    backend = check_backend(values["backend"])
    return Configured(
        backend=backend,
        sandboxes=make_backend(backend, log or logging.getLogger(__name__), values),
        policy=build_policy(**{k: values[k] for k in POLICY_SETTINGS}),
        exchange=build_exchange_policy(**{k: values[k] for k in EXCHANGE_SETTINGS}),
        pool_size=check("pool_size", values["pool_size"]),
        max_message=check_message_size(values["max_message_size"]),
        console_output=check("console_output", values["console_output"]),
        console_limit=parse_size(values["console_limit"], "console_limit"),
        max_kernels=check_max_kernels(values["max_kernels"]),
        values=values,
    )


def check_message_size(value: object) -> int:
    """``max_message_size`` in bytes: at least 1 MiB (a kernel's replies must fit)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise PolicyError(f"max_message_size: expected a size like '64m', got {value!r}")
    size = parse_size(value, "max_message_size")
    if not 2**20 <= size <= MAX_MESSAGE_SIZE_CAP:
        raise PolicyError(
            f"max_message_size: {format_size(size)} is outside [1 MiB, "
            f"{format_size(MAX_MESSAGE_SIZE_CAP)}]; use e.g. '64m'"
        )
    return size
