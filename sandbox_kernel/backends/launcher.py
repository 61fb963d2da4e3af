"""Start a sandbox tool in its cgroups, with its rlimits, as its host uid: without a
``preexec_fn``.

The Jupyter process has threads (the relay, the OOM watcher, workers), and Python
documents ``subprocess``'s ``preexec_fn`` as unsafe there: the child runs Python code
between fork and exec and can deadlock on a lock another thread held. So the child
execs at once into a fresh, single-threaded interpreter (:func:`launcher_argv`), which
joins the cgroups, sets the rlimits, drops to the sandbox's uid and gid (no supplementary
groups), then execs the tool. The backends that spawn tools (``pipe.py``, ``runsc.py``)
call it; Popen itself gets only plain options.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterable

_LAUNCHER = """\
import json, os, resource, sys
spec = json.loads(sys.argv[1])
for procs in spec["cgroups"]:  # each controller's cgroup.procs: the tool and all it forks
    with open(procs, "w") as f:
        f.write("0")
for which, value in spec["rlimits"]:
    resource.setrlimit(which, (value, value))
if spec["ids"] is not None:
    uid, gid = spec["ids"]
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
# execve, not execvpe: the tool's path is resolved already, and execvpe would import
# (warnings) from a stdlib the dropped uid may not read (a Python under /root).
os.execve(spec["argv"][0], spec["argv"], os.environ)
"""


def launcher_argv(
    argv: list[str],
    *,
    cgroup_procs: Iterable[str] = (),
    rlimits: Iterable[tuple[int, int]] = (),
    ids: tuple[int, int] | None = None,
    python: str = sys.executable,
) -> list[str]:
    """The command that runs ``argv`` after joining ``cgroup_procs`` (paths of
    ``cgroup.procs`` files), setting ``rlimits`` ((RLIMIT_*, value) pairs, soft = hard)
    and, with ``ids``, becoming that (uid, gid)."""
    tool = shutil.which(argv[0]) or argv[0]
    spec = {
        "argv": [tool, *argv[1:]],
        "cgroups": list(cgroup_procs),
        "rlimits": [list(r) for r in rlimits],
        "ids": list(ids) if ids is not None else None,
    }
    return [python, "-I", "-S", "-c", _LAUNCHER, json.dumps(spec)]
