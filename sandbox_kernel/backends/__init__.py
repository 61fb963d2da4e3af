"""Isolation backends: each starts the agent under a policy and gives back its pipe."""

from .base import SandboxBackend
from .docker import DockerBackend

__all__ = ["DockerBackend", "SandboxBackend"]
