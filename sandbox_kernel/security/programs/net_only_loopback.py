import socket

from ._prelude import _read, _report  # inlined

names = [n for _, n in socket.if_nameindex()]
dev = [
    line.split(":")[0].strip() for line in _read("/proc/net/dev").splitlines()[2:] if ":" in line
]
routes = [line.split()[0] for line in _read("/proc/net/route").splitlines()[1:] if line.strip()]
try:
    v6 = _read("/proc/net/ipv6_route").splitlines()
    routes += [line.split()[-1] for line in v6 if line.strip()]
except OSError:
    pass
ok = names == ["lo"] and dev == ["lo"] and all(r == "lo" for r in routes)
routes = sorted(set(routes))
_report(ok, "interfaces %s, /proc/net/dev %s, route devices %s" % (names, dev, routes))
