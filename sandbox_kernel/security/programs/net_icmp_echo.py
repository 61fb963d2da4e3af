import select
import socket
import struct
import time

from ._prelude import _err, _os, _report  # inlined

NEEDS = {}  # filled by render()

ADDRS = [NEEDS["addr"], NEEDS["addr6"]]


def _csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _ping(addr):
    v6 = ":" in addr
    family = socket.AF_INET6 if v6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    request, reply = (128, 129) if v6 else (8, 0)
    try:
        s, raw = socket.socket(family, socket.SOCK_DGRAM, proto), False
    except OSError as e:
        try:  # unprivileged ping sockets not allowed: try raw (works for root)
            s, raw = socket.socket(family, socket.SOCK_RAW, proto), True
        except OSError as e2:
            return "no ICMP socket (%s; raw %s)" % (_err(e), _err(e2))
    with s:
        ident, payload = _os.getpid() & 0xFFFF, b"sk-ping-probe"
        header = struct.pack("!BBHHH", request, 0, 0, ident, 1)
        if not v6:
            header = struct.pack("!BBHHH", request, 0, _csum(header + payload), ident, 1)
        try:
            s.sendto(header + payload, (addr, 0))
        except OSError as e:
            return "send failed: %s" % _err(e)
        deadline = time.monotonic() + 2
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([s], [], [], left)[0]:
                return "no reply in 2 s"
            try:
                data, src = s.recvfrom(2048)
            except OSError as e:
                return "receive failed: %s" % _err(e)
            if raw and not v6:
                data = data[(data[0] & 0x0F) * 4 :]
            if data and data[0] == reply and src[0] == addr:
                return "REPLY"


seen = {addr: _ping(addr) for addr in ADDRS}
_report("REPLY" not in seen.values(), seen)
