"""sandbox-kernel: Jupyter kernels inside a sandbox (gVisor by default) with no host files
and no network.

Folders and modules, by job:
  provisioner.py  the lifecycle jupyter_client drives (one instance per kernel)
  sandbox.py      one running sandbox of a kernel: boot or claim, start, signal, remove
  settings.py     every setting, declared once; configured.py validates them all
  policy.py       the isolation policy as data (pure)
  boot.py, pool.py, pool_snapshots.py, prewarm.py, bundle.py   bringing a sandbox up;
                  the warm pool and its snapshots
  backends/       one module per backend behind base.py's interface; registry.py names them
  inside/         what is shipped into the sandbox (stdlib only, Python >= 3.8): the agent
  relay/          the host's side of a sandbox's pipe and of its 127.0.0.1 ports
  exchange/       exposed ports, files in and out
  image/          the kernel image recipe and its registry-free builder
  security/       the attack catalogue and the gap table
  cli/, doctor.py, server.py, hub.py   the command, host checks, Jupyter Server and Hub
"""

__version__ = "0.1.0"
