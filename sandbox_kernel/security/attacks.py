"""The sandbox's attack catalogue: each :class:`Attack` is Python code run inside a kernel.

Contract of ``Attack.code``
    Runs as one cell in a sandboxed kernel (any Python >= 3.8, standard library only)
    and prints exactly one final line: a JSON object ``{"blocked": bool, "detail": str}``.
    ``blocked`` is decided from what the attempt observed (an exception with the
    expected errno, an empty listing, a value different from the host's), never
    hard-coded. Each cell cleans up what it creates and changes no state that a later
    attack depends on, so one kernel can run the whole catalogue.

``needs``
    Names of parameters only the host can supply (a marker path it planted, the
    address of a live test host, the host's hostname...). Attacks with no ``needs``
    are self-contained: ``sandbox-kernel doctor`` runs those as they are.

Templating (:func:`render`)
    A parameter appears in the code as ``{name}``, exactly, for a name listed in
    ``needs``; it is replaced by the Python literal (``repr``) of the value. Every other
    brace is left alone, so code may use dict and set literals and f-strings freely
    (unlike ``str.format``). Values must be literals: str, bytes, int, float, bool,
    None, and lists, tuples and dicts of those.

Network safety: attacks send traffic only to loopback or to addresses the caller
passes in (its own test hosts and this machine's own addresses). Reachability of
foreign addresses is checked with a UDP ``connect()``, which is a route lookup and
sends no packet.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass

PROTECTS = ("host filesystem", "network", "privileges", "information")


@dataclass(frozen=True)
class Attack:
    """One attempt to get out of the sandbox, and how to tell whether it was stopped."""

    id: str
    protects: str  # one of PROTECTS
    title: str
    code: str
    needs: tuple[str, ...] = ()


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _literal(name: str, value: object) -> str:
    text = repr(value)
    try:
        same = ast.literal_eval(text) == value
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        same = False
    if not same:
        raise TypeError(f"parameter {name!r}: {type(value).__name__} is not a Python literal")
    return text


def render(attack: Attack, **params: object) -> str:
    """``attack.code`` with each ``{name}`` of ``attack.needs`` replaced by ``repr(value)``.

    Raises ``TypeError`` when a needed parameter is missing, an unknown one is given,
    or a value is not a plain literal. Braces that do not name a need are kept as is.
    """
    missing = [n for n in attack.needs if n not in params]
    unknown = sorted(set(params) - set(attack.needs))
    if missing or unknown:
        raise TypeError(
            f"attack {attack.id!r} needs {list(attack.needs)}; "
            f"missing {missing}, unexpected {unknown}"
        )
    literals = {name: _literal(name, params[name]) for name in attack.needs}

    def sub(match: re.Match[str]) -> str:
        return literals.get(match.group(1), match.group(0))

    return _PLACEHOLDER.sub(sub, attack.code)


def by_id(attack_id: str) -> Attack:
    for attack in ATTACKS:
        if attack.id == attack_id:
            return attack
    raise KeyError(attack_id)


# --------------------------------------------------------------------------------------
# Shared preludes (prepended to the bodies below; names start with "_" to stay out of
# the way of the user's namespace in a kernel).

_PRELUDE = '''\
import errno as _errno
import json as _json
import os as _os


def _report(blocked, detail):
    print(_json.dumps({"blocked": bool(blocked), "detail": str(detail)}))


def _en(code):
    """An errno value as its name ("EPERM"); None (a timeout) as "timeout"."""
    if code is None:
        return "timeout"
    return _errno.errorcode.get(code, str(code))


def _err(exc):
    """What an exception says, shortly: errno name if it has one, else its type."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return _en(exc.errno)
    return type(exc).__name__


def _pids():
    return sorted((int(p) for p in _os.listdir("/proc") if p.isdigit()))


def _read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()
'''

_SYSCALLS = '''\
import ctypes as _ctypes
import platform as _platform

_libc = _ctypes.CDLL(None, use_errno=True)
_NR = {
    "x86_64": {
        "ptrace": 101, "pivot_root": 155, "chroot": 161, "acct": 163, "mount": 165,
        "umount2": 166, "swapon": 167, "reboot": 169, "sethostname": 170, "iopl": 172,
        "ioperm": 173, "init_module": 175, "delete_module": 176, "kexec_load": 246,
        "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272,
        "perf_event_open": 298, "name_to_handle_at": 303, "open_by_handle_at": 304,
        "setns": 308, "process_vm_readv": 310, "finit_module": 313, "bpf": 321,
        "userfaultfd": 323, "io_uring_setup": 425, "open_tree": 428, "move_mount": 429,
        "fsopen": 430, "fsmount": 432, "fspick": 433,
    },
    "aarch64": {
        "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "acct": 89,
        "unshare": 97, "kexec_load": 104, "init_module": 105, "delete_module": 106,
        "ptrace": 117, "reboot": 142, "sethostname": 161, "add_key": 217,
        "request_key": 218, "keyctl": 219, "swapon": 224, "perf_event_open": 241,
        "name_to_handle_at": 264, "open_by_handle_at": 265, "setns": 268,
        "process_vm_readv": 270, "finit_module": 273, "bpf": 280, "userfaultfd": 282,
        "io_uring_setup": 425, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsmount": 432, "fspick": 433,
    },
}.get(_platform.machine().lower().replace("amd64", "x86_64").replace("arm64", "aarch64"), {})


def _arg(a):
    return _ctypes.c_long(a) if isinstance(a, int) else a


def _sys(name, *args):
    """A raw syscall: its errno name ("EPERM"), or "OK" when it succeeded (then the
    return value is in _sys.last); None when the syscall is unknown on this machine."""
    nr = _NR.get(name)
    if nr is None:
        return None
    fn = _libc.syscall
    fn.restype = _ctypes.c_long
    _ctypes.set_errno(0)
    rv = fn(_ctypes.c_long(nr), *[_arg(a) for a in args])
    _sys.last = rv
    return _en(_ctypes.get_errno()) if rv == -1 else "OK"


def _call(name, *args):
    """A libc function, like _sys."""
    fn = getattr(_libc, name)
    _ctypes.set_errno(0)
    rv = fn(*[_arg(a) for a in args])
    _call.last = rv
    return _en(_ctypes.get_errno()) if rv == -1 else "OK"


def _judge(results, expected):
    """results: {what: errno name or "OK" or None}. Blocked when every attempt that
    could be made failed with an expected errno."""
    tried = {k: v for k, v in results.items() if v is not None}
    ok = bool(tried) and all(v in expected for v in tried.values())
    return ok, ", ".join("%s: %s" % (k, v) for k, v in sorted(tried.items())) or "nothing tried"
'''

# A child script for attempts that only make sense in a single-threaded process
# (a kernel has threads: there unshare(CLONE_NEWUSER) fails with EINVAL regardless).
# A call that succeeds without any observable effect (gVisor accepts CLONE_NEWCGROUP
# as a no-op) created no namespace: "OK-NOOP" counts as refused.
_NS_CHILD = """\
# New namespaces are tried in a fresh single-threaded child, with unshare() or with
# clone() (a fork into new namespaces). The result is "OK" only when a change is observable
# (a new namespace link, capabilities gained, a new cgroup view), else "OK-NOOP".
_NS_CHILD = '''
import ast, ctypes, errno, os, platform, sys

def view():
    out = {}
    # Not "user": gVisor shows each process its own user-namespace inode; a new user
    # namespace shows as capabilities gained in it.
    for name in ("mnt", "net", "pid", "pid_for_children", "uts", "ipc", "cgroup"):
        try:
            out[name] = os.readlink("/proc/self/ns/" + name)
        except OSError:
            out[name] = None
    for line in open("/proc/self/status").read().splitlines():
        if line.startswith("Cap"):
            out[line.split(":")[0]] = line.split(":")[1].strip()
    try:
        out["cgroups"] = open("/proc/self/cgroup").read()
    except OSError:
        pass
    return out

def errname():
    return errno.errorcode.get(ctypes.get_errno(), "?")

flags, how = int(sys.argv[1]), sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
before = view()
if how == "unshare":
    if libc.unshare(flags) == -1:
        print(errname())
        sys.exit()
    after = view()
else:
    nr = {"x86_64": 56, "amd64": 56, "aarch64": 220, "arm64": 220}.get(platform.machine().lower())
    if nr is None:
        print("ENOSYS")  # clone() number unknown here: nothing was tried
        sys.exit()
    r, w = os.pipe()
    SIGCHLD = 17
    pid = libc.syscall(ctypes.c_long(nr), ctypes.c_long(flags | SIGCHLD), None, None, None, None)
    if pid == 0:  # the clone: report what it sees, and leave at once
        try:
            seen = view()
        except Exception as e:
            seen = {"error in the clone": repr(e)}
        os.write(w, repr(seen).encode())
        os._exit(0)
    if pid == -1:
        print(errname())
        sys.exit()
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.waitpid(pid, 0)
    after = ast.literal_eval(data.decode())
changed = sorted(k for k in after if after[k] != before.get(k))
if changed:
    print("OK (changed: %s; CapEff %s)" % (", ".join(changed), after.get("CapEff")))
else:
    print("OK-NOOP")
'''


def _new_ns_in_child(flags, how="unshare"):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _NS_CHILD, str(flags), how],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    return (r.stdout.strip().splitlines() or ["no output: " + r.stderr.strip()[-200:]])[-1]
"""

# For attempts made from a user namespace that seccomp cannot refuse (docs/security.md).
_USERNS = """\
# A raw clone3() into a new user namespace, the way a program gets past seccomp (which
# cannot read clone3's flags; this runsc must allow clone3 for threads). The child shares
# every other namespace with the sandbox, the network one included, unless asked. The
# parent maps uid and gid 0 in it to its own ids (the child tries too if that fails), then
# the child runs an attempt: source code that fills the dict ``res``, with the netlink
# helpers of _USERNS_NET at hand. Returns ``res`` plus "clone3" (an errno name when
# refused), "uid" and "CapEff" as the child saw them.
_USERNS_CHILD = '''
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
flags, body = int(sys.argv[1]), sys.stdin.read()
uid, gid = os.getuid(), os.getgid()
args = (ctypes.c_uint64 * 11)()  # struct clone_args, 88 bytes
args[0] = 0x10000000 | flags  # CLONE_NEWUSER
args[4] = 17  # exit_signal: SIGCHLD
go_r, go_w = os.pipe()
out_r, out_w = os.pipe()
pid = libc.syscall(ctypes.c_long(435), ctypes.byref(args), ctypes.c_long(88))  # clone3

def idmaps(where):
    done = {}
    for name, text in (("uid_map", "0 %d 1" % uid), ("setgroups", "deny"),
                       ("gid_map", "0 %d 1" % gid)):
        try:
            with open("/proc/%s/%s" % (where, name), "w") as f:
                f.write(text)
            done[name] = "OK"
        except OSError as e:
            done[name] = errno.errorcode.get(e.errno, str(e.errno))
    return done

if pid == 0:
    os.close(go_w)
    os.close(out_r)
    res = {"maps by parent": os.read(go_r, 4096).decode()}
    if os.getuid() != 0:
        res["maps by child"] = idmaps("self")
    res["uid"] = os.getuid()
    for line in open("/proc/self/status"):
        if line.startswith("CapEff:"):
            res["CapEff"] = line.split()[1]
    try:
        exec(body, {"res": res})
    except Exception as e:
        res["error"] = repr(e)
    os.write(out_w, json.dumps(res).encode())
    os._exit(0)
if pid < 0:
    print(json.dumps({"clone3": errno.errorcode.get(ctypes.get_errno(), "?")}))
    sys.exit()
os.close(go_r)
os.close(out_w)
os.write(go_w, json.dumps(idmaps(pid)).encode())
os.close(go_w)
data = b""
while True:
    chunk = os.read(out_r, 65536)
    if not chunk:
        break
    data += chunk
os.waitpid(pid, 0)
print(data.decode() or json.dumps({"error": "the child reported nothing"}))
'''

# Netlink (NETLINK_ROUTE) requests on "lo", for attempts run in the child above.
_USERNS_NET = '''
import errno, socket, struct
LO = socket.if_nametoindex("lo")

