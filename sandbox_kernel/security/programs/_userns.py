# For attempts made from a user namespace that seccomp cannot refuse (docs/security.md).
# _in_userns(attempt, flags): a raw clone3() into a new user namespace, the way a program
# gets past seccomp (which cannot read clone3's flags; this runsc must allow clone3 for
# threads). The child shares every other namespace with the sandbox, the network one
# included, unless ``flags`` asks for more. The parent maps uid and gid 0 in it to its own
# ids (the child tries too if that fails), then the child runs ``attempt``: source code
# that fills the dict ``res``, with the netlink helpers of _USERNS_NET at hand. Returns
# ``res`` plus "clone3" (an errno name when refused), "uid" and "CapEff" as the child saw
# them.
from ._prelude import _json  # inlined
from .children import userns_child as _USERNS_CHILD  # embedded
from .children import userns_net as _USERNS_NET  # embedded


def _in_userns(attempt, flags=0):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _USERNS_CHILD, str(flags)],
        input=_USERNS_NET + attempt,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = r.stdout.strip().splitlines()
    if not lines:
        return {"error": "no output: " + r.stderr.strip()[-300:]}
    return _json.loads(lines[-1])
