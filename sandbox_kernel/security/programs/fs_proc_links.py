from ._prelude import _os, _pids, _report  # inlined

own_devs = set()
for d in ("/tmp", _os.path.expanduser("~"), "/dev/shm"):
    try:
        own_devs.add(_os.stat(d).st_dev)
    except OSError:
        pass
checked, foreign = 0, []
for pid in [str(p) for p in _pids()]:
    try:
        fds = ["fd/" + n for n in _os.listdir("/proc/%s/fd" % pid)]
    except OSError:
        fds = []
    for link in ["cwd", "exe", *fds]:
        path = "/proc/%s/%s" % (pid, link)
        try:
            target = _os.readlink(path)
            via = _os.stat(path)  # the object itself, through the magic link
        except OSError:
            continue  # gone, or not ours to look at
        if not target.startswith("/") or target.startswith("/memfd:"):
            continue  # pipes, sockets, anonymous inodes, memfds: no path to follow
        checked += 1
        name = target[: -len(" (deleted)")] if target.endswith(" (deleted)") else target
        try:
            here = _os.stat(name)
            same = (here.st_dev, here.st_ino) == (via.st_dev, via.st_ino)
        except OSError:
            same = False
        if not same and not (via.st_nlink == 0 and via.st_dev in own_devs):
            foreign.append("%s -> %s" % (path, target))  # deleted files of our tmpfs are ok
if foreign:
    _report(False, "links to files not in the sandbox's tree: %s" % foreign[:10])
else:
    _report(checked > 0, "%d fd/cwd/exe links, all to the sandbox's own files" % checked)
