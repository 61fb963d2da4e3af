"""Host setup (Docker + gVisor) shipped with the package."""
