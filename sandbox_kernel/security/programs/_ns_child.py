# For attempts that only make sense in a single-threaded process (a kernel has threads:
# there unshare(CLONE_NEWUSER) fails with EINVAL regardless). _new_ns_in_child(flags, how)
# tries new namespaces in a fresh single-threaded child, with unshare() or with clone() (a
# fork into new namespaces). The result is "OK" only when a change is observable (a new
# namespace link, capabilities gained, a new cgroup view), else "OK-NOOP": a call that
# succeeds without any effect (gVisor accepts CLONE_NEWCGROUP as a no-op) created no
# namespace, and counts as refused.
from .children import ns_child as _NS_CHILD  # embedded


def _new_ns_in_child(flags, how="unshare"):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _NS_CHILD, str(flags), how],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return (r.stdout.strip().splitlines() or ["no output: " + r.stderr.strip()[-200:]])[-1]
