from ._prelude import _report  # inlined
from ._userns import _in_userns  # inlined
from .children import net_userns_tun as ATTEMPT  # embedded

res = _in_userns(ATTEMPT)
if "clone3" in res:
    _report(True, "clone3 into a user namespace refused: %s" % res["clone3"])
else:
    tries = [v for k, v in res.items() if "TUNSETIFF" in k]
    ok = bool(tries) and not any(v.startswith("CREATED") for v in tries)
    _report(
        ok,
        "in a new user namespace (uid %s, CapEff %s): %s"
        % (res.get("uid"), res.get("CapEff"), res),
    )
