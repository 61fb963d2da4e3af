from ._prelude import _read, _report  # inlined

NEEDS = {}  # filled by render()

PORT = NEEDS["port"]
UNIX_NAMES = NEEDS["unix_names"]
found = []
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        lines = _read(table).splitlines()[1:]
    except OSError:
        continue
    for line in lines:
        fields = line.split()
        local = fields[1]
        if (
            fields[3] == "0A"
            and int(local.rsplit(":", 1)[1], 16) == PORT
            and local.split(":")[0].strip("0") == ""
        ):
            found.append("%s: %s" % (table, local))
try:
    unix = _read("/proc/net/unix")
except OSError:
    unix = ""
found += ["/proc/net/unix: %s" % n for n in UNIX_NAMES if n in unix]
_report(not found, found or "no host socket listed")
