import shutil
import subprocess
import tempfile

from ._prelude import _err, _os, _report  # inlined

target = tempfile.mkdtemp(prefix=".sk-mnt-", dir="/tmp")
CMDS = [
    ["su", "-c", "id -u", "root"],
    ["sudo", "-n", "id", "-u"],
    ["mount", "-t", "tmpfs", "none", target],
    ["mount", "--bind", "/", target],
]
seen = {}
try:
    for cmd in CMDS:
        name = " ".join(cmd[:2])
        if shutil.which(cmd[0]) is None:
            seen[name] = "absent"
            continue
        try:
            r = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20
            )
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
