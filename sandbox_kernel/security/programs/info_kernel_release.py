import platform

from ._prelude import _err, _read, _report  # inlined

NEEDS = {}  # filled by render()

HOST_RELEASE = NEEDS["host_release"]
seen = {"release": platform.release(), "version": platform.version()}
try:
    seen["/proc/version"] = _read("/proc/version").strip()
except OSError as e:
    seen["/proc/version"] = _err(e)
leaks = [k for k, v in seen.items() if HOST_RELEASE in v]
_report(not leaks, "host release in %s" % leaks if leaks else seen)
