"""The relay: frames (``protocol``), multiplexing (``mux``), and the host side of
the pipe (``docker_stream``, ``session``, ``listeners``, ``thread``).

``protocol`` and ``mux`` are standard-library only and are shipped into the
sandbox with the agent; the other modules run on the host.
"""
