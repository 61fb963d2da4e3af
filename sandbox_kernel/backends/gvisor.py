"""What every gVisor backend (``docker``, ``runsc``) insists on (pure data)."""

# What the agent keeps as root of a gVisor sandbox, to start the kernel under the
# policy's uid and signal it (inside/agent.py); every other capability is dropped, and
# the kernel holds none.
AGENT_CAPABILITIES = ("SETUID", "SETGID", "KILL", "SETPCAP")

# runsc flags the sandbox needs: no host network namespace, and enforcement of the
# container's seccomp profile inside gVisor (without it, runsc ignores the profile).
REQUIRED_RUNSC_ARGS = ("--network=none", "--oci-seccomp")
