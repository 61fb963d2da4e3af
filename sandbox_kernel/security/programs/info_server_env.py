from ._prelude import _os, _pids, _read, _report  # inlined

NEEDS = {}  # filled by render()

# Passed hex-encoded: the cell's own text (kept in IPython's history) must not
# contain the secret it looks for.
TOKEN = bytes.fromhex(NEEDS["token_hex"]).decode()
found = []
if any(TOKEN in k or TOKEN in v for k, v in _os.environ.items()):
    found.append("os.environ")
for pid in _pids():
    for what in ("environ", "cmdline"):
        try:
            if TOKEN.encode() in _read("/proc/%d/%s" % (pid, what), "rb"):
                found.append("/proc/%d/%s" % (pid, what))
        except OSError:
            pass
checked = 0
for top in ("/tmp", _os.path.expanduser("~")):
    for dirpath, _dirnames, filenames in _os.walk(top):
        for name in filenames:
            path = _os.path.join(dirpath, name)
            try:
                if _os.path.getsize(path) < 4 << 20:
                    checked += 1
                    if TOKEN.encode() in _read(path, "rb"):
                        found.append(path)
            except OSError:
                pass
        if found or checked > 5000:
            break
_report(
    not found,
    "token found in %s" % found
    if found
    else "token absent from the environment, /proc and %d files" % checked,
)
