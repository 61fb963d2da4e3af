import socket

from ._prelude import _err, _report  # inlined

NEEDS = {}  # filled by render()

ADDRS = [NEEDS["addr"], NEEDS["addr6"], "::ffff:" + NEEDS["addr"]]
PORT = NEEDS["port"]
seen = {}
for addr in ADDRS:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    t = socket.socket(family, socket.SOCK_STREAM)
    t.settimeout(3)
    try:
        t.connect((addr, PORT))
        seen["tcp " + addr] = "CONNECTED"
    except OSError as e:
        seen["tcp " + addr] = _err(e)
    finally:
        t.close()
    u = socket.socket(family, socket.SOCK_DGRAM)
    u.settimeout(2)
    try:
        u.sendto(b"sk-probe", (addr, PORT))
        u.recvfrom(64)
        seen["udp " + addr] = "ANSWERED"
    except OSError as e:
        seen["udp " + addr] = _err(e)
    finally:
        u.close()
_report(not any(v in ("CONNECTED", "ANSWERED") for v in seen.values()), seen)
