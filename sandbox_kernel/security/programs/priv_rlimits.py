import resource

from ._prelude import _en, _report  # inlined

seen = {}
for name in ("RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_CORE"):
    which = getattr(resource, name)
    soft, hard = resource.getrlimit(which)
    if hard == resource.RLIM_INFINITY:
        seen[name] = "UNLIMITED"
        continue
    try:
        resource.setrlimit(which, (soft, hard + 1))
        seen[name] = "RAISED"
        resource.setrlimit(which, (soft, hard))
    except ValueError as e:
        seen[name] = "refused (%s)" % e
    except OSError as e:
        seen[name] = "refused (%s)" % _en(e.errno)
_report(all(v.startswith("refused") for v in seen.values()), seen)
