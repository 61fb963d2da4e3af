# Netlink (NETLINK_ROUTE) requests on "lo", put before each attempt that _in_userns
# (programs/_userns.py) runs in a new user namespace.
import errno
import socket
import struct

LO = socket.if_nametoindex("lo")


def nl(mtype, flags, body):
    # One request with an ACK asked for: "OK", or the errno name the kernel answered.
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    s.settimeout(5)
    try:
        s.send(struct.pack("IHHII", 16 + len(body), mtype, flags | 0x1 | 0x4, 1, 0) + body)
        reply = s.recv(65536)
    except OSError as e:
        return "no answer (%s)" % errno.errorcode.get(e.errno, type(e).__name__)
    finally:
        s.close()
    if len(reply) < 20 or struct.unpack("H", reply[4:6])[0] != 2:  # NLMSG_ERROR
        return "unexpected reply"
    code = struct.unpack("i", reply[16:20])[0]
    return "OK" if code == 0 else errno.errorcode.get(-code, str(code))


def rta(kind, data):
    return struct.pack("HH", 4 + len(data), kind) + data + bytes(-len(data) % 4)


def _family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _ifaddr(addr, plen):
    raw = socket.inet_pton(_family(addr), addr)
    return struct.pack("BBBBI", _family(addr), plen, 0, 0, LO) + rta(1, raw) + rta(2, raw)


def _rtmsg(net, plen):  # main table, static, link scope, unicast, dev lo
    head = struct.pack("BBBBBBBBI", _family(net), plen, 0, 0, 254, 4, 253, 1, 0)
    return head + rta(1, socket.inet_pton(_family(net), net)) + rta(4, struct.pack("I", LO))


def add_addr(addr, plen):
    return nl(20, 0x400 | 0x200, _ifaddr(addr, plen))  # RTM_NEWADDR, CREATE | EXCL


def del_addr(addr, plen):
    return nl(21, 0, _ifaddr(addr, plen))


def add_route(net, plen):
    return nl(24, 0x400 | 0x200, _rtmsg(net, plen))  # RTM_NEWROUTE


def del_route(net, plen):
    return nl(25, 0, _rtmsg(net, plen))


def bindable(addr):
    # Whether addr is now an address of this network namespace.
    s = socket.socket(_family(addr), socket.SOCK_DGRAM)
    try:
        s.bind((addr, 0))
        return True
    except OSError:
        return False
    finally:
        s.close()