def nl(mtype, flags, body):
    # One request with an ACK asked for: "OK", or the errno name the kernel answered.
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    s.settimeout(5)
    try:
        s.send(struct.pack("IHHII", 16 + len(body), mtype, flags | 0x1 | 0x4, 1, 0) + body)
        reply = s.recv(65536)
    except OSError as e:
        return "no answer (%s)" % errno.errorcode.get(e.errno, type(e).__name__)
    finally:
        s.close()
    if len(reply) < 20 or struct.unpack("H", reply[4:6])[0] != 2:  # NLMSG_ERROR
        return "unexpected reply"
    code = struct.unpack("i", reply[16:20])[0]
    return "OK" if code == 0 else errno.errorcode.get(-code, str(code))

def rta(kind, data):
    return struct.pack("HH", 4 + len(data), kind) + data + bytes(-len(data) % 4)

def _family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET

def _ifaddr(addr, plen):
    raw = socket.inet_pton(_family(addr), addr)
    return struct.pack("BBBBI", _family(addr), plen, 0, 0, LO) + rta(1, raw) + rta(2, raw)

def _rtmsg(net, plen):  # main table, static, link scope, unicast, dev lo
    head = struct.pack("BBBBBBBBI", _family(net), plen, 0, 0, 254, 4, 253, 1, 0)
    return head + rta(1, socket.inet_pton(_family(net), net)) + rta(4, struct.pack("I", LO))

def add_addr(addr, plen):
    return nl(20, 0x400 | 0x200, _ifaddr(addr, plen))  # RTM_NEWADDR, CREATE | EXCL

def del_addr(addr, plen):
    return nl(21, 0, _ifaddr(addr, plen))

def add_route(net, plen):
    return nl(24, 0x400 | 0x200, _rtmsg(net, plen))  # RTM_NEWROUTE

def del_route(net, plen):
    return nl(25, 0, _rtmsg(net, plen))

def bindable(addr):
    # Whether addr is now an address of this network namespace.
    s = socket.socket(_family(addr), socket.SOCK_DGRAM)
    try:
        s.bind((addr, 0))
        return True
    except OSError:
        return False
    finally:
        s.close()
