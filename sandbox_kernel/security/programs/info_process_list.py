from ._prelude import _os, _pids, _read, _report  # inlined

HOSTISH = (
    "dockerd",
    "containerd",
    "runsc",
    "pytest",
    "systemd",
    "sshd",
    "jupyter-",
    "jupyterhub",
    "kubelet",
    "/sbin/init",
    "docker-proxy",
    "sandbox_kernel",
    "sandbox-kernel run",
)
procs = {}
for pid in _pids():
    try:
        cmd = (
            _read("/proc/%d/cmdline" % pid, "rb")
            .replace(b"\0", b" ")
            .decode("utf-8", "replace")
            .strip()
        )
        fields = dict(
            line.split(":", 1)
            for line in _read("/proc/%d/status" % pid).splitlines()
            if ":" in line
        )
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
