import sysconfig

from ._prelude import _os, _report  # inlined

# The mount flag itself, not a write attempt: the kernel's uid cannot write the
# root-owned image anyway, so only the flag shows a root mounted writable (which root in
# the sandbox, or a uid the image trusts, could then change).
ST_RDONLY = 1
paths = sysconfig.get_paths()
seen = {}
for path in ("/", "/usr", "/usr/bin", "/etc", "/var", paths["stdlib"], paths["purelib"]):
    try:
        flags = _os.statvfs(path).f_flag
    except OSError:
        continue
    seen[path] = "read-only" if flags & ST_RDONLY else "WRITABLE"
root = ""
with open("/proc/self/mountinfo") as f:
    for line in f:
        fields = line.split()
        if fields[4] == "/":
            root = fields[5]  # the last mount at / is the one seen
writable = sorted(p for p, v in seen.items() if v == "WRITABLE")
_report(
    bool(seen) and not writable and "ro" in root.split(","),
    ("mounted writable: %s; " % writable if writable else "")
    + "/ mounted %s; %d paths on read-only mounts" % (root or "?", len(seen) - len(writable)),
)
