from ._prelude import _os, _report  # inlined

NEEDS = {}  # filled by render()

PATHS = NEEDS["paths"]
found = [p for p in PATHS if _os.path.lexists(p)]
if found:
    _report(False, "host paths visible inside: %s" % found)
else:
    _report(True, "none of %d host paths exists inside" % len(PATHS))
