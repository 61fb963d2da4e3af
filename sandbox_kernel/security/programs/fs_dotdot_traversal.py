from ._prelude import _os, _read, _report  # inlined

home = _os.path.expanduser("~")
root = _os.stat("/")
own_hostname = _read("/etc/hostname")
seen = {}
for start in ("/tmp", home, "/dev/shm", "/proc/self/cwd"):
    if not _os.path.isdir(start):
        continue
    up = start + "/" + "../" * 16
    st = _os.stat(up)
    same = (st.st_dev, st.st_ino) == (root.st_dev, root.st_ino)
    same = same and sorted(_os.listdir(up)) == sorted(_os.listdir("/"))
    same = same and _read(up + "etc/hostname") == own_hostname
    fd = _os.open(start, _os.O_RDONLY)
    try:
        st = _os.stat("../" * 16, dir_fd=fd)
        same = same and (st.st_dev, st.st_ino) == (root.st_dev, root.st_ino)
    finally:
        _os.close(fd)
    seen[start] = "own root" if same else "ELSEWHERE"
_report(bool(seen) and all(v == "own root" for v in seen.values()), seen)
