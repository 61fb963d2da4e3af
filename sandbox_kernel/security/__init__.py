"""Attacks on the sandbox, as data: what code inside a kernel tries, and how it judges the result.

Used by the security test suite and by ``sandbox-kernel doctor``. Pure: no Docker, no
Jupyter; see :mod:`sandbox_kernel.security.attacks`.
"""

from __future__ import annotations

from .attacks import ATTACKS, PROTECTS, Attack, by_id, render

__all__ = ["ATTACKS", "PROTECTS", "Attack", "by_id", "render"]
