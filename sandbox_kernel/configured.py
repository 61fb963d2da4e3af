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
from .exchange.policy import EXCHANGE_SETTINGS, ExchangePolicy, build_exchange_policy
from .kernel_slots import check_max_kernels
from .policy import POLICY_SETTINGS, SandboxPolicy, build_policy
from .settings import check, resolve


@dataclass(frozen=True)
class Configured:
    backend: str
    # The backend object, built once from its settings (its own checks ran; no host check
    # until its preflight): the provisioner's for this kernel.
    sandbox_backend: SandboxBackend
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
        sandbox_backend=make_backend(backend, log or logging.getLogger(__name__), values),
        policy=build_policy(**{k: values[k] for k in POLICY_SETTINGS}),
        exchange=build_exchange_policy(**{k: values[k] for k in EXCHANGE_SETTINGS}),
        pool_size=check("pool_size", values["pool_size"]),
        max_message=check("max_message_size", values["max_message_size"]),
        console_output=check("console_output", values["console_output"]),
        console_limit=check("console_limit", values["console_limit"]),
        max_kernels=check_max_kernels(values["max_kernels"]),
        values=values,
    )
