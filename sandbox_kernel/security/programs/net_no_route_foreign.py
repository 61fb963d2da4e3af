import socket

from ._prelude import _en, _report  # inlined

TARGETS = [
    "169.254.169.254",
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "192.0.2.1",
    "100.64.0.1",
    "8.8.8.8",
    "1.1.1.1",
    "224.0.0.251",
    "2001:db8::1",
    "2606:4700:4700::1111",
    "64:ff9b::808:808",
    "fd00::1",
]
seen = {}
for addr in TARGETS:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.connect((addr, 53))  # a route lookup: no packet is sent
        seen[addr] = "ROUTE via %s" % (s.getsockname()[0],)
    except OSError as e:
        seen[addr] = _en(e.errno)
    finally:
        s.close()
# EADDRNOTAVAIL: no source address for that family at all (host-kernel backends
# without IPv6 on the sandbox's loopback): no route either.
ok = all(v in ("ENETUNREACH", "EHOSTUNREACH", "EADDRNOTAVAIL") for v in seen.values())
_report(ok, seen)
