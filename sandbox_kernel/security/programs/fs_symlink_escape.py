import uuid

from ._prelude import _os, _read, _report  # inlined

d = "/tmp/.sk-link-%s" % uuid.uuid4().hex
_os.mkdir(d)
links = {
    "abs": "/etc/passwd",
    "rel": "../" * 12 + "etc/passwd",
    "up": "../" * 12,
}
try:
    for name, target in links.items():
        _os.symlink(target, _os.path.join(d, name))
    own = _read("/etc/passwd")
    me = "sandbox:x:%d:" % _os.getuid()
    seen = {}
    for name in ("abs", "rel"):
        content = _read(_os.path.join(d, name))
        has_me = any(line.startswith(me) for line in content.splitlines())
        seen[name] = "own passwd" if content == own and has_me else "OTHER FILE"
    up = _os.path.join(d, "up")
    a, b = _os.stat(up), _os.stat("/")
    same = (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    same = same and sorted(_os.listdir(up)) == sorted(_os.listdir("/"))
    seen["up"] = "own root" if same else "OTHER DIRECTORY"
finally:
    for name in links:
        try:
            _os.unlink(_os.path.join(d, name))
        except OSError:
            pass
    _os.rmdir(d)
_report(all(v.startswith("own") for v in seen.values()), seen)
