import re
import stat

from ._prelude import _err, _os, _read, _report  # inlined

# Judged from /proc/self/mountinfo, mounts hidden under later ones left out. Allowed:
# the image root (9p under gVisor, overlay under runc, else a folder of the host that
# is not a whole filesystem) and parts of it bound elsewhere; virtual filesystems;
# device nodes bound from devtmpfs (bwrap); tmpfs, whole or part of one mounted here,
# size-capped if the sandbox can write into it, holding no files if it cannot (so is
# /dev when it is gVisor's own "dev" filesystem, a tmpfs in the sentry since 2025); and
# Docker's /etc/hosts, /etc/hostname, /etc/resolv.conf. Anything else is reported: a
# host folder (bound read-only or not, anywhere), part of a host tmpfs, the host's /dev.
# Not visible here: a whole host tmpfs the sandbox may write, mounted with a size cap
# (outside gVisor it looks like a fresh one); fs-host-markers plants files for that.
VIRTUAL = {"proc", "sysfs", "devpts", "cgroup", "cgroup2", "mqueue"}
DEVICE_NODES = {"/null", "/zero", "/full", "/random", "/urandom", "/tty"}
ENGINE_FILES = {"/etc/hosts", "/etc/hostname", "/etc/resolv.conf"}
IMAGE_FS = {"9p", "overlay"}


def unescape(path):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def parse():
    mounts = []
    for line in _read("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        f, r = left.split(), right.split()
        mounts.append(
            {
                "id": f[0],
                "parent": f[1],
                "dev": f[2],
                "root": unescape(f[3]),
                "at": unescape(f[4]),
                "opts": f[5].split(","),
                "fs": r[0],
                "super": r[2].split(",") if len(r) > 2 else [],
            }
        )
    return mounts


def walk(top):
    # (path, lstat) of everything under top on top's filesystem (capped).
    dev = _os.lstat(top).st_dev
    count = 0
    for dirpath, dirnames, filenames in _os.walk(top):
        keep = []
        for name in dirnames + filenames:
            path = _os.path.join(dirpath, name)
            try:
                st = _os.lstat(path)
            except OSError:
                continue
            if st.st_dev != dev:
                continue
            if name in dirnames:
                keep.append(name)
            count += 1
            yield path, st
        dirnames[:] = keep
        if count > 20000:
            return


def writable(at, st):
    if _os.access(at, _os.W_OK) and (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        return at
    if not stat.S_ISDIR(st.st_mode):
        return None
    for path, sub in walk(at):
        if stat.S_ISDIR(sub.st_mode) or stat.S_ISREG(sub.st_mode):
            if _os.access(path, _os.W_OK):
                return path
    return None


def size_cap(m):
    for o in m["super"]:
        if o.startswith("size="):
            return int(re.match(r"[0-9]*", o[5:]).group(0) or 0)
    return 0


def census():
    mounts = parse()
    children, ids = {}, {m["id"] for m in mounts}
    for m in mounts:
        children.setdefault(m["parent"], []).append(m)

    def top(m):  # the last mount stacked on m's mount point
        while True:
            stacked = [c for c in children.get(m["id"], []) if c["at"] == m["at"]]
            if not stacked:
                return m
            m = stacked[-1]

    bottoms = [m for m in mounts if m["at"] == "/" and m["parent"] not in ids]
    if len(bottoms) != 1:
        return False, "no single root mount among %d lines" % len(mounts)
    root = top(bottoms[0])

    def resolve(path):  # the mount a lookup of path ends on
        cur, parts = root, [p for p in path.split("/") if p]
        for i in range(1, len(parts) + 1):
            here = [c for c in children.get(cur["id"], []) if c["at"] == "/" + "/".join(parts[:i])]
            if here:
                cur = top(here[-1])
        return cur

    visible = [m for m in mounts if resolve(m["at"]) is m]
    points = {m["at"] for m in visible}
    bad, kinds = [], {}
    for m in visible:
        at, fs = m["at"], m["fs"]
        try:
            st = _os.lstat(at)
        except OSError as e:
            bad.append("%s: %s %s, not inspectable (%s)" % (at, fs, m["root"], _err(e)))
            continue
        ro = "ro" in m["opts"] or "ro" in m["super"]
        kind = None
        if m is root:
            if fs in IMAGE_FS or m["root"] != "/":
                kind = "image root"
            else:
                bad.append("/: a whole %s filesystem as the root" % fs)
                continue
        elif fs in VIRTUAL:
            kind = fs
        elif fs == "devtmpfs":
            if m["root"] in DEVICE_NODES and stat.S_ISCHR(st.st_mode):
                kind = "device node"
            else:
                bad.append("%s: the host's devtmpfs (%s)" % (at, m["root"]))
                continue
        elif fs == "tmpfs" or (fs == "dev" and at == "/dev"):
            if m["root"] != "/" and not any(x["dev"] == m["dev"] and x is not m for x in mounts):
                bad.append("%s: part of a tmpfs from outside (%s)" % (at, m["root"]))
                continue
            spot = None if ro else writable(at, st)
            if spot is not None and size_cap(m) <= 0:
                bad.append("%s: writable tmpfs without a size cap (%s)" % (at, spot))
                continue
            if spot is None and m["root"] == "/" and stat.S_ISDIR(st.st_mode):
                files = sorted(
                    p
                    for p, s in walk(at)
                    if not (
                        stat.S_ISDIR(s.st_mode)
                        or stat.S_ISLNK(s.st_mode)
                        or stat.S_ISCHR(s.st_mode)
                        or p in points
                    )
                )
                if files:
                    bad.append(
                        "%s: tmpfs the sandbox cannot write, holding files (%s)"
                        % (at, ", ".join(files[:3]))
                    )
                    continue
            kind = "tmpfs"
        elif m["dev"] == root["dev"] and (
            root["root"] == "/" or (m["root"] + "/").startswith(root["root"] + "/")
        ):
            kind = "image root"
        elif (
            at in ENGINE_FILES
            and stat.S_ISREG(st.st_mode)
            and (
                (fs == "9p" and root["fs"] == "9p")
                or re.search(
                    r"/containers/[0-9a-f]{64}/%s$" % re.escape(at.rsplit("/", 1)[1]), m["root"]
                )
            )
        ):
            kind = "engine file"
        if kind is None:
            bad.append("%s: %s mount of %s" % (at, fs, m["root"]))
            continue
        kinds.setdefault(kind, []).append(at)
    if bad:
        return False, "mounts not from the image or the sandbox: " + "; ".join(sorted(bad))
    return True, "%d mounts (%d hidden under others): %s" % (
        len(visible),
        len(mounts) - len(visible),
        "; ".join("%s %s" % (k, sorted(v)) for k, v in sorted(kinds.items())),
    )


_report(*census())
