import fcntl
import socket
import struct

from ._prelude import _en, _err, _os, _report  # inlined

seen = {}
try:
    fd = _os.open("/dev/net/tun", _os.O_RDWR)
except OSError as e:
    seen["open /dev/net/tun"] = _en(e.errno)
else:
    # gVisor makes /dev/net/tun in every sandbox; the backends cover it (seccomp refusing
    # TUNSETIFF is the second lock), so a TUN device that opens at all is a weakening.
    seen["open /dev/net/tun"] = "OPENED"
    try:
        ifr = struct.pack("16sH", b"sk-probe0", 0x0001 | 0x1000)  # IFF_TUN | IFF_NO_PI
        fcntl.ioctl(fd, 0x400454CA, ifr)  # TUNSETIFF
        seen["TUNSETIFF"] = "CREATED"
    except OSError as e:
        seen["TUNSETIFF"] = _en(e.errno)
    finally:
        _os.close(fd)
try:
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
except OSError as e:
    seen["netlink socket"] = _en(e.errno)
else:
    with nl:
        nl.settimeout(5)
        attr = struct.pack("HH4s", 8, 2, socket.inet_aton("127.0.0.9"))  # IFA_LOCAL
        ifa = struct.pack("BBBBI", socket.AF_INET, 32, 0, 254, socket.if_nametoindex("lo"))
        flags = 0x1 | 0x4 | 0x400 | 0x200  # REQUEST | ACK | CREATE | EXCL
        body = ifa + attr
        nl.send(struct.pack("IHHII", 16 + len(body), 20, flags, 1, 0) + body)  # RTM_NEWADDR
        try:
            reply = nl.recv(4096)
            mtype = struct.unpack("H", reply[4:6])[0]
            code = struct.unpack("i", reply[16:20])[0] if mtype == 2 else None
            if code is None:
                seen["RTM_NEWADDR"] = "reply type %d" % mtype
            else:
                seen["RTM_NEWADDR"] = "ADDED" if code == 0 else _en(-code)
        except OSError as e:
            seen["RTM_NEWADDR"] = "no answer (%s)" % _err(e)
ok = all(v in ("EPERM", "EACCES", "ENOENT", "EOPNOTSUPP", "ENOTSUP") for v in seen.values())
_report(ok and bool(seen), seen)
