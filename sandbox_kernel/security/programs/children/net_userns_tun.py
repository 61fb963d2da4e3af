# An attempt run by _in_userns (programs/_userns.py) in a new user namespace, after the
# text of userns_net.py; it fills res, which userns_child.py reports.
import ctypes
import errno
import fcntl
import os
import socket
import struct

res: dict = {}  # provided


def name(code):
    return errno.errorcode.get(code, str(code))


libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR_IOCTL = {"x86_64": 16, "aarch64": 29}.get(os.uname().machine)
TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000


def tunsetiff(path, how):
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as e:
        return "open: " + name(e.errno)
    try:  # the interface goes away with the last descriptor (not persistent)
        ifr = ctypes.create_string_buffer(
            struct.pack("16sH", b"sk-tun-probe", IFF_TUN | IFF_NO_PI), 40
        )
        if how == "ioctl":
            try:
                fcntl.ioctl(fd, TUNSETIFF, ifr.raw)
            except OSError as e:
                return name(e.errno)
        else:  # the kernel reads 32 bits of the request: junk above them
            rv = libc.syscall(
                ctypes.c_long(NR_IOCTL),
                ctypes.c_long(fd),
                ctypes.c_ulong((1 << 32) | TUNSETIFF),
                ifr,
            )
            if rv != 0:
                return name(ctypes.get_errno())
        return "CREATED (interfaces: %s)" % [n for _, n in socket.if_nameindex()]
    finally:
        os.close(fd)


node = "/tmp/.sk-tun-node-%d" % os.getpid()
try:
    os.mknod(node, 0o020600, os.makedev(10, 200))
    res["mknod tun node"] = "OK"
except OSError as e:
    res["mknod tun node"] = name(e.errno)
try:
    for path in ("/dev/net/tun", node):
        if path == node and res["mknod tun node"] != "OK":
            continue
        res["TUNSETIFF via " + path] = tunsetiff(path, "ioctl")
        if NR_IOCTL is not None:
            res["raw TUNSETIFF via " + path] = tunsetiff(path, "raw")
finally:
    if res["mknod tun node"] == "OK":
        os.unlink(node)
