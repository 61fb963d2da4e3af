from ._prelude import _os, _report  # inlined

uids, gids, groups = _os.getresuid(), _os.getresgid(), _os.getgroups()
_report(
    0 not in uids and 0 not in gids and 0 not in groups,
    "uids %s, gids %s, groups %s" % (uids, gids, groups),
)
