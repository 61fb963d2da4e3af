from ._prelude import _read, _report  # inlined

FORBIDDEN = (
    "/var/lib/docker",
    "/var/lib/containerd",
    "/run/containerd",
    "/var/run/docker",
    "/run/docker",
    "/run/runsc",
    "/var/run/runsc",
    "lowerdir=",
    "upperdir=",
    "overlay2",
    "/work",
    "/root",
    "/home/runner",
    "/Users/",
)
text = ""
for path in ("/proc/self/mountinfo", "/proc/self/mounts", "/proc/1/mountinfo"):
    try:
        text += _read(path)
    except OSError:
        pass
hits = sorted({f for f in FORBIDDEN if f in text})
lines = [line for line in text.splitlines() if any(f in line for f in hits)]
if not text:
    _report(False, "could not read the mount table")
elif hits:
    _report(False, "host paths in the mount table: %s, e.g. %s" % (hits, lines[:3]))
else:
    _report(True, "%d mount lines, none names a host path" % len(text.splitlines()))
