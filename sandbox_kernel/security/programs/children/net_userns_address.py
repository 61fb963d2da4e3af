# An attempt run by _in_userns (programs/_userns.py) in a new user namespace, after the
# text of userns_net.py; it fills res, which userns_child.py reports.
import ctypes
import errno
import fcntl
import socket
import struct

from .userns_net import add_addr, add_route, bindable, del_addr, del_route  # provided

res: dict = {}  # provided


class rtentry(ctypes.Structure):
    _fields_ = [
        ("pad1", ctypes.c_ulong),
        ("dst", ctypes.c_char * 16),
        ("gateway", ctypes.c_char * 16),
        ("genmask", ctypes.c_char * 16),
        ("flags", ctypes.c_ushort),
        ("pad2", ctypes.c_short),
        ("pad3", ctypes.c_ulong),
        ("pad4", ctypes.c_void_p),
        ("metric", ctypes.c_short),
        ("dev", ctypes.c_char_p),
        ("mtu", ctypes.c_ulong),
        ("window", ctypes.c_ulong),
        ("irtt", ctypes.c_ushort),
    ]


def sin(addr):
    return struct.pack("HH4s8x", socket.AF_INET, 0, socket.inet_aton(addr))


def name(e):
    return errno.errorcode.get(e.errno, str(e.errno))


libc = ctypes.CDLL(None, use_errno=True)
SIOCADDRT, SIOCDELRT, SIOCSIFADDR = 0x890B, 0x890C, 0x8916
ADDRS = [("192.168.213.250", 24), ("fd5a:213:9::250", 64)]
ROUTES = [("10.213.9.0", 24), ("fd5a:213:a::", 64)]
ALIAS = "192.168.214.250"  # SIOCSIFADDR on an alias: lo keeps 127.0.0.1
rt = rtentry(dst=sin("10.213.11.0"), genmask=sin("255.255.255.0"), flags=1, dev=b"lo")
added, routed, undo = [], [], []
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    for addr, plen in ADDRS:
        got = add_addr(addr, plen)
        if got == "OK":
            added.append((addr, plen))
            got = "ADDED (now bindable: %s)" % bindable(addr)
        res["RTM_NEWADDR " + addr] = got
    for net, plen in ROUTES:
        got = add_route(net, plen)
        if got == "OK":
            routed.append((net, plen))
            got = "ADDED"
        res["RTM_NEWROUTE " + net] = got
    try:
        fcntl.ioctl(s, SIOCSIFADDR, struct.pack("16s", b"lo:sk") + sin(ALIAS))
        added.append((ALIAS, 24))
        res["SIOCSIFADDR lo:sk"] = "ADDED (now bindable: %s)" % bindable(ALIAS)
    except OSError as e:
        res["SIOCSIFADDR lo:sk"] = name(e)
    if libc.ioctl(s.fileno(), SIOCADDRT, ctypes.byref(rt)) == 0:
        undo.append(rt)
        res["SIOCADDRT"] = "ADDED"
    else:
        res["SIOCADDRT"] = errno.errorcode.get(ctypes.get_errno(), "?")
finally:
    for addr, plen in added:
        del_addr(addr, plen)
    for net, plen in routed:
        del_route(net, plen)
    for entry in undo:
        libc.ioctl(s.fileno(), SIOCDELRT, ctypes.byref(entry))
    s.close()
    left = [a for a, _ in added if bindable(a)]
    if left:
        res["cleanup"] = "addresses left behind: %s" % left
