from ._prelude import _os, _read, _report  # inlined

NEEDS = {}  # filled by render()

TMP_CAP = NEEDS["tmp_bytes"]
HOME_CAP = NEEDS["home_bytes"]
mounts = {}
for line in _read("/proc/self/mountinfo").splitlines():
    left, _, right = line.partition(" - ")
    mounts[left.split()[4]] = right.split()[0] if right else "?"
seen, ok = {}, True
for path, cap in (("/tmp", TMP_CAP), (_os.path.expanduser("~"), HOME_CAP)):
    st = _os.statvfs(path)
    size = st.f_blocks * st.f_frsize
    fstype = mounts.get(path, "not a mount point")
    good = fstype == "tmpfs" and 0 < size <= cap
    ok = ok and good
    seen[path] = "%s, %d bytes (cap %d)%s" % (fstype, size, cap, "" if good else " TOO BIG")
_report(ok, seen)
