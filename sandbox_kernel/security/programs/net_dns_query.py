import random
import socket
import struct

from ._prelude import _err, _report  # inlined

NEEDS = {}  # filled by render()

SERVER = NEEDS["server"]
QNAME = NEEDS["qname"]
qid = random.randrange(1, 0xFFFF)
labels = b"".join(bytes([len(p)]) + p.encode() for p in QNAME.split("."))
query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0"
query += struct.pack("!HH", 1, 1)
family = socket.AF_INET6 if ":" in SERVER else socket.AF_INET


def answered(data):
    ok = len(data) >= 12 and struct.unpack("!H", data[:2])[0] == qid
    return ok and data[3] & 0xF == 0


seen = {}
u = socket.socket(family, socket.SOCK_DGRAM)
u.settimeout(2)
try:
    u.sendto(query, (SERVER, 53))
    seen["udp"] = "ANSWERED" if answered(u.recv(512)) else "garbage"
except OSError as e:
    seen["udp"] = _err(e)
finally:
    u.close()
t = socket.socket(family, socket.SOCK_STREAM)
t.settimeout(3)
try:
    t.connect((SERVER, 53))
    t.sendall(struct.pack("!H", len(query)) + query)
    data = b""
    while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
        chunk = t.recv(4096)
        if not chunk:
            break
        data += chunk
    seen["tcp"] = "ANSWERED" if answered(data[2:]) else "CONNECTED"
except OSError as e:
    seen["tcp"] = _err(e)
finally:
    t.close()
_report(not any(v in ("ANSWERED", "CONNECTED") for v in seen.values()), seen)
