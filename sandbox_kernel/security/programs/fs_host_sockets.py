import socket
import stat

from ._prelude import _os, _report  # inlined

KNOWN = [
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/run/containerd/containerd.sock.ttrpc",
    "/run/docker/containerd/containerd.sock",
    "/run/dbus/system_bus_socket",
    "/var/run/dbus/system_bus_socket",
    "/run/systemd/private",
    "/run/systemd/journal/socket",
    "/run/systemd/notify",
    "/run/podman/podman.sock",
    "/var/run/crio/crio.sock",
    "/run/snapd.socket",
    "/run/user/0/bus",
    "/run/user/1000/bus",
    "/var/run/runsc",
]
present = [p for p in KNOWN if _os.path.lexists(p)]
connected = []
for p in KNOWN:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(p)
        connected.append(p)
    except OSError:
        pass
    finally:
        s.close()
found = []
for top in (
    "/run",
    "/var",
    "/tmp",
    "/home",
    "/etc",
    "/opt",
    "/srv",
    "/mnt",
    "/media",
    "/dev",
    "/root",
):
    for dirpath, _dirnames, filenames in _os.walk(top):
        for name in filenames:
            path = _os.path.join(dirpath, name)
            try:
                if stat.S_ISSOCK(_os.lstat(path).st_mode):
                    found.append(path)
            except OSError:
                pass
# The one socket a sandbox has on purpose: its own agent's (sandboxed.expose/export),
# in the sandbox's tmpfs. Excluded only if it answers as that agent does.
own = _os.environ.get("SANDBOX_KERNEL_AGENT_SOCKET", "/tmp/.sandbox-kernel/agent.sock")
if own in found:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(own)
        s.sendall(b'{"op": "ports"}\n')
        answer = s.makefile().readline()
        if '"ports"' in answer and '"ok": true' in answer:
            found.remove(own)
    except OSError:
        pass
    finally:
        s.close()
bad = sorted(set(present + connected + found))
if bad:
    _report(False, "unix sockets inside: %s (connected: %s)" % (bad, connected))
else:
    _report(
        True, "no unix socket file but the agent's own; %d known host sockets absent" % len(KNOWN)
    )
