"""The host side of the relay: a sandbox's pipe (``session``), the 127.0.0.1 ports that
lead into it (``listeners``, ``peers``), what a sandbox may make the host hold
(``console``, ``zmtp``), and the relay's own event loop thread (``thread``). The frame
format and the multiplexer are shared with the agent: ``sandbox_kernel/inside/``.
"""
