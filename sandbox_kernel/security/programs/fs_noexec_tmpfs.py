import shutil
import subprocess
import uuid

from ._prelude import _en, _os, _report  # inlined

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
