# Run by priv_userns_clone_flags.py: clone3() into a new user namespace, then clone()
# with each namespace flag from there; prints the results as JSON.
import ctypes
import errno
import json
import os

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
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
    res = {"CapEff": next(line.split()[1] for line in status if line.startswith("CapEff"))}
    for name, flag in FLAGS.items():
        ctypes.set_errno(0)
        c = libc.syscall(ctypes.c_long(CLONE), ctypes.c_long(flag | 17), None, None, None, None)
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
