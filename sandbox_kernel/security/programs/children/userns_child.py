# The clone3() runner of _in_userns (programs/_userns.py), run as `python -I -S -c` with
# the clone flags as argument and the attempt on stdin.
import ctypes
import errno
import json
import os
import sys

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
    for name, text in (
        ("uid_map", "0 %d 1" % uid),
        ("setgroups", "deny"),
        ("gid_map", "0 %d 1" % gid),
    ):
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
