import socket
import struct

from ._prelude import _err, _read, _report  # inlined

servers = []
try:
    for line in _read("/etc/resolv.conf").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            servers.append(parts[1].split("%")[0])
except OSError:
    pass
seen = {}
for addr in servers:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        s.connect((addr, 53))  # route lookup only
        if not (addr.startswith("127.") or addr == "::1"):
            seen[addr] = "ROUTE via %s" % (s.getsockname()[0],)
            continue
        # A loopback resolver would be the sandbox's own: ask it (loopback traffic).
        s.send(
            struct.pack("!HHHHHH", 0x5A5A, 0x0100, 1, 0, 0, 0)
            + b"\x07example\x03com\x00"
            + struct.pack("!HH", 1, 1)
        )
        s.recv(512)
        seen[addr] = "ANSWERED"
    except OSError as e:
        seen[addr] = _err(e)
    finally:
        s.close()
ok = all(v in ("ENETUNREACH", "EHOSTUNREACH", "ECONNREFUSED", "timeout") for v in seen.values())
_report(ok, seen or "no nameserver configured")
