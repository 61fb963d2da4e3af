"""Code that runs inside the sandbox: shipped over the sandbox's stdin at each start.

Nothing here is installed in the kernel image: ``sandbox_kernel/bundle.py`` sends these
modules' source text to a tiny bootstrap program, which runs ``agent.main()``. So each
module is standard library only, valid on the oldest Python an image may have (3.8;
ruff checks them with that target), and imports only modules shipped before it:

* ``protocol``: the frame format, stdin escaping and flow-control windows;
* ``ops``: the CONTROL messages, their fields, and the check both ends apply;
* ``mux``: many TCP connections over one pipe (also the host's relay uses it);
* ``exchange``: the agent's side of exposed ports, exports and copied-in files;
* ``agent``: PID 1 of the sandbox;
* ``sandboxed``: written onto the kernel's PYTHONPATH (``import sandboxed``);
* ``prewarm_kernel``: the warm pool's kernel, initialised up to its key.
"""
