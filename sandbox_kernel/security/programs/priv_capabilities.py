from ._prelude import _os, _pids, _read, _report  # inlined

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
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if "CapEff" not in fields or "Uid" not in fields:
        continue
    seen += 1
    uid = int(fields["Uid"].split()[0])
    allowed = 0 if uid == me else AGENT
    sets = {k: int(fields[k].strip(), 16) for k in KEYS if k in fields}
    held = [
        "%s=%x" % (k, v)
        for k, v in sorted(sets.items())
        if v & ~allowed or (k in ("CapInh", "CapAmb") and v)
    ]
    if held:
        bad["%s (uid %d)" % (pid, uid)] = held
if bad:
    _report(False, "capabilities held: %s" % bad)
else:
    _report(
        seen > 0, "%d processes: the kernel's uid holds none, others at most the agent's" % seen
    )
