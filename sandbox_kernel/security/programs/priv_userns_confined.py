from ._prelude import _report  # inlined
from ._userns import _in_userns  # inlined
from .children import priv_userns_confined as ATTEMPT  # embedded

CLONE_NEWNS = 0x00020000
res = _in_userns(ATTEMPT, CLONE_NEWNS)
if "clone3" in res:
    _report(True, "clone3 into a user namespace refused: %s" % res["clone3"])
else:
    KEYS = ("mount", "mknod", "chroot", "packet socket", "raw IPv4 socket", "raw IPv6 socket")
    gained = sorted(k for k in KEYS if res.get(k) == "OK")
    tried = all(k in res for k in KEYS)
    _report(
        tried and not gained,
        "inside a new user namespace (uid %s, CapEff %s): %s"
        % (res.get("uid"), res.get("CapEff"), res),
    )
