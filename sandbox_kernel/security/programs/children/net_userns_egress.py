# An attempt run by _in_userns (programs/_userns.py) in a new user namespace, after the
# text of userns_net.py; it fills res, which userns_child.py reports.
# The attack puts the test hosts' addresses and ports before it.
import errno
import ipaddress
import select
import socket
import struct
import time

from .userns_net import _family, add_addr, del_addr  # provided

LAN, LAN6, PORT, LOOP_PORT = "", "", 0, 0  # provided
res: dict = {}  # provided


def name(e):
    return (
        errno.errorcode.get(e.errno, type(e).__name__)
        if isinstance(e, OSError) and e.errno
        else type(e).__name__
    )


def near(addr, plen):  # an address of the same /24 (/64) as addr
    net = ipaddress.ip_network("%s/%d" % (addr, plen), strict=False)
    return str(net.network_address + 250)


def tcp(dst, port, src):
    s = socket.socket(_family(dst), socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        if src:
            s.bind((src, 0))
        s.connect((dst, port))
        try:
            return "REACHED" if s.recv(16) == b"tcp-pong" else "CONNECTED"
        except OSError:
            return "CONNECTED"
    except OSError as e:
        return name(e)
    finally:
        s.close()


def udp(dst, src):
    s = socket.socket(_family(dst), socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        if src:
            s.bind((src, 0))
        s.sendto(b"sk-probe", (dst, PORT))
        return "REACHED" if s.recv(64) == b"udp-pong" else "answer of a stranger"
    except OSError as e:
        return name(e)
    finally:
        s.close()


def ping(dst):  # a raw ICMP socket: possible in a user namespace under gVisor
    v6 = ":" in dst
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    try:
        s = socket.socket(_family(dst), socket.SOCK_RAW, proto)
    except OSError as e:
        return "raw socket: " + name(e)
    with s:
        head = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, 0x5ABC, 1)
        data = head + b"sk-ping-probe"
        if not v6:  # the ICMPv4 checksum (the kernel fills ICMPv6's)
            even = data + bytes(len(data) % 2)
            total = sum(struct.unpack("!%dH" % (len(even) // 2), even))
            while total >> 16:
                total = (total & 0xFFFF) + (total >> 16)
            data = data[:2] + struct.pack("!H", ~total & 0xFFFF) + data[4:]
        try:
            s.sendto(data, (dst, 0))
        except OSError as e:
            return "send: " + name(e)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            if not select.select([s], [], [], max(0, deadline - time.monotonic()))[0]:
                break
            reply, src = s.recvfrom(2048)
            if not v6:
                reply = reply[(reply[0] & 0x0F) * 4 :]
            if src[0] == dst and reply[:1] == bytes([129 if v6 else 0]):
                return "REPLY"
        return "no reply"


NEW, NEW6 = near(LAN, 24), near(LAN6, 64)
added = []
try:
    for addr, plen in ((NEW, 24), (NEW6, 64)):
        got = add_addr(addr, plen)
        res["add " + addr] = got
        if got == "OK":
            added.append(addr)
    for dst in (LAN, LAN6, "::ffff:" + LAN):
        for src in [None] + [a for a in added if _family(a) == _family(dst)]:
            via = " from %s" % src if src else ""
            res["tcp %s%s" % (dst, via)] = tcp(dst, PORT, src)
            res["udp %s%s" % (dst, via)] = udp(dst, src)
    for dst in (LAN, LAN6):
        res["ping " + dst] = ping(dst)
    for dst in ("127.0.0.1", "::1"):
        for src in [None] + [a for a in added if _family(a) == _family(dst)]:
            res["host loopback %s%s" % (dst, " from %s" % src if src else "")] = tcp(
                dst, LOOP_PORT, src
            )
finally:
    for addr, plen in ((NEW, 24), (NEW6, 64)):
        if addr in added:
            del_addr(addr, plen)
