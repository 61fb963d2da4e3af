"""The ``sandbox-kernel`` command line."""
