import subprocess
import sys

from ._prelude import _json, _report  # inlined
from .children import priv_userns_clone_flags as CHILD  # embedded

# Inside such a namespace the kernel's own capability checks pass: only our seccomp
# rules (EPERM for each namespace flag of clone) refuse, so EPERM is expected exactly.
# clone3 itself cannot be filtered by its flags (see docs/security.md, limits).
run = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
res = _json.loads(run.stdout.strip().splitlines()[-1])
if "clone3" in res:
    _report(True, "no user namespace to try from: clone3 %s" % res["clone3"])
else:
    caps = res.pop("CapEff")
    wrong = {k: v for k, v in res.items() if v != "EPERM"}
    _report(
        not wrong,
        "inside a user namespace (CapEff %s), clone() %s"
        % (caps, "not refused by the rule: %s" % wrong if wrong else "refused: %s" % res),
    )
