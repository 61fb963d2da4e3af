# An attempt run by _in_userns (programs/_userns.py) in a new user namespace, after the
# text of userns_net.py; it fills res, which userns_child.py reports.
import ctypes
import errno
import os
import socket

res: dict = {}  # provided
libc = ctypes.CDLL(None, use_errno=True)


def name(code):
    return errno.errorcode.get(code, str(code))


res["mount"] = (
    "OK" if libc.mount(b"none", b"/tmp", b"tmpfs", 0, None) == 0 else name(ctypes.get_errno())
)
try:
    os.mknod("/tmp/.sk-userns-node", 0o020600, os.makedev(1, 3))
    res["mknod"] = "OK"
    os.unlink("/tmp/.sk-userns-node")
except OSError as e:
    res["mknod"] = name(e.errno)
try:
    os.chroot("/tmp")
    res["chroot"] = "OK"
except OSError as e:
    res["chroot"] = name(e.errno)
for what, family, proto in (
    ("packet socket", socket.AF_PACKET, 0),
    ("raw IPv4 socket", socket.AF_INET, socket.IPPROTO_ICMP),
    ("raw IPv6 socket", socket.AF_INET6, socket.IPPROTO_ICMPV6),
):
    try:
        socket.socket(family, socket.SOCK_RAW, proto).close()
        res[what] = "OK"
    except OSError as e:
        res[what] = name(e.errno)
