from ._prelude import _report  # inlined
from ._userns import _in_userns  # inlined
from .children import net_userns_egress as EGRESS  # embedded

NEEDS = {}  # filled by render()

ATTEMPT = (
    "LAN, LAN6, PORT, LOOP_PORT = %r, %r, %r, %r\n"
    % (NEEDS["addr"], NEEDS["addr6"], NEEDS["port"], NEEDS["loopback_port"])
    + EGRESS
)
res = _in_userns(ATTEMPT)
if "clone3" in res:
    _report(True, "clone3 into a user namespace refused: %s" % res["clone3"])
else:
    reached = sorted(k for k, v in res.items() if v in ("REACHED", "CONNECTED", "REPLY"))
    tried = any(k.startswith("tcp ") for k in res)
    _report(
        tried and not reached,
        "in a new user namespace (uid %s, CapEff %s), "
        "reached %s: %s" % (res.get("uid"), res.get("CapEff"), reached, res),
    )
