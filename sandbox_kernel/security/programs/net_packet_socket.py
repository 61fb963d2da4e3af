import socket

from ._prelude import _en, _report  # inlined

seen = {}
for name, kind in (("packet/raw", socket.SOCK_RAW), ("packet/dgram", socket.SOCK_DGRAM)):
    try:
        socket.socket(socket.AF_PACKET, kind, socket.htons(0x0003)).close()
        seen[name] = "OPENED"
    except OSError as e:
        seen[name] = _en(e.errno)
refused = ("EPERM", "EACCES", "EAFNOSUPPORT", "ENOTSUP", "EOPNOTSUPP")  # ENOTSUP: firejail
_report(all(v in refused for v in seen.values()), seen)