'''


def _in_userns(attempt, flags=0):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _USERNS_CHILD, str(flags)],
        input=_USERNS_NET + attempt, capture_output=True, text=True, timeout=120,
    )
    lines = r.stdout.strip().splitlines()
    if not lines:
        return {"error": "no output: " + r.stderr.strip()[-300:]}
    return _json.loads(lines[-1])
"""


def _attack(
    id: str,
    protects: str,
    title: str,
    body: str,
    needs: tuple[str, ...] = (),
    syscalls: bool = False,
    helpers: str = "",
) -> Attack:
    assert protects in PROTECTS, protects
    prelude = _PRELUDE + (_SYSCALLS if syscalls else "") + helpers
    code = prelude + "\n\n" + textwrap.dedent(body).strip() + "\n"
    return Attack(id=id, protects=protects, title=title, code=code, needs=needs)


# --------------------------------------------------------------------------------------
# Host filesystem

_FS = [
    _attack(
        "fs-host-markers",
        "host filesystem",
        "files the host planted (in /tmp, home, the checkout, /dev/shm...) are not visible",
        """
        PATHS = {paths}
        found = [p for p in PATHS if _os.path.lexists(p)]
        if found:
            _report(False, "host paths visible inside: %s" % found)
        else:
            _report(True, "none of %d host paths exists inside" % len(PATHS))
        """,
        needs=("paths",),
    ),
    _attack(
        "fs-proc-root",
        "host filesystem",
        "/proc/<pid>/root of every visible process is the sandbox's own root (or is denied)",
        """
        import uuid

        marker = "/tmp/.sk-root-%s" % uuid.uuid4().hex
        open(marker, "w").close()
        own = sorted(_os.listdir("/"))
        same, denied, other = [], [], []
        try:
            for pid in [str(p) for p in _pids()] + ["self", "thread-self"]:
                root = "/proc/%s/root" % pid
                try:
                    listing = sorted(_os.listdir(root + "/"))
                except FileNotFoundError:
                    continue  # the process ended meanwhile
                except PermissionError:
                    denied.append(pid)
                    continue
                if listing == own and _os.path.exists(root + marker):
                    same.append(pid)
                else:
                    other.append("%s: %s" % (pid, listing[:12]))
        finally:
            _os.unlink(marker)
        detail = "own root via %s; denied for %s" % (same, denied)
        if other:
            detail = "a different root is reachable: %s; %s" % (other, detail)
        _report(not other and bool(same or denied), detail)
        """,
    ),
    _attack(
        "fs-mountinfo",
        "host filesystem",
        "the mount table names no host paths (no /var/lib/docker, overlay dirs, /work, /root)",
        """
        FORBIDDEN = (
            "/var/lib/docker", "/var/lib/containerd", "/run/containerd", "/var/run/docker",
            "/run/docker", "/run/runsc", "/var/run/runsc", "lowerdir=", "upperdir=",
            "overlay2", "/work", "/root", "/home/runner", "/Users/",
        )
        text = ""
        for path in ("/proc/self/mountinfo", "/proc/self/mounts", "/proc/1/mountinfo"):
            try:
                text += _read(path)
            except OSError:
                pass
        hits = sorted({f for f in FORBIDDEN if f in text})
        lines = [l for l in text.splitlines() if any(f in l for f in hits)]
        if not text:
            _report(False, "could not read the mount table")
        elif hits:
            _report(False, "host paths in the mount table: %s, e.g. %s" % (hits, lines[:3]))
        else:
            _report(True, "%d mount lines, none names a host path" % len(text.splitlines()))
        """,
    ),
    _attack(
        "fs-mount-census",
        "host filesystem",
        "every mount is the image root, a virtual filesystem, a tmpfs of the sandbox's own "
        "(size-capped where it is writable) or a file the container engine generated",
        """
        import re
        import stat

        # Judged from /proc/self/mountinfo, mounts hidden under later ones left out. Allowed:
        # the image root (9p under gVisor, overlay under runc, else a folder of the host that
        # is not a whole filesystem) and parts of it bound elsewhere; virtual filesystems;
        # device nodes bound from devtmpfs (bwrap); tmpfs, whole or part of one mounted here,
        # size-capped if the sandbox can write into it, holding no files if it cannot; and
        # Docker's /etc/hosts, /etc/hostname, /etc/resolv.conf. Anything else is reported: a
        # host folder (bound read-only or not, anywhere), part of a host tmpfs, the host's /dev.
        # Not visible here: a whole host tmpfs the sandbox may write, mounted with a size cap
        # (outside gVisor it looks like a fresh one); fs-host-markers plants files for that.
        VIRTUAL = {"proc", "sysfs", "devpts", "cgroup", "cgroup2", "mqueue"}
        DEVICE_NODES = {"/null", "/zero", "/full", "/random", "/urandom", "/tty"}
        ENGINE_FILES = {"/etc/hosts", "/etc/hostname", "/etc/resolv.conf"}
        IMAGE_FS = {"9p", "overlay"}


        def unescape(path):
            return re.sub(r"\\\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


        def parse():
            mounts = []
            for line in _read("/proc/self/mountinfo").splitlines():
                left, _, right = line.partition(" - ")
                f, r = left.split(), right.split()
                mounts.append({
                    "id": f[0], "parent": f[1], "dev": f[2], "root": unescape(f[3]),
                    "at": unescape(f[4]), "opts": f[5].split(","), "fs": r[0],
                    "super": r[2].split(",") if len(r) > 2 else [],
                })
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
                    here = [c for c in children.get(cur["id"], [])
                            if c["at"] == "/" + "/".join(parts[:i])]
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
                elif fs == "tmpfs":
                    if m["root"] != "/" and not any(
                        x["dev"] == m["dev"] and x is not m for x in mounts
                    ):
                        bad.append("%s: part of a tmpfs from outside (%s)" % (at, m["root"]))
                        continue
                    spot = None if ro else writable(at, st)
                    if spot is not None and size_cap(m) <= 0:
                        bad.append("%s: writable tmpfs without a size cap (%s)" % (at, spot))
                        continue
                    if spot is None and m["root"] == "/" and stat.S_ISDIR(st.st_mode):
                        files = sorted(p for p, s in walk(at) if not (
                            stat.S_ISDIR(s.st_mode) or stat.S_ISLNK(s.st_mode)
                            or stat.S_ISCHR(s.st_mode) or p in points))
                        if files:
                            bad.append("%s: tmpfs the sandbox cannot write, holding files (%s)"
                                       % (at, ", ".join(files[:3])))
                            continue
                    kind = "tmpfs"
                elif m["dev"] == root["dev"] and (
                    root["root"] == "/" or (m["root"] + "/").startswith(root["root"] + "/")
                ):
                    kind = "image root"
                elif at in ENGINE_FILES and stat.S_ISREG(st.st_mode) and (
                    (fs == "9p" and root["fs"] == "9p") or re.search(
                        r"/containers/[0-9a-f]{64}/%s$" % re.escape(at.rsplit("/", 1)[1]),
                        m["root"])
                ):
                    kind = "engine file"
                if kind is None:
                    bad.append("%s: %s mount of %s" % (at, fs, m["root"]))
                    continue
                kinds.setdefault(kind, []).append(at)
            if bad:
                return False, "mounts not from the image or the sandbox: " + "; ".join(sorted(bad))
            return True, "%d mounts (%d hidden under others): %s" % (
                len(visible), len(mounts) - len(visible),
                "; ".join("%s %s" % (k, sorted(v)) for k, v in sorted(kinds.items())))


        _report(*census())
        """,
    ),
    _attack(
        "fs-host-sockets",
        "host filesystem",
        "no host unix socket is reachable (Docker, containerd, D-Bus, systemd...)",
        """
        import socket
        import stat

        KNOWN = [
            "/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock",
            "/run/containerd/containerd.sock.ttrpc", "/run/docker/containerd/containerd.sock",
            "/run/dbus/system_bus_socket", "/var/run/dbus/system_bus_socket",
            "/run/systemd/private", "/run/systemd/journal/socket", "/run/systemd/notify",
            "/run/podman/podman.sock", "/var/run/crio/crio.sock", "/run/snapd.socket",
            "/run/user/0/bus", "/run/user/1000/bus", "/var/run/runsc",
        ]
        present = [p for p in KNOWN if _os.path.lexists(p)]
        connected = []
        for p in KNOWN:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(2)
            try:
                s.connect(p)
                connected.append(p)
            except OSError:
                pass
            finally:
                s.close()
        found = []
        for top in ("/run", "/var", "/tmp", "/home", "/etc", "/opt", "/srv", "/mnt", "/media",
                    "/dev", "/root"):
            for dirpath, dirnames, filenames in _os.walk(top):
                for name in filenames:
                    path = _os.path.join(dirpath, name)
                    try:
                        if stat.S_ISSOCK(_os.lstat(path).st_mode):
                            found.append(path)
                    except OSError:
                        pass
        # The one socket a sandbox has on purpose: its own agent's (sandboxed.expose/export),
        # in the sandbox's tmpfs. Excluded only if it answers as that agent does.
        own = _os.environ.get("SANDBOX_KERNEL_AGENT_SOCKET", "/tmp/.sandbox-kernel/agent.sock")
        if own in found:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            try:
                s.connect(own)
                s.sendall(b'{"op": "ports"}\\n')
                answer = s.makefile().readline()
                if '"ports"' in answer and '"ok": true' in answer:
                    found.remove(own)
            except OSError:
                pass
            finally:
                s.close()
        bad = sorted(set(present + connected + found))
        if bad:
            _report(False, "unix sockets inside: %s (connected: %s)" % (bad, connected))
        else:
            _report(True, "no unix socket file but the agent's own; %d known host sockets absent"
                    % len(KNOWN))
        """,
    ),
    _attack(
        "fs-symlink-escape",
        "host filesystem",
        "symlinks from /tmp to /etc/passwd and ../../ resolve inside the sandbox",
        """
        import uuid

        d = "/tmp/.sk-link-%s" % uuid.uuid4().hex
        _os.mkdir(d)
        links = {
            "abs": "/etc/passwd",
            "rel": "../" * 12 + "etc/passwd",
            "up": "../" * 12,
        }
        try:
            for name, target in links.items():
                _os.symlink(target, _os.path.join(d, name))
            own = _read("/etc/passwd")
            me = "sandbox:x:%d:" % _os.getuid()
            seen = {}
            for name in ("abs", "rel"):
                content = _read(_os.path.join(d, name))
                has_me = any(line.startswith(me) for line in content.splitlines())
                seen[name] = "own passwd" if content == own and has_me else "OTHER FILE"
            up = _os.path.join(d, "up")
            a, b = _os.stat(up), _os.stat("/")
            same = (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
            same = same and sorted(_os.listdir(up)) == sorted(_os.listdir("/"))
            seen["up"] = "own root" if same else "OTHER DIRECTORY"
        finally:
            for name in links:
                try:
                    _os.unlink(_os.path.join(d, name))
                except OSError:
                    pass
            _os.rmdir(d)
        _report(all(v.startswith("own") for v in seen.values()), seen)
        """,
    ),
    _attack(
        "fs-dotdot-traversal",
        "host filesystem",
        "'..' traversal from /tmp and the home folder stops at the sandbox's root",
        """
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
        """,
    ),
    _attack(
        "fs-write-outside-tmpfs",
        "host filesystem",
        "nothing outside the tmpfs mounts is writable (/, /usr, /etc, /var, /opt, site-packages)",
        """
        import sysconfig
        import uuid

        tag = uuid.uuid4().hex
        paths = sysconfig.get_paths()
        DIRS = ["/", "/usr", "/usr/bin", "/usr/lib", "/usr/local", "/usr/local/bin", "/etc",
                "/var", "/var/tmp", "/var/lib", "/var/cache", "/opt", "/root", "/run", "/srv",
                "/mnt", "/bin", "/sbin", "/boot", "/media", paths["purelib"], paths["stdlib"]]
        EXPECTED = {"EACCES", "EROFS", "EPERM"}
        results = {}
        for d in DIRS:
            p = _os.path.join(d, ".sk-write-%s" % tag)
            try:
                fd = _os.open(p, _os.O_WRONLY | _os.O_CREAT | _os.O_EXCL, 0o644)
            except OSError as e:
                if e.errno not in (_errno.ENOENT, _errno.ENOTDIR):
                    results["create in " + d] = _en(e.errno)
            else:
                _os.close(fd)
                _os.unlink(p)
                results["create in " + d] = "WRITTEN"
            try:
                _os.mkdir(p + "-dir")
            except OSError as e:
                if e.errno not in (_errno.ENOENT, _errno.ENOTDIR):
                    results["mkdir in " + d] = _en(e.errno)
            else:
                _os.rmdir(p + "-dir")
                results["mkdir in " + d] = "CREATED"
        for p in ("/etc/passwd", "/etc/hosts", "/etc/resolv.conf", "/etc/hostname",
                  _os.path.realpath("/usr/bin/python3"), "/bin/sh"):
            if not _os.path.exists(p):
                continue
            try:
                fd = _os.open(p, _os.O_WRONLY | _os.O_APPEND)  # writes nothing
            except OSError as e:
                results["open " + p] = _en(e.errno)
            else:
                _os.close(fd)
                results["open " + p] = "WRITABLE"
            try:
                _os.utime(p, None)
                results["utime " + p] = "CHANGED"
            except OSError as e:
                results["utime " + p] = _en(e.errno)
        bad = {k: v for k, v in results.items() if v not in EXPECTED}
        if bad:
            _report(False, "not refused as expected: %s" % bad)
        else:
            _report(bool(results), "%d writes refused (%s)" % (
                len(results), sorted(set(results.values()))))
        """,
    ),
    _attack(
        "fs-tmpfs-caps",
        "host filesystem",
        "/tmp and the home folder are size-capped tmpfs mounts (no more than configured)",
        """
        TMP_CAP = {tmp_bytes}
        HOME_CAP = {home_bytes}
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
        """,
        needs=("tmp_bytes", "home_bytes"),
    ),
    _attack(
        "fs-noexec-tmpfs",
        "host filesystem",
        "binaries copied into the writable mounts (/tmp, home, /dev/shm) cannot be executed "
        "(execve)",
        """
        import shutil
        import subprocess
        import uuid

        src = shutil.which("true") or "/bin/true"
        seen = {}
        for d in ("/tmp", _os.path.expanduser("~"), "/dev/shm"):
            if not _os.access(d, _os.W_OK):
                continue
            p = _os.path.join(d, ".sk-exec-%s" % uuid.uuid4().hex)
            shutil.copy(src, p)
            _os.chmod(p, 0o755)
            try:
                subprocess.run([p], timeout=30, stdin=subprocess.DEVNULL)
                seen[d] = "EXECUTED"
            except OSError as e:
                seen[d] = _en(e.errno)
            finally:
                _os.unlink(p)
        _report(bool(seen) and all(v in ("EACCES", "EPERM") for v in seen.values()), seen)
        """,
    ),
    _attack(
        "fs-noexec-loader",
        "host filesystem",
        "a binary copied into the writable mounts (mode 0644) cannot be run through the "
        "dynamic loader, nor mapped executable (noexec covers mmap, not only execve)",
        """
        import mmap
        import shutil
        import struct
        import subprocess
        import uuid

        src = _os.path.realpath(shutil.which("echo") or "/bin/echo")
        data = _read(src, "rb")
        # The loader is the binary's ELF interpreter (PT_INTERP), e.g. /lib64/ld-linux-x86-64.so.2.
        loader = None
        (phoff,), (phentsize, phnum) = struct.unpack_from("<Q", data, 32), struct.unpack_from(
            "<HH", data, 54)
        for i in range(phnum):
            entry = phoff + i * phentsize
            if struct.unpack_from("<I", data, entry)[0] == 3:  # PT_INTERP
                (offset,), (size,) = struct.unpack_from("<Q", data, entry + 8), struct.unpack_from(
                    "<Q", data, entry + 32)
                loader = data[offset:offset + size].rstrip(bytes(1)).decode()
        token = "sk-loader-%s" % uuid.uuid4().hex
        seen = {}
        for d in ("/tmp", _os.path.expanduser("~"), "/dev/shm"):
            if not _os.access(d, _os.W_OK):
                continue
            p = _os.path.join(d, ".sk-loader-%s" % uuid.uuid4().hex)
            with open(p, "wb") as f:
                f.write(data)
            _os.chmod(p, 0o644)
            try:
                if loader:
                    r = subprocess.run([loader, p, token], capture_output=True, text=True,
                                       timeout=30, stdin=subprocess.DEVNULL)
                    seen["%s %s" % (loader, d)] = "EXECUTED" if token in r.stdout else (
                        "refused (%d): %s" % (r.returncode, r.stderr.strip().split(": ")[-1]))
                fd = _os.open(p, _os.O_RDONLY)
                try:
                    mmap.mmap(fd, 4096, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_EXEC).close()
                    seen["mmap(PROT_EXEC) " + d] = "MAPPED"
                except OSError as e:
                    seen["mmap(PROT_EXEC) " + d] = _en(e.errno)
                finally:
                    _os.close(fd)
            finally:
                _os.unlink(p)
        _report(bool(seen) and not any(v in ("EXECUTED", "MAPPED") for v in seen.values()), seen)
        """,
    ),
    _attack(
        "fs-noexec-memory",
        "host filesystem",
        "native code that never touches a noexec mount cannot be run: an ELF in a memfd "
        "(execve), code in anonymous executable memory",
        """
        import mmap
        import platform
        import shutil
        import subprocess
        import sys
        import uuid

        token = "sk-memfd-%s" % uuid.uuid4().hex
        seen = {}
        try:
            fd = _os.memfd_create("sk-probe")
        except (OSError, AttributeError) as e:
            seen["memfd_create"] = _err(e)
        else:
            try:
                data = _read(_os.path.realpath(shutil.which("echo") or "/bin/echo"), "rb")
                while data:
                    data = data[_os.write(fd, data):]
                r = subprocess.run(["/proc/%d/fd/%d" % (_os.getpid(), fd), token], pass_fds=(fd,),
                                   capture_output=True, text=True, timeout=30,
                                   stdin=subprocess.DEVNULL)
                seen["execve of a memfd"] = "EXECUTED" if token in r.stdout else (
                    "refused (%d)" % r.returncode)
            except OSError as e:
                seen["execve of a memfd"] = _en(e.errno)
            finally:
                _os.close(fd)
        # "mov $42, %eax; ret" (x86_64), "mov w0, #42; ret" (aarch64), run in a child so that
        # a refusal (SIGSEGV) cannot take the kernel down.
        CODE = {"x86_64": "b82a000000c3", "aarch64": "40058052c0035fd6"}.get(platform.machine())
        if CODE:
            child = (
                "import ctypes, mmap\\n"
                "m = mmap.mmap(-1, 4096, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,"
                " mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\\n"
                "m.write(bytes.fromhex(%r))\\n"
                "buf = ctypes.c_char.from_buffer(m)\\n"
                "print(ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(buf))())\\n" % CODE
            )
            r = subprocess.run([sys.executable, "-I", "-S", "-c", child], capture_output=True,
                               text=True, timeout=30, stdin=subprocess.DEVNULL)
            seen["anonymous executable memory"] = "EXECUTED" if r.stdout.strip() == "42" else (
                "refused (%d): %s" % (r.returncode, r.stderr.strip()[-60:]))
        _report(bool(seen) and "EXECUTED" not in seen.values(), seen)
        """,
    ),
    _attack(
        "fs-proc-links",
        "host filesystem",
        "no process's open files, working directory or executable (/proc/<pid>/fd, cwd, exe) "
        "lead to a file outside the sandbox's own tree",
        """
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
            for link in ["cwd", "exe"] + fds:
                path = "/proc/%s/%s" % (pid, link)
                try:
                    target = _os.readlink(path)
                    via = _os.stat(path)  # the object itself, through the magic link
                except OSError:
                    continue  # gone, or not ours to look at
                if not target.startswith("/") or target.startswith("/memfd:"):
                    continue  # pipes, sockets, anonymous inodes, memfds: no path to follow
                checked += 1
                name = target[:-len(" (deleted)")] if target.endswith(" (deleted)") else target
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
        """,
    ),
]

# --------------------------------------------------------------------------------------
# Network

_NET = [
    _attack(
        "net-only-loopback",
        "network",
        "the only network interface is 'lo', with no route off it",
        """
        import socket

        names = [n for _, n in socket.if_nameindex()]
        dev = [l.split(":")[0].strip() for l in _read("/proc/net/dev").splitlines()[2:] if ":" in l]
        routes = [l.split()[0] for l in _read("/proc/net/route").splitlines()[1:] if l.strip()]
        try:
            v6 = _read("/proc/net/ipv6_route").splitlines()
            routes += [l.split()[-1] for l in v6 if l.strip()]
        except OSError:
            pass
        ok = names == ["lo"] and dev == ["lo"] and all(r == "lo" for r in routes)
        routes = sorted(set(routes))
        _report(ok, "interfaces %s, /proc/net/dev %s, route devices %s" % (names, dev, routes))
        """,
    ),
    _attack(
        "net-raw-socket",
        "network",
        "raw IP sockets cannot be opened (no spoofing, no sniffing)",
        """
        import socket

        TRIES = [
            ("inet/raw/icmp", socket.AF_INET, socket.IPPROTO_ICMP),
            ("inet/raw/raw", socket.AF_INET, socket.IPPROTO_RAW),
            ("inet/raw/tcp", socket.AF_INET, socket.IPPROTO_TCP),
            ("inet6/raw/icmpv6", socket.AF_INET6, socket.IPPROTO_ICMPV6),
        ]
        seen = {}
        for name, family, proto in TRIES:
            try:
                socket.socket(family, socket.SOCK_RAW, proto).close()
                seen[name] = "OPENED"
            except OSError as e:
                seen[name] = _en(e.errno)
        _report(all(v in ("EPERM", "EACCES") for v in seen.values()), seen)
        """,
    ),
    _attack(
        "net-packet-socket",
        "network",
        "packet (link-layer) sockets cannot be opened",
        """
        import socket

        seen = {}
        for name, kind in (("packet/raw", socket.SOCK_RAW), ("packet/dgram", socket.SOCK_DGRAM)):
            try:
                socket.socket(socket.AF_PACKET, kind, socket.htons(0x0003)).close()
                seen[name] = "OPENED"
            except OSError as e:
                seen[name] = _en(e.errno)
        refused = ("EPERM", "EACCES", "EAFNOSUPPORT", "ENOTSUP", "EOPNOTSUPP")  # ENOTSUP: firejail
        _report(all(v in refused for v in seen.values()), seen)
        """,
    ),
    _attack(
        "net-interface-config",
        "network",
        "no interface can be created or configured (TUN device, netlink RTM_NEWADDR)",
        """
        import fcntl
        import socket
        import struct

        seen = {}
        try:
            fd = _os.open("/dev/net/tun", _os.O_RDWR)
        except OSError as e:
            seen["open /dev/net/tun"] = _en(e.errno)
        else:
            try:
                ifr = struct.pack("16sH", b"sk-probe0", 0x0001 | 0x1000)  # IFF_TUN | IFF_NO_PI
                fcntl.ioctl(fd, 0x400454CA, ifr)  # TUNSETIFF
                seen["TUNSETIFF"] = "CREATED"
            except OSError as e:
                seen["TUNSETIFF"] = _en(e.errno)
            finally:
                _os.close(fd)
        try:
            nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
        except OSError as e:
            seen["netlink socket"] = _en(e.errno)
        else:
            with nl:
                nl.settimeout(5)
                attr = struct.pack("HH4s", 8, 2, socket.inet_aton("127.0.0.9"))  # IFA_LOCAL
                ifa = struct.pack("BBBBI", socket.AF_INET, 32, 0, 254, socket.if_nametoindex("lo"))
                flags = 0x1 | 0x4 | 0x400 | 0x200  # REQUEST | ACK | CREATE | EXCL
                body = ifa + attr
                nl.send(struct.pack("IHHII", 16 + len(body), 20, flags, 1, 0) + body)  # RTM_NEWADDR
                try:
                    reply = nl.recv(4096)
                    mtype = struct.unpack("H", reply[4:6])[0]
                    code = struct.unpack("i", reply[16:20])[0] if mtype == 2 else None
                    if code is None:
                        seen["RTM_NEWADDR"] = "reply type %d" % mtype
                    else:
                        seen["RTM_NEWADDR"] = "ADDED" if code == 0 else _en(-code)
                except OSError as e:
                    seen["RTM_NEWADDR"] = "no answer (%s)" % _err(e)
        ok = all(v in ("EPERM", "EACCES", "ENOENT", "EOPNOTSUPP", "ENOTSUP") for v in seen.values())
        _report(ok and bool(seen), seen)
        """,
    ),
    _attack(
        "net-no-route-foreign",
        "network",
        "no route to the metadata service, private ranges, the internet or IPv6 "
        "(route lookup only)",
        """
        import socket

        TARGETS = ["169.254.169.254", "10.0.0.1", "172.16.0.1", "192.168.1.1", "192.0.2.1",
                   "100.64.0.1", "8.8.8.8", "1.1.1.1", "224.0.0.251", "2001:db8::1",
                   "2606:4700:4700::1111", "64:ff9b::808:808", "fd00::1"]
        seen = {}
        for addr in TARGETS:
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            s = socket.socket(family, socket.SOCK_DGRAM)
            try:
                s.connect((addr, 53))  # a route lookup: no packet is sent
                seen[addr] = "ROUTE via %s" % (s.getsockname()[0],)
            except OSError as e:
                seen[addr] = _en(e.errno)
            finally:
                s.close()
        # EADDRNOTAVAIL: no source address for that family at all (host-kernel backends
        # without IPv6 on the sandbox's loopback): no route either.
        ok = all(v in ("ENETUNREACH", "EHOSTUNREACH", "EADDRNOTAVAIL") for v in seen.values())
        _report(ok, seen)
        """,
    ),
    _attack(
        "net-dns-servers-unreachable",
        "network",
        "the nameservers in /etc/resolv.conf cannot be reached (no DNS exfiltration)",
        """
        import socket
        import struct

        servers = []
        try:
            for line in _read("/etc/resolv.conf").splitlines():
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    servers.append(parts[1].split("%")[0])
        except OSError:
            pass
        seen = {}
        for addr in servers:
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.settimeout(2)
            try:
                s.connect((addr, 53))  # route lookup only
                if not (addr.startswith("127.") or addr == "::1"):
                    seen[addr] = "ROUTE via %s" % (s.getsockname()[0],)
                    continue
                # A loopback resolver would be the sandbox's own: ask it (loopback traffic).
                s.send(struct.pack("!HHHHHH", 0x5A5A, 0x0100, 1, 0, 0, 0)
                       + b"\\x07example\\x03com\\x00" + struct.pack("!HH", 1, 1))
                s.recv(512)
                seen[addr] = "ANSWERED"
            except OSError as e:
                seen[addr] = _err(e)
            finally:
                s.close()
        ok = all(v in ("ENETUNREACH", "EHOSTUNREACH", "ECONNREFUSED", "timeout")
                 for v in seen.values())
        _report(ok, seen or "no nameserver configured")
        """,
    ),
    _attack(
        "net-lan-host",
        "network",
        "a live LAN host cannot be reached over TCP, UDP, IPv4, IPv6 or IPv4-mapped IPv6",
        """
        import socket

        ADDRS = [{addr}, {addr6}, "::ffff:" + {addr}]
        PORT = {port}
        seen = {}
        for addr in ADDRS:
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            t = socket.socket(family, socket.SOCK_STREAM)
            t.settimeout(3)
            try:
                t.connect((addr, PORT))
                seen["tcp " + addr] = "CONNECTED"
            except OSError as e:
                seen["tcp " + addr] = _err(e)
            finally:
                t.close()
            u = socket.socket(family, socket.SOCK_DGRAM)
            u.settimeout(2)
            try:
                u.sendto(b"sk-probe", (addr, PORT))
                u.recvfrom(64)
                seen["udp " + addr] = "ANSWERED"
            except OSError as e:
                seen["udp " + addr] = _err(e)
            finally:
                u.close()
        _report(not any(v in ("CONNECTED", "ANSWERED") for v in seen.values()), seen)
        """,
        needs=("addr", "addr6", "port"),
    ),
    _attack(
        "net-host-addresses",
        "network",
        "services on the host's own addresses (eth0, docker0...) cannot be reached",
        """
        import socket

        ADDRS = {addrs}
        PORT = {port}
        seen = {}
        for addr in ADDRS:
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM)
            s.settimeout(3)
            try:
                s.connect((addr, PORT))
                seen[addr] = "CONNECTED"
            except OSError as e:
                seen[addr] = _err(e)
            finally:
                s.close()
        _report(bool(seen) and "CONNECTED" not in seen.values(), seen)
        """,
        needs=("addrs", "port"),
    ),
    _attack(
        "net-host-loopback",
        "network",
        "services on the host's loopback (127.0.0.1, ::1, ::ffff:127.0.0.1) cannot be reached",
        """
        import socket

        PORT = {port}
        seen = {}
        for addr in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM)
            s.settimeout(3)
            try:
                s.connect((addr, PORT))
                seen[addr] = "CONNECTED"
            except OSError as e:
                seen[addr] = _err(e)
            finally:
                s.close()
        _report("CONNECTED" not in seen.values(), seen)
        """,
        needs=("port",),
    ),
    _attack(
        "net-dns-query",
        "network",
        "a live DNS server on the LAN answers the host but not the sandbox (UDP and TCP)",
        """
        import random
        import socket
        import struct

        SERVER = {server}
        QNAME = {qname}
        qid = random.randrange(1, 0xFFFF)
        labels = b"".join(bytes([len(p)]) + p.encode() for p in QNAME.split("."))
        query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\\0"
        query += struct.pack("!HH", 1, 1)
        family = socket.AF_INET6 if ":" in SERVER else socket.AF_INET

        def answered(data):
            ok = len(data) >= 12 and struct.unpack("!H", data[:2])[0] == qid
            return ok and data[3] & 0xF == 0

        seen = {}
        u = socket.socket(family, socket.SOCK_DGRAM)
        u.settimeout(2)
        try:
            u.sendto(query, (SERVER, 53))
            seen["udp"] = "ANSWERED" if answered(u.recv(512)) else "garbage"
        except OSError as e:
            seen["udp"] = _err(e)
        finally:
            u.close()
        t = socket.socket(family, socket.SOCK_STREAM)
        t.settimeout(3)
        try:
            t.connect((SERVER, 53))
            t.sendall(struct.pack("!H", len(query)) + query)
            data = b""
            while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
                chunk = t.recv(4096)
                if not chunk:
                    break
                data += chunk
            seen["tcp"] = "ANSWERED" if answered(data[2:]) else "CONNECTED"
        except OSError as e:
            seen["tcp"] = _err(e)
        finally:
            t.close()
        _report(not any(v in ("ANSWERED", "CONNECTED") for v in seen.values()), seen)
        """,
        needs=("server", "qname"),
    ),
    _attack(
        "net-abstract-unix",
        "network",
        "an abstract unix socket of the host cannot be connected to",
        """
        import socket

        NAME = {name}
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
        """,
        needs=("name",),
    ),
    _attack(
        "net-icmp-echo",
        "network",
        "a live LAN host does not answer pings from the sandbox (IPv4 and IPv6)",
        """
        import select
        import socket
        import struct
        import time

        ADDRS = [{addr}, {addr6}]

        def _csum(data):
            if len(data) % 2:
                data += b"\\0"
            s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
            s = (s >> 16) + (s & 0xFFFF)
            s += s >> 16
            return ~s & 0xFFFF

        def _ping(addr):
            v6 = ":" in addr
            family = socket.AF_INET6 if v6 else socket.AF_INET
            proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
            request, reply = (128, 129) if v6 else (8, 0)
            try:
                s, raw = socket.socket(family, socket.SOCK_DGRAM, proto), False
            except OSError as e:
                try:  # unprivileged ping sockets not allowed: try raw (works for root)
                    s, raw = socket.socket(family, socket.SOCK_RAW, proto), True
                except OSError as e2:
                    return "no ICMP socket (%s; raw %s)" % (_err(e), _err(e2))
            with s:
                ident, payload = _os.getpid() & 0xFFFF, b"sk-ping-probe"
                header = struct.pack("!BBHHH", request, 0, 0, ident, 1)
                if not v6:
                    header = struct.pack("!BBHHH", request, 0, _csum(header + payload), ident, 1)
                try:
                    s.sendto(header + payload, (addr, 0))
                except OSError as e:
                    return "send failed: %s" % _err(e)
                deadline = time.monotonic() + 2
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0 or not select.select([s], [], [], left)[0]:
                        return "no reply in 2 s"
                    try:
                        data, src = s.recvfrom(2048)
                    except OSError as e:
                        return "receive failed: %s" % _err(e)
                    if raw and not v6:
                        data = data[(data[0] & 0x0F) * 4:]
                    if data and data[0] == reply and src[0] == addr:
                        return "REPLY"

        seen = {addr: _ping(addr) for addr in ADDRS}
        _report("REPLY" not in seen.values(), seen)
        """,
        needs=("addr", "addr6"),
    ),
    _attack(
        "net-userns-address",
        "network",
        "a user namespace from a raw clone3() (uid 0 mapped, sharing the sandbox's network "
        "namespace) cannot add addresses or routes (netlink RTM_NEWADDR and RTM_NEWROUTE, "
        "IPv4 and IPv6; SIOCSIFADDR, SIOCADDRT)",
        """
        ATTEMPT = r'''
        import ctypes, fcntl

        class rtentry(ctypes.Structure):
            _fields_ = [("pad1", ctypes.c_ulong), ("dst", ctypes.c_char * 16),
                        ("gateway", ctypes.c_char * 16), ("genmask", ctypes.c_char * 16),
                        ("flags", ctypes.c_ushort), ("pad2", ctypes.c_short),
                        ("pad3", ctypes.c_ulong), ("pad4", ctypes.c_void_p),
                        ("metric", ctypes.c_short), ("dev", ctypes.c_char_p),
                        ("mtu", ctypes.c_ulong), ("window", ctypes.c_ulong),
                        ("irtt", ctypes.c_ushort)]

        def sin(addr):
            return struct.pack("HH4s8x", socket.AF_INET, 0, socket.inet_aton(addr))

        def name(e):
            return errno.errorcode.get(e.errno, str(e.errno))

        libc = ctypes.CDLL(None, use_errno=True)
        SIOCADDRT, SIOCDELRT, SIOCSIFADDR = 0x890B, 0x890C, 0x8916
        ADDRS = [("192.168.213.250", 24), ("fd5a:213:9::250", 64)]
        ROUTES = [("10.213.9.0", 24), ("fd5a:213:a::", 64)]
        ALIAS = "192.168.214.250"  # SIOCSIFADDR on an alias: lo keeps 127.0.0.1
        rt = rtentry(dst=sin("10.213.11.0"), genmask=sin("255.255.255.0"), flags=1, dev=b"lo")
        added, routed, undo = [], [], []
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for addr, plen in ADDRS:
                got = add_addr(addr, plen)
                if got == "OK":
                    added.append((addr, plen))
                    got = "ADDED (now bindable: %s)" % bindable(addr)
                res["RTM_NEWADDR " + addr] = got
            for net, plen in ROUTES:
                got = add_route(net, plen)
                if got == "OK":
                    routed.append((net, plen))
                    got = "ADDED"
                res["RTM_NEWROUTE " + net] = got
            try:
                fcntl.ioctl(s, SIOCSIFADDR, struct.pack("16s", b"lo:sk") + sin(ALIAS))
                added.append((ALIAS, 24))
                res["SIOCSIFADDR lo:sk"] = "ADDED (now bindable: %s)" % bindable(ALIAS)
            except OSError as e:
                res["SIOCSIFADDR lo:sk"] = name(e)
            if libc.ioctl(s.fileno(), SIOCADDRT, ctypes.byref(rt)) == 0:
                undo.append(rt)
                res["SIOCADDRT"] = "ADDED"
            else:
                res["SIOCADDRT"] = errno.errorcode.get(ctypes.get_errno(), "?")
        finally:
            for addr, plen in added:
                del_addr(addr, plen)
            for net, plen in routed:
                del_route(net, plen)
            for entry in undo:
                libc.ioctl(s.fileno(), SIOCDELRT, ctypes.byref(entry))
            s.close()
            left = [a for a, _ in added if bindable(a)]
            if left:
                res["cleanup"] = "addresses left behind: %s" % left
        '''
        res = _in_userns(ATTEMPT)
        if "clone3" in res:
            _report(True, "clone3 into a user namespace refused: %s" % res["clone3"])
        else:
            changes = {k: v for k, v in res.items() if k.startswith(("RTM_", "SIOC"))}
            ok = len(changes) == 6 and not any(v.startswith("ADDED") for v in changes.values())
            _report(ok, "in a new user namespace (uid %s, CapEff %s): %s"
                    % (res.get("uid"), res.get("CapEff"), res))
        """,
        helpers=_USERNS,
    ),
    _attack(
        "net-userns-tun",
        "network",
        "a user namespace from a raw clone3() (uid 0 mapped, sharing the sandbox's network "
        "namespace) cannot create a TUN interface (/dev/net/tun or a node of its own, "
        "TUNSETIFF by ioctl and by raw syscall)",
        """
        ATTEMPT = r'''
        import ctypes, fcntl, os

        def name(code):
            return errno.errorcode.get(code, str(code))

        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        NR_IOCTL = {"x86_64": 16, "aarch64": 29}.get(os.uname().machine)
        TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000

        def tunsetiff(path, how):
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError as e:
                return "open: " + name(e.errno)
            try:  # the interface goes away with the last descriptor (not persistent)
                ifr = ctypes.create_string_buffer(
                    struct.pack("16sH", b"sk-tun-probe", IFF_TUN | IFF_NO_PI), 40)
                if how == "ioctl":
                    try:
                        fcntl.ioctl(fd, TUNSETIFF, ifr.raw)
                    except OSError as e:
                        return name(e.errno)
                else:  # the kernel reads 32 bits of the request: junk above them
                    rv = libc.syscall(ctypes.c_long(NR_IOCTL), ctypes.c_long(fd),
                                      ctypes.c_ulong((1 << 32) | TUNSETIFF), ifr)
                    if rv != 0:
                        return name(ctypes.get_errno())
                return "CREATED (interfaces: %s)" % [n for _, n in socket.if_nameindex()]
            finally:
                os.close(fd)

        node = "/tmp/.sk-tun-node-%d" % os.getpid()
        try:
            os.mknod(node, 0o020600, os.makedev(10, 200))
            res["mknod tun node"] = "OK"
        except OSError as e:
            res["mknod tun node"] = name(e.errno)
        try:
            for path in ("/dev/net/tun", node):
                if path == node and res["mknod tun node"] != "OK":
                    continue
                res["TUNSETIFF via " + path] = tunsetiff(path, "ioctl")
                if NR_IOCTL is not None:
                    res["raw TUNSETIFF via " + path] = tunsetiff(path, "raw")
        finally:
            if res["mknod tun node"] == "OK":
                os.unlink(node)
        '''
        res = _in_userns(ATTEMPT)
        if "clone3" in res:
            _report(True, "clone3 into a user namespace refused: %s" % res["clone3"])
        else:
            tries = [v for k, v in res.items() if "TUNSETIFF" in k]
            ok = bool(tries) and not any(v.startswith("CREATED") for v in tries)
            _report(ok, "in a new user namespace (uid %s, CapEff %s): %s"
                    % (res.get("uid"), res.get("CapEff"), res))
        """,
        helpers=_USERNS,
    ),
    _attack(
        "net-userns-egress",
        "network",
        "a user namespace from a raw clone3() (uid 0 mapped, sharing the sandbox's network "
        "namespace) reaches neither a live LAN host nor the host's loopback, after giving "
        "itself an address in the LAN's /24 (TCP, UDP, raw ICMP; IPv4 and IPv6)",
        """
        ATTEMPT = "LAN, LAN6, PORT, LOOP_PORT = %r, %r, %r, %r" % (
            {addr}, {addr6}, {port}, {loopback_port}) + r'''
        import ipaddress, select, time

        def name(e):
            return errno.errorcode.get(e.errno, type(e).__name__) if isinstance(
                e, OSError) and e.errno else type(e).__name__

        def near(addr, plen):  # an address of the same /24 (/64) as addr
            net = ipaddress.ip_network("%s/%d" % (addr, plen), strict=False)
            return str(net.network_address + 250)

        def tcp(dst, port, src):
            s = socket.socket(_family(dst), socket.SOCK_STREAM)
            s.settimeout(3)
            try:
                if src:
                    s.bind((src, 0))
                s.connect((dst, port))
                try:
                    return "REACHED" if s.recv(16) == b"tcp-pong" else "CONNECTED"
                except OSError:
                    return "CONNECTED"
            except OSError as e:
                return name(e)
            finally:
                s.close()

        def udp(dst, src):
            s = socket.socket(_family(dst), socket.SOCK_DGRAM)
            s.settimeout(2)
            try:
                if src:
                    s.bind((src, 0))
                s.sendto(b"sk-probe", (dst, PORT))
                return "REACHED" if s.recv(64) == b"udp-pong" else "answer of a stranger"
            except OSError as e:
                return name(e)
            finally:
                s.close()

        def ping(dst):  # a raw ICMP socket: possible in a user namespace under gVisor
            v6 = ":" in dst
            proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
            try:
                s = socket.socket(_family(dst), socket.SOCK_RAW, proto)
            except OSError as e:
                return "raw socket: " + name(e)
            with s:
                head = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, 0x5ABC, 1)
                data = head + b"sk-ping-probe"
                if not v6:  # the ICMPv4 checksum (the kernel fills ICMPv6's)
                    even = data + bytes(len(data) % 2)
                    total = sum(struct.unpack("!%dH" % (len(even) // 2), even))
                    while total >> 16:
                        total = (total & 0xFFFF) + (total >> 16)
                    data = data[:2] + struct.pack("!H", ~total & 0xFFFF) + data[4:]
                try:
                    s.sendto(data, (dst, 0))
                except OSError as e:
                    return "send: " + name(e)
                deadline = time.monotonic() + 2
                while time.monotonic() < deadline:
                    if not select.select([s], [], [], max(0, deadline - time.monotonic()))[0]:
                        break
                    reply, src = s.recvfrom(2048)
                    if not v6:
                        reply = reply[(reply[0] & 0x0F) * 4:]
                    if src[0] == dst and reply[:1] == bytes([129 if v6 else 0]):
                        return "REPLY"
                return "no reply"

        NEW, NEW6 = near(LAN, 24), near(LAN6, 64)
        added = []
        try:
            for addr, plen in ((NEW, 24), (NEW6, 64)):
                got = add_addr(addr, plen)
                res["add " + addr] = got
                if got == "OK":
                    added.append(addr)
            for dst in (LAN, LAN6, "::ffff:" + LAN):
                for src in [None] + [a for a in added if _family(a) == _family(dst)]:
                    via = " from %s" % src if src else ""
                    res["tcp %s%s" % (dst, via)] = tcp(dst, PORT, src)
                    res["udp %s%s" % (dst, via)] = udp(dst, src)
            for dst in (LAN, LAN6):
                res["ping " + dst] = ping(dst)
            for dst in ("127.0.0.1", "::1"):
                for src in [None] + [a for a in added if _family(a) == _family(dst)]:
                    res["host loopback %s%s" % (dst, " from %s" % src if src else "")] = tcp(
                        dst, LOOP_PORT, src)
        finally:
            for addr, plen in ((NEW, 24), (NEW6, 64)):
                if addr in added:
                    del_addr(addr, plen)
        '''
        res = _in_userns(ATTEMPT)
        if "clone3" in res:
            _report(True, "clone3 into a user namespace refused: %s" % res["clone3"])
        else:
            reached = sorted(k for k, v in res.items() if v in ("REACHED", "CONNECTED", "REPLY"))
            tried = any(k.startswith("tcp ") for k in res)
            _report(tried and not reached, "in a new user namespace (uid %s, CapEff %s), "
                    "reached %s: %s" % (res.get("uid"), res.get("CapEff"), reached, res))
        """,
        needs=("addr", "addr6", "port", "loopback_port"),
        helpers=_USERNS,
    ),
]

# --------------------------------------------------------------------------------------
# Privileges

_PRIV = [
    _attack(
        "priv-ids",
        "privileges",
        "runs with no root uid or gid (real, effective, saved, supplementary)",
        """
        uids, gids, groups = _os.getresuid(), _os.getresgid(), _os.getgroups()
        _report(0 not in uids and 0 not in gids and 0 not in groups,
                "uids %s, gids %s, groups %s" % (uids, gids, groups))
        """,
    ),
    _attack(
        "priv-capabilities",
        "privileges",
        "the kernel's processes hold no capability (effective, permitted, bounding, ambient); "
        "only the agent, under another uid, may hold the few it needs to run the kernel",
        """
        KEYS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
        # CAP_KILL, CAP_SETGID, CAP_SETUID, CAP_SETPCAP: a gVisor sandbox's agent (root of
        # gVisor's kernel) keeps these to start the kernel under an unprivileged uid.
        AGENT = (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8)
        me = _os.getuid()
        bad, seen = {}, 0
        for pid in ["self"] + [str(p) for p in _pids()]:
            try:
                status = _read("/proc/%s/status" % pid)
            except OSError:
                continue
            fields = dict(l.split(":", 1) for l in status.splitlines() if ":" in l)
            if "CapEff" not in fields or "Uid" not in fields:
                continue
            seen += 1
            uid = int(fields["Uid"].split()[0])
            allowed = 0 if uid == me else AGENT
            sets = {k: int(fields[k].strip(), 16) for k in KEYS if k in fields}
            held = ["%s=%x" % (k, v) for k, v in sorted(sets.items())
                    if v & ~allowed or (k in ("CapInh", "CapAmb") and v)]
            if held:
                bad["%s (uid %d)" % (pid, uid)] = held
        if bad:
            _report(False, "capabilities held: %s" % bad)
        else:
            _report(seen > 0, "%d processes: the kernel's uid holds none, others at most the "
                    "agent's" % seen)
        """,
    ),
    _attack(
        "priv-agent-pipe",
        "privileges",
        "the kernel cannot open the agent's descriptors (its pipe to the host) through /proc",
        """
        import stat

        agent = _os.getppid()  # the kernel's parent: the agent
        results = {}
        fds = set(str(fd) for fd in range(16))  # also those a listing might not show
        try:
            fds.update(_os.listdir("/proc/%d/fd" % agent))
        except OSError as e:
            results["list /proc/%d/fd" % agent] = _err(e)
        for fd in sorted(fds, key=int):
            for name, flags in (("write", _os.O_WRONLY), ("read", _os.O_RDONLY)):
                path = "/proc/%d/fd/%s" % (agent, fd)
                try:
                    opened = _os.open(path, flags | _os.O_NONBLOCK)
                except OSError as e:
                    if e.errno != _errno.ENOENT:
                        results["%s %s" % (name, path)] = _err(e)
                    continue
                mode = _os.fstat(opened).st_mode
                _os.close(opened)
                # /dev/null (the agent's 0-2) is open to anyone anyway; a pipe, socket or
                # file is what must stay out of reach.
                results["%s %s" % (name, path)] = "device" if stat.S_ISCHR(mode) else "OK"
        opened = sorted(k for k, v in results.items() if v == "OK")
        _report(not opened, "opened: %s" % opened if opened else results)
        """,
    ),
    _attack(
        "priv-agent-signal",
        "privileges",
        "the kernel cannot stop the agent (which would stall its pipe) with a signal",
        """
        import signal
        import socket

        agent = _os.getppid()
        path = _os.environ.get("SANDBOX_KERNEL_AGENT_SOCKET", "/tmp/.sandbox-agent/agent.sock")

        def answers():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            try:
                s.connect(path)
                s.sendall(b'{"op": "ports"}\\n')
                return b'"ok": true' in s.recv(4096)
            except OSError:
                return False
            finally:
                s.close()

        if not answers():
            _report(False, "the agent did not answer before the attempt: nothing to judge")
        else:
            results = {}
            for sig in ("SIGSTOP", "SIGTSTP", "SIGTTIN"):
                try:
                    _os.kill(agent, getattr(signal, sig))
                    results["kill(agent, %s)" % sig] = "OK"
                except OSError as e:
                    results["kill(agent, %s)" % sig] = _err(e)
            alive = answers()
            try:
                _os.kill(agent, signal.SIGCONT)  # undo a stop, if one took
            except OSError:
                pass
            _report(alive, "%s; the agent %s" % (
                results, "still answers" if alive else "stopped answering"))
        """,
    ),
    _attack(
        "priv-no-new-privs",
        "privileges",
        "no_new_privs is set, in the kernel and in the processes it starts",
        """
        import ctypes
        import subprocess
        import sys

        PR_GET_NO_NEW_PRIVS = 39
        here = ctypes.CDLL(None, use_errno=True).prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
        child = subprocess.run(
            [sys.executable, "-I", "-S", "-c",
             "import ctypes; print(ctypes.CDLL(None).prctl(39, 0, 0, 0, 0))"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        ).stdout.strip()
        _report(here == 1 and child == "1", "kernel: %s, child process: %s" % (here, child))
        """,
    ),
    _attack(
        "priv-setuid-files",
        "privileges",
        "no setuid or setgid file exists in the image",
        """
        import stat

        found, scanned = [], 0
        stack = [t for t in ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/opt", "/etc", "/var")
                 if _os.path.isdir(t) and not _os.path.islink(t)]
        while stack:
            try:
                entries = list(_os.scandir(stack.pop()))
            except OSError:
                continue
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                elif stat.S_ISREG(st.st_mode):
                    scanned += 1
                    if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                        found.append(entry.path)
        if found:
            _report(False, "setuid/setgid files: %s" % sorted(found))
        else:
            _report(scanned > 0, "%d files scanned, none setuid or setgid" % scanned)
        """,
    ),
    _attack(
        "priv-su-mount-commands",
        "privileges",
        "su, sudo and mount cannot be used to become root or mount anything",
        """
        import shutil
        import subprocess
        import tempfile

        target = tempfile.mkdtemp(prefix=".sk-mnt-", dir="/tmp")
        CMDS = [["su", "-c", "id -u", "root"], ["sudo", "-n", "id", "-u"],
                ["mount", "-t", "tmpfs", "none", target], ["mount", "--bind", "/", target]]
        seen = {}
        try:
            for cmd in CMDS:
                name = " ".join(cmd[:2])
                if shutil.which(cmd[0]) is None:
                    seen[name] = "absent"
                    continue
                try:
                    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                                       text=True, timeout=20)
                except subprocess.TimeoutExpired:
                    seen[name] = "timed out (waiting for a password)"
                    continue
                except OSError as e:
                    seen[name] = "cannot run: %s" % _err(e)
                    continue
                if r.returncode == 0:
                    seen[name] = "SUCCEEDED: %s" % r.stdout.strip()[:80]
                else:
                    seen[name] = "failed (%d): %s" % (r.returncode, r.stderr.strip()[:80])
        finally:
            _os.rmdir(target)
        _report(not any(v.startswith("SUCCEEDED") for v in seen.values()), seen)
        """,
    ),
    _attack(
        "priv-mount-syscall",
        "privileges",
        "mount(2) and umount(2) are refused (new tmpfs, bind of /, remount of / read-write), "
        "and so is the new mount API (fsopen, fspick, open_tree, move_mount)",
        """
        import tempfile

        target = tempfile.mkdtemp(prefix=".sk-mnt-", dir="/tmp").encode()
        MS_REMOUNT, MS_BIND, MNT_DETACH = 32, 4096, 2
        AT_FDCWD, OPEN_TREE_CLONE, MOVE_MOUNT_F_EMPTY_PATH = -100, 1, 4
        try:
            results = {
                "mount tmpfs": _call("mount", b"none", target, b"tmpfs", 0, None),
                "bind /": _call("mount", b"/", target, None, MS_BIND, None),
                "remount / rw": _call("mount", None, b"/", None, MS_REMOUNT, None),
                "umount2 a directory": _call("umount2", target, MNT_DETACH),
            }
            # The new mount API: a filesystem context, a clone of /, then attaching one.
            for name, args in (("fsopen tmpfs", (b"tmpfs", 0)), ("fspick /", (AT_FDCWD, b"/", 0)),
                               ("open_tree clone /", (AT_FDCWD, b"/", OPEN_TREE_CLONE))):
                results[name] = _sys(name.split()[0], *args)
                if results[name] == "OK":
                    fd = _sys.last
                    results["move_mount of " + name] = _sys(
                        "move_mount", fd, b"", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)
                    _os.close(fd)
            results["move_mount of nothing"] = _sys(
                "move_mount", -1, b"", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)
        finally:
            for _ in [v for k, v in results.items() if k.startswith("move_mount") and v == "OK"]:
                _call("umount2", target, MNT_DETACH)
            _os.rmdir(target)
        _report(*_judge(results, {"EPERM", "EACCES", "ENOSYS"}))
        """,
        syscalls=True,
    ),
    _attack(
        "priv-user-namespace",
        "privileges",
        "a (single-threaded) process cannot create a user namespace to regain capabilities",
        """
        CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000
        seen = {
            "unshare(CLONE_NEWUSER)": _new_ns_in_child(CLONE_NEWUSER),
            "unshare(CLONE_NEWUSER|CLONE_NEWNS)": _new_ns_in_child(CLONE_NEWUSER | CLONE_NEWNS),
            "clone(CLONE_NEWUSER)": _new_ns_in_child(CLONE_NEWUSER, "clone"),
        }
        ok = all(v in ("EPERM", "EINVAL", "ENOSPC", "EACCES", "ENOSYS", "OK-NOOP")
                 for v in seen.values())
        _report(ok, seen)
        """,
        helpers=_NS_CHILD,
    ),
    _attack(
        "priv-namespaces",
        "privileges",
        "no other namespace (mount, network, pid, uts, ipc, cgroup) can be created",
        """
        FLAGS = {"mnt": 0x00020000, "net": 0x40000000, "pid": 0x20000000, "uts": 0x04000000,
                 "ipc": 0x08000000, "cgroup": 0x02000000}
        seen = {}
        for name, flag in FLAGS.items():
            seen["unshare " + name] = _new_ns_in_child(flag)
            seen["clone " + name] = _new_ns_in_child(flag, "clone")
        ok = all(v in ("EPERM", "EINVAL", "EACCES", "ENOSYS", "OK-NOOP") for v in seen.values())
        _report(ok, seen)
        """,
        helpers=_NS_CHILD,
    ),
    _attack(
        "priv-userns-clone-flags",
        "privileges",
        "even inside a user namespace entered by a raw clone3() (gVisor allows it; it holds "
        "capabilities there), clone() into a new namespace is refused by the seccomp rules",
        """
        import subprocess
        import sys
        import textwrap

        # Inside such a namespace the kernel's own capability checks pass: only our seccomp
        # rules (EPERM for each namespace flag of clone) refuse, so EPERM is expected exactly.
        # clone3 itself cannot be filtered by its flags (see docs/security.md, limits).
        CHILD = r'''
        import ctypes, errno, json, os
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        FLAGS = {"CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000,
                 "CLONE_NEWUTS": 0x04000000, "CLONE_NEWIPC": 0x08000000,
                 "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
                 "CLONE_NEWNET": 0x40000000}
        CLONE = {"x86_64": 56, "aarch64": 220}.get(os.uname().machine)
        def err():
            return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
        if CLONE is None:
            print(json.dumps({"clone3": "not tried on " + os.uname().machine}))
            raise SystemExit
        args = (ctypes.c_uint64 * 11)()
        args[0], args[4] = 0x10000000, 17  # CLONE_NEWUSER; exit signal SIGCHLD
        r, w = os.pipe()
        pid = libc.syscall(ctypes.c_long(435), ctypes.byref(args), ctypes.c_long(88))
        if pid == 0:
            status = open("/proc/self/status").read().splitlines()
            res = {"CapEff": [l.split()[1] for l in status if l.startswith("CapEff")][0]}
            for name, flag in FLAGS.items():
                ctypes.set_errno(0)
                c = libc.syscall(ctypes.c_long(CLONE), ctypes.c_long(flag | 17), None, None,
                                 None, None)
                if c == 0:
                    os._exit(0)
                if c > 0:
                    os.waitpid(c, 0)
                res[name] = "OK" if c > 0 else err()
            os.write(w, json.dumps(res).encode())
            os._exit(0)
        if pid < 0:
            print(json.dumps({"clone3": err()}))
            raise SystemExit
        os.close(w)
        data = b""
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
        os.waitpid(pid, 0)
        print(data.decode() or json.dumps({"clone3": "the namespace's process said nothing"}))
        '''
        run = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD)],
                             capture_output=True, text=True, timeout=60)
        res = _json.loads(run.stdout.strip().splitlines()[-1])
        if "clone3" in res:
            _report(True, "no user namespace to try from: clone3 %s" % res["clone3"])
        else:
            caps = res.pop("CapEff")
            wrong = {k: v for k, v in res.items() if v != "EPERM"}
            _report(not wrong, "inside a user namespace (CapEff %s), clone() %s" % (
                caps, "not refused by the rule: %s" % wrong if wrong else "refused: %s" % res))
        """,
    ),
    _attack(
        "priv-keyring",
        "privileges",
        "no key can be stored in or read from a kernel keyring (keyrings are not namespaced)",
        """
        SESSION, USER, USER_SESSION = -3, -4, -5
        KEYCTL_GET_KEYRING_ID, KEYCTL_READ = 0, 11
        buf = _ctypes.create_string_buffer(4096)
        results = {
            "add_key(user)": _sys("add_key", b"user", b"sk-probe", b"x", 1, SESSION),
            "add_key(keyring)": _sys("add_key", b"keyring", b"sk-probe", None, 0, SESSION),
            "request_key": _sys("request_key", b"user", b"sk-probe", None, 0),
        }
        for name, ring in (("session", SESSION), ("user", USER), ("user-session", USER_SESSION)):
            got = _sys("keyctl", KEYCTL_READ, ring, buf, 4096)
            if got == "OK" and _sys.last == 0:
                got = "EMPTY"  # an empty keyring: nothing to read, nothing leaked
            results["read %s keyring" % name] = got
        ok, detail = _judge(results, {"ENOSYS", "EPERM", "EACCES", "ENOKEY", "EMPTY"})
        ring = _sys("keyctl", KEYCTL_GET_KEYRING_ID, SESSION, 0)
        _report(ok, "%s (session keyring id: %s)" % (detail, _sys.last if ring == "OK" else ring))
        """,
        syscalls=True,
    ),
    _attack(
        "priv-bpf",
        "privileges",
        "bpf(2) is refused (map creation and socket-filter program load)",
        """
        import struct

        attr = _ctypes.create_string_buffer(struct.pack("IIII", 1, 4, 4, 1), 128)  # hash map
        insns = _ctypes.create_string_buffer(
            b"\\xb7" + b"\\0" * 7 + b"\\x95" + b"\\0" * 7, 16)  # r0 = 0; exit
        license = _ctypes.create_string_buffer(b"GPL")
        prog = _ctypes.create_string_buffer(struct.pack(
            "IIQQ", 1, 2, _ctypes.addressof(insns), _ctypes.addressof(license)), 128)
        results = {}
        for name, cmd, arg in (("BPF_MAP_CREATE", 0, attr), ("BPF_PROG_LOAD", 5, prog)):
            results[name] = _sys("bpf", cmd, arg, 128)
            if results[name] == "OK":
                _os.close(_sys.last)
        _report(*_judge(results, {"EPERM", "EACCES", "ENOSYS"}))
        """,
        syscalls=True,
    ),
    _attack(
        "priv-kernel-modules",
        "privileges",
        "kernel modules cannot be loaded or removed",
        """
        results = {
            "init_module": _sys("init_module", None, 0, b""),
            "finit_module": _sys("finit_module", -1, b"", 0),
            "delete_module": _sys("delete_module", b"sk_probe", 0),
        }
        _report(*_judge(results, {"EPERM", "ENOSYS"}))
        """,
        syscalls=True,
    ),
    _attack(
        "priv-ptrace-agent",
        "privileges",
        "PID 1 (the agent) cannot be traced or have its memory read",
        """
        PTRACE_ATTACH, PTRACE_DETACH = 16, 17
        _libc.ptrace.restype = _ctypes.c_long
        results = {"ptrace(ATTACH, 1)": _call("ptrace", PTRACE_ATTACH, 1, None, None)}
        if results["ptrace(ATTACH, 1)"] == "OK":
            _call("ptrace", PTRACE_DETACH, 1, None, None)
        addr = 0x400000
        try:
            addr = int(_read("/proc/1/maps").split("-", 1)[0], 16)
        except (OSError, ValueError):
            pass

        class _Iov(_ctypes.Structure):
            _fields_ = [("base", _ctypes.c_void_p), ("len", _ctypes.c_size_t)]

        buf = _ctypes.create_string_buffer(16)
        local, remote = _Iov(_ctypes.addressof(buf), 16), _Iov(addr, 16)
        results["process_vm_readv(1)"] = _sys(
            "process_vm_readv", 1, _ctypes.byref(local), 1, _ctypes.byref(remote), 1, 0)
        try:
            with open("/proc/1/mem", "rb") as f:
                f.seek(addr)
                f.read(16)
            results["read /proc/1/mem"] = "OK"
        except OSError as e:
            results["read /proc/1/mem"] = _en(e.errno)
        _report(*_judge(results, {"EPERM", "EACCES"}))
        """,
        syscalls=True,
    ),
    _attack(
        "priv-mknod-device",
        "privileges",
        "block and character device nodes cannot be created (mknod needs CAP_MKNOD)",
        """
        import stat
        import uuid

        NODES = [("block 8:0", stat.S_IFBLK, _os.makedev(8, 0)),
                 ("char 1:1 (mem)", stat.S_IFCHR, _os.makedev(1, 1)),
                 ("char 1:3 (null)", stat.S_IFCHR, _os.makedev(1, 3))]
        seen = {}
        for d in ("/tmp", _os.path.expanduser("~"), "/dev/shm"):
            if not _os.access(d, _os.W_OK):
                continue
            for name, kind, dev in NODES:
                p = _os.path.join(d, ".sk-node-%s" % uuid.uuid4().hex)
                try:
                    _os.mknod(p, kind | 0o600, dev)
                except OSError as e:
                    seen["%s in %s" % (name, d)] = _en(e.errno)
                else:
                    _os.unlink(p)
                    seen["%s in %s" % (name, d)] = "CREATED"
        _report(bool(seen) and all(v in ("EPERM", "EACCES") for v in seen.values()), seen)
        """,
    ),
    _attack(
        "priv-device-nodes-inert",
        "privileges",
        "device nodes made with mknod (if it is allowed at all) reach no disk, memory or KVM",
        """
        import stat
        import uuid

        NODES = [("disk 8:0", stat.S_IFBLK, _os.makedev(8, 0)),
                 ("virtio disk 254:0", stat.S_IFBLK, _os.makedev(254, 0)),
                 ("nvme 259:0", stat.S_IFBLK, _os.makedev(259, 0)),
                 ("/dev/mem 1:1", stat.S_IFCHR, _os.makedev(1, 1)),
                 ("/dev/kmem 1:2", stat.S_IFCHR, _os.makedev(1, 2)),
                 ("/dev/port 1:4", stat.S_IFCHR, _os.makedev(1, 4)),
                 ("/dev/kmsg 1:11", stat.S_IFCHR, _os.makedev(1, 11)),
                 ("/dev/kvm 10:232", stat.S_IFCHR, _os.makedev(10, 232)),
                 ("/dev/vhost-net 10:238", stat.S_IFCHR, _os.makedev(10, 238))]
        seen = {}
        for name, kind, dev in NODES:
            p = "/tmp/.sk-node-%s" % uuid.uuid4().hex
            try:
                _os.mknod(p, kind | 0o600, dev)
            except OSError as e:
                seen[name] = "mknod %s" % _en(e.errno)
                continue
            try:
                fd = _os.open(p, _os.O_RDONLY | _os.O_NONBLOCK)
            except OSError as e:
                seen[name] = "open %s" % _en(e.errno)
            else:
                _os.close(fd)
                seen[name] = "OPENED"
            finally:
                _os.unlink(p)
        _report("OPENED" not in seen.values(), seen)
        """,
    ),
    _attack(
        "priv-dev-listing",
        "privileges",
        "/dev holds no disk, memory, KVM or other hardware node",
        """
        import re
        import stat

        FORBIDDEN = re.compile(
            r"^((sd|hd|vd|xvd|nvme|mmcblk|loop|dm-|md|sr|sg|nbd|ram|zram|nst?|st)[0-9]"
            r"|kvm|mem|kmem|port|kmsg|disk|mapper|vhost-.*|vsock|vfio|dri|nvidia.*|watchdog.*"
            r"|msr|cpu|hpet|rtc[0-9]*|uinput|input|snd|fb[0-9]+|tpm.*|sev.*|sgx.*|mcelog"
            r"|loop-control|btrfs-control|userfaultfd|console|tty[0-9]+|ttyS[0-9]+)$")
        bad = []
        for dirpath, dirnames, filenames in _os.walk("/dev"):
            for name in dirnames + filenames:
                path = _os.path.join(dirpath, name)
                try:
                    mode = _os.lstat(path).st_mode
                except OSError:
                    continue
                if FORBIDDEN.match(name) or stat.S_ISBLK(mode):
                    bad.append(path)
        listing = sorted(_os.listdir("/dev"))
        _report(not bad, ("hardware nodes: %s" % bad) if bad else "/dev: %s" % listing)
        """,
    ),
    _attack(
        "priv-kernel-tunables",
        "privileges",
        "kernel controls cannot be opened for writing (sysrq-trigger, core_pattern, /proc/sys...)",
        """
        PATHS = ["/proc/sysrq-trigger", "/proc/sys/kernel/core_pattern",
                 "/proc/sys/kernel/modprobe", "/proc/sys/kernel/hostname",
                 "/proc/sys/kernel/panic", "/proc/sys/vm/drop_caches",
                 "/proc/sys/net/ipv4/ip_forward", "/proc/sys/fs/binfmt_misc/register",
                 "/sys/kernel/uevent_helper", "/sys/power/state", "/sys/kernel/mm/ksm/run"]
        seen = {}
        for p in PATHS:
            try:
                fd = _os.open(p, _os.O_WRONLY)  # opened only, nothing is written
            except OSError as e:
                seen[p] = _en(e.errno)
            else:
                _os.close(fd)
                seen[p] = "WRITABLE"
        _report(all(v in ("EACCES", "EROFS", "EPERM", "ENOENT") for v in seen.values()), seen)
        """,
    ),
    _attack(
        "priv-cgroup-escape",
        "privileges",
        "cgroup controls cannot be changed (release_agent, limits, cgroup.procs, new cgroups)",
        """
        import glob
        import uuid

        NAMES = ("release_agent", "notify_on_release", "cgroup.procs", "tasks",
                 "memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.max",
                 "pids.max", "cpu.cfs_quota_us", "cpu.max", "cpu.shares", "devices.allow",
                 "cgroup.subtree_control")
        seen = {}
        for d in ["/sys/fs/cgroup"] + sorted(glob.glob("/sys/fs/cgroup/*/")):
            d = d.rstrip("/")
            for name in NAMES:
                p = _os.path.join(d, name)
                try:
                    fd = _os.open(p, _os.O_WRONLY)  # opened only, nothing is written
                except OSError as e:
                    if e.errno != _errno.ENOENT or name == "release_agent":
                        seen[p] = _en(e.errno)
                else:
                    _os.close(fd)
                    seen[p] = "WRITABLE"
            child = _os.path.join(d, "sk-probe-%s" % uuid.uuid4().hex[:8])
            try:
                _os.mkdir(child)
            except OSError as e:
                seen["mkdir " + child] = _en(e.errno)
            else:
                _os.rmdir(child)
                seen["mkdir " + child] = "CREATED"
        ok = all(v in ("EACCES", "EROFS", "EPERM", "ENOENT") for v in seen.values())
        _report(ok and bool(seen), seen)
        """,
    ),
    _attack(
        "priv-setuid-root",
        "privileges",
        "setuid(0), setgid(0), setresuid and setgroups([0]) are refused",
        """
        TRIES = [("setuid(0)", lambda: _os.setuid(0)), ("seteuid(0)", lambda: _os.seteuid(0)),
                 ("setresuid(0,0,0)", lambda: _os.setresuid(0, 0, 0)),
                 ("setgid(0)", lambda: _os.setgid(0)), ("setegid(0)", lambda: _os.setegid(0)),
                 ("setgroups([0])", lambda: _os.setgroups([0]))]
        seen = {}
        for name, fn in TRIES:
            try:
                fn()
                seen[name] = "SUCCEEDED"
            except OSError as e:
                seen[name] = _en(e.errno)
        # EINVAL: uid/gid 0 does not exist in the sandbox's user namespace (bubblewrap).
        _report(all(v in ("EPERM", "EACCES", "EINVAL") for v in seen.values()), seen)
        """,
    ),
    _attack(
        "priv-chroot",
        "privileges",
        "chroot(2) is refused",
        """
        results = {"chroot(/)": _call("chroot", b"/")}
        _report(*_judge(results, {"EPERM", "EACCES"}))
        """,
        syscalls=True,
    ),
    _attack(
        "priv-admin-syscalls",
        "privileges",
        "administrative syscalls are refused (reboot, kexec, swapon, pivot_root, setns, "
        "sethostname, clock_settime, acct, iopl)",
        """
        import time

        LINUX_REBOOT_CMD_CAD_OFF = 0  # harmless even if it were allowed
        results = {
            "reboot": _sys("reboot", 0xFEE1DEAD, 672274793, LINUX_REBOOT_CMD_CAD_OFF, None),
            "kexec_load": _sys("kexec_load", 0, 0, None, 0),
            "swapon": _sys("swapon", b"/tmp/.sk-no-swap", 0),
            "pivot_root": _sys("pivot_root", b"/tmp", b"/tmp"),
            "sethostname": _sys("sethostname", b"sk-probe", 8),
            "acct": _sys("acct", None),
            "iopl": _sys("iopl", 3),
            "ioperm": _sys("ioperm", 0x80, 1, 1),
        }
        try:
            fd = _os.open("/proc/self/ns/net", _os.O_RDONLY)
        except OSError:
            pass
        else:
            try:
                results["setns(own net)"] = _sys("setns", fd, 0)
            finally:
                _os.close(fd)
        try:
            time.clock_settime(time.CLOCK_REALTIME, time.clock_gettime(time.CLOCK_REALTIME))
            results["clock_settime"] = "OK"
        except OSError as e:
            results["clock_settime"] = _en(e.errno)
        _report(*_judge(results, {"EPERM", "EACCES"}))
        """,
        syscalls=True,
    ),
    _attack(
        "priv-open-by-handle",
        "privileges",
        "open_by_handle_at (the 'shocker' container escape) is refused",
        """
        import struct

        handle = _ctypes.create_string_buffer(8 + 128)
        _ctypes.memmove(handle, struct.pack("I", 128), 4)
        mount_id = _ctypes.c_int(0)
        got = _sys("name_to_handle_at", -100, b"/", handle, _ctypes.byref(mount_id), 0)
        if got != "OK":  # craft the classic handle: ext4 root inode 2
            _ctypes.memmove(handle, struct.pack("IiQ", 8, 1, 2), 16)
        fd = _os.open("/", _os.O_RDONLY)
        try:
            results = {"open_by_handle_at": _sys("open_by_handle_at", fd, handle, 0)}
            if results["open_by_handle_at"] == "OK":
                _os.close(_sys.last)
        finally:
            _os.close(fd)
        ok, detail = _judge(results, {"EPERM", "EACCES", "ENOSYS", "EOPNOTSUPP", "ENOTSUP"})
        _report(ok, "%s (name_to_handle_at: %s)" % (detail, got))
        """,
        syscalls=True,
    ),
    _attack(
        "priv-rlimits",
        "privileges",
        "hard resource limits (processes, open files, core size) cannot be raised",
        """
        import resource

        seen = {}
        for name in ("RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_CORE"):
            which = getattr(resource, name)
            soft, hard = resource.getrlimit(which)
            if hard == resource.RLIM_INFINITY:
                seen[name] = "UNLIMITED"
                continue
            try:
                resource.setrlimit(which, (soft, hard + 1))
                seen[name] = "RAISED"
                resource.setrlimit(which, (soft, hard))
            except ValueError as e:
                seen[name] = "refused (%s)" % e
            except OSError as e:
                seen[name] = "refused (%s)" % _en(e.errno)
        _report(all(v.startswith("refused") for v in seen.values()), seen)
        """,
    ),
    _attack(
        "priv-kernel-attack-surface",
        "privileges",
        "kernel interfaces with a record of privilege-escalation bugs are unavailable "
        "(perf_event_open, userfaultfd, io_uring)",
        """
        import struct

        perf = _ctypes.create_string_buffer(struct.pack("IIQ", 1, 128, 0), 128)  # sw cpu-clock
        params = _ctypes.create_string_buffer(120)
        results = {}
        for name, args in (("perf_event_open", (perf, 0, -1, -1, 0)), ("userfaultfd", (0,)),
                           ("io_uring_setup", (1, params))):
            results[name] = _sys(name, *args)
            if results[name] == "OK":
                _os.close(_sys.last)
        _report(*_judge(results, {"EPERM", "EACCES", "ENOSYS", "ENODEV", "ENOENT"}))
        """,
        syscalls=True,
    ),
    _attack(
        "priv-userns-confined",
        "privileges",
        "a user namespace entered with a raw clone3() (seccomp cannot inspect its flags), "
        "uid 0 mapped, gains nothing over the sandbox: mount, device nodes, chroot, packet "
        "and raw IP sockets",
        """
        ATTEMPT = r'''
        import ctypes, errno, os, socket
        libc = ctypes.CDLL(None, use_errno=True)
        def name(code):
            return errno.errorcode.get(code, str(code))
        res["mount"] = "OK" if libc.mount(b"none", b"/tmp", b"tmpfs", 0, None) == 0 else name(
            ctypes.get_errno())
        try:
            os.mknod("/tmp/.sk-userns-node", 0o020600, os.makedev(1, 3))
            res["mknod"] = "OK"
            os.unlink("/tmp/.sk-userns-node")
        except OSError as e:
            res["mknod"] = name(e.errno)
        try:
            os.chroot("/tmp")
            res["chroot"] = "OK"
        except OSError as e:
            res["chroot"] = name(e.errno)
        for what, family, proto in (("packet socket", socket.AF_PACKET, 0),
                                    ("raw IPv4 socket", socket.AF_INET, socket.IPPROTO_ICMP),
                                    ("raw IPv6 socket", socket.AF_INET6, socket.IPPROTO_ICMPV6)):
            try:
                socket.socket(family, socket.SOCK_RAW, proto).close()
                res[what] = "OK"
            except OSError as e:
                res[what] = name(e.errno)
        '''
        CLONE_NEWNS = 0x00020000
        res = _in_userns(ATTEMPT, CLONE_NEWNS)
        if "clone3" in res:
            _report(True, "clone3 into a user namespace refused: %s" % res["clone3"])
        else:
            KEYS = ("mount", "mknod", "chroot", "packet socket", "raw IPv4 socket",
                    "raw IPv6 socket")
            gained = sorted(k for k in KEYS if res.get(k) == "OK")
            tried = all(k in res for k in KEYS)
            _report(tried and not gained, "inside a new user namespace (uid %s, CapEff %s): %s"
                    % (res.get("uid"), res.get("CapEff"), res))
        """,
        helpers=_USERNS,
    ),
]

# --------------------------------------------------------------------------------------
# Information

_INFO = [
    _attack(
        "info-hostname",
        "information",
        "the sandbox does not learn the host's hostname",
        """
        import socket

        HOST = {host_hostname}
        seen = {"gethostname": socket.gethostname(), "uname": _os.uname().nodename}
        for p in ("/etc/hostname", "/proc/sys/kernel/hostname"):
            try:
                seen[p] = _read(p).strip()
            except OSError as e:
                seen[p] = _err(e)
        same = [k for k, v in seen.items() if v.lower() == HOST.lower()]
        _report(not same, "host's name seen via %s" % same if same else seen)
        """,
        needs=("host_hostname",),
    ),
    _attack(
        "info-kernel-release",
        "information",
        "the sandbox sees gVisor's kernel, not the host's release and version",
        """
        import platform

        HOST_RELEASE = {host_release}
        seen = {"release": platform.release(), "version": platform.version()}
        try:
            seen["/proc/version"] = _read("/proc/version").strip()
        except OSError as e:
            seen["/proc/version"] = _err(e)
        leaks = [k for k, v in seen.items() if HOST_RELEASE in v]
        _report(not leaks, "host release in %s" % leaks if leaks else seen)
        """,
        needs=("host_release",),
    ),
    _attack(
        "info-host-identifiers",
        "information",
        "the host's boot id, machine id and kernel command line are not visible",
        """
        HOST_VALUES = {"boot_id": {host_boot_id}, "machine_id": {host_machine_id},
                       "cmdline": {host_cmdline}}
        seen = {}
        for p in ("/proc/sys/kernel/random/boot_id", "/etc/machine-id",
                  "/var/lib/dbus/machine-id", "/proc/cmdline"):
            try:
                seen[p] = _read(p).strip()
            except OSError as e:
                seen[p] = "(%s)" % _err(e)
        leaks = ["%s = host %s" % (p, k) for p, v in seen.items()
                 for k, hv in HOST_VALUES.items() if hv and v == hv]
        _report(not leaks, leaks or seen)
        """,
        needs=("host_boot_id", "host_machine_id", "host_cmdline"),
    ),
    _attack(
        "info-host-resolver",
        "information",
        "the sandbox's resolver configuration does not name the host's DNS servers",
        """
        HOST = {host_resolvers}
        try:
            text = _read("/etc/resolv.conf")
        except OSError as e:
            text = ""
            seen = _err(e)
        else:
            seen = " | ".join(l.strip() for l in text.splitlines() if l.strip()) or "(empty)"
        words = text.split()
        leaks = [h for h in HOST if h in words]
        _report(not leaks, "host resolver(s) %s in /etc/resolv.conf" % leaks if leaks else seen)
        """,
        needs=("host_resolvers",),
    ),
    _attack(
        "info-server-env",
        "information",
        "a secret in the Jupyter server's environment does not reach the sandbox",
        """
        # Passed hex-encoded: the cell's own text (kept in IPython's history) must not
        # contain the secret it looks for.
        TOKEN = bytes.fromhex({token_hex}).decode()
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
            for dirpath, dirnames, filenames in _os.walk(top):
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
        _report(not found, "token found in %s" % found if found else
                "token absent from the environment, /proc and %d files" % checked)
        """,
        needs=("token_hex",),
    ),
    _attack(
        "info-process-list",
        "information",
        "only the sandbox's own processes are visible (agent, kernel, its children)",
        """
        HOSTISH = ("dockerd", "containerd", "runsc", "pytest", "systemd", "sshd", "jupyter-",
                   "jupyterhub", "kubelet", "/sbin/init", "docker-proxy", "sandbox_kernel",
                   "sandbox-kernel run")
        procs = {}
        for pid in _pids():
            try:
                cmd = _read("/proc/%d/cmdline" % pid, "rb").replace(b"\\0", b" ").decode(
                    "utf-8", "replace").strip()
                fields = dict(l.split(":", 1) for l in _read("/proc/%d/status" % pid).splitlines()
                              if ":" in l)
                procs[pid] = (int(fields.get("PPid", "-1").strip()), cmd)
            except OSError:
                pass
        me = _os.getpid()

        def ancestors(pid):
            seen = []
            while pid in procs and pid not in seen:
                seen.append(pid)
                pid = procs[pid][0]
            return seen

        strangers = {p: c for p, (pp, c) in procs.items() if p != 1 and me not in ancestors(p)}
        hostish = {p: c for p, (pp, c) in procs.items() if any(h in c for h in HOSTISH)}
        detail = {p: c[:60] for p, (pp, c) in sorted(procs.items())}
        if strangers or hostish:
            _report(False, "foreign processes %s; host-like %s" % (strangers, hostish))
        else:
            _report(1 in procs and me in procs, "%d processes: %s" % (len(procs), detail))
        """,
    ),
    _attack(
        "info-host-pids",
        "information",
        "host processes (the Jupyter server, dockerd) are neither visible nor signalable",
        """
        PIDS = {pids}  # [[host pid, a word of its command line], ...]
        seen = {}
        for pid, word in PIDS:
            try:
                _os.kill(pid, 0)
                state = "exists here"
            except ProcessLookupError:
                seen[pid] = "no such process"
                continue
            except PermissionError:
                state = "exists here (EPERM)"
            try:
                cmd = _read("/proc/%d/cmdline" % pid, "rb").decode("utf-8", "replace")
            except OSError:
                cmd = ""
            if word in cmd:
                seen[pid] = "HOST PROCESS VISIBLE: %s" % cmd.replace(chr(0), " ")[:80]
            else:
                seen[pid] = "%s, but it is a sandbox process: %s" % (state, cmd[:40])
        _report(not any(v.startswith("HOST") for v in seen.values()), seen)
        """,
        needs=("pids",),
    ),
    _attack(
        "info-host-sockets",
        "information",
        "the host's listening sockets and unix sockets do not appear in /proc/net",
        """
        PORT = {port}
        UNIX_NAMES = {unix_names}
        found = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = _read(table).splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                local = fields[1]
                if fields[3] == "0A" and int(local.rsplit(":", 1)[1], 16) == PORT and \\
                        local.split(":")[0].strip("0") == "":
                    found.append("%s: %s" % (table, local))
        try:
            unix = _read("/proc/net/unix")
        except OSError:
            unix = ""
        found += ["/proc/net/unix: %s" % n for n in UNIX_NAMES if n in unix]
        _report(not found, found or "no host socket listed")
        """,
        needs=("port", "unix_names"),
    ),
]

ATTACKS: tuple[Attack, ...] = tuple(_FS + _NET + _PRIV + _INFO)
