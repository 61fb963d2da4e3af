import socket

from ._prelude import _err, _report  # inlined

NEEDS = {}  # filled by render()

NAME = NEEDS["name"]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(3)
try:
    s.connect(chr(0) + NAME)
    seen = "CONNECTED"
except OSError as e:
    seen = _err(e)
finally:
    s.close()
_report(seen != "CONNECTED", "connect to @%s: %s" % (NAME, seen))
