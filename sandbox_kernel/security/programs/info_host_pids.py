from ._prelude import _os, _read, _report  # inlined

NEEDS = {}  # filled by render()

PIDS = NEEDS["pids"]  # [[host pid, a word of its command line], ...]
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
