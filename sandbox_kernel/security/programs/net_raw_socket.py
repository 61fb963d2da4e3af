import socket

from ._prelude import _en, _report  # inlined

TRIES = [
    ("inet/raw/icmp", socket.AF_INET, socket.IPPROTO_ICMP),
    ("inet/raw/raw", socket.AF_INET, socket.IPPROTO_RAW),
    ("inet/raw/tcp", socket.AF_INET, socket.IPPROTO_TCP),
    ("inet6/raw/icmpv6", socket.AF_INET6, socket.IPPROTO_ICMPV6),
]
seen = {}
for name, family, proto in TRIES:
    try:
        socket.socket(family, socket.SOCK_RAW, proto).close()
        seen[name] = "OPENED"
    except OSError as e:
        seen[name] = _en(e.errno)
_report(all(v in ("EPERM", "EACCES") for v in seen.values()), seen)
