"""sandbox-kernel: Jupyter kernels inside a gVisor sandbox with no host filesystem and no network.

Folders, by job:
  relay/     the frame protocol and the stream multiplexer (pure, shared with the agent)
  agent/     the stdlib-only program that runs inside the sandbox
  backends/  isolation backends (Docker + runsc first) that start the agent
  image/     the default kernel image recipe and builder
  cli/       the ``sandbox-kernel`` command
"""

__version__ = "0.1.0"
