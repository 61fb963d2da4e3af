import socket

from ._prelude import _err, _report  # inlined

NEEDS = {}  # filled by render()

ADDRS = NEEDS["addrs"]
PORT = NEEDS["port"]
seen = {}
for addr in ADDRS:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect((addr, PORT))
        seen[addr] = "CONNECTED"
    except OSError as e:
        seen[addr] = _err(e)
    finally:
        s.close()
_report(bool(seen) and "CONNECTED" not in seen.values(), seen)
