import socket

from ._prelude import _err, _os, _read, _report  # inlined

NEEDS = {}  # filled by render()

HOST = NEEDS["host_hostname"]
seen = {"gethostname": socket.gethostname(), "uname": _os.uname().nodename}
for p in ("/etc/hostname", "/proc/sys/kernel/hostname"):
    try:
        seen[p] = _read(p).strip()
    except OSError as e:
        seen[p] = _err(e)
same = [k for k, v in seen.items() if v.lower() == HOST.lower()]
_report(not same, "host's name seen via %s" % same if same else seen)
