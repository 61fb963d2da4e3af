import mmap
import shutil
import struct
import subprocess
import uuid

from ._prelude import _en, _os, _read, _report  # inlined

src = _os.path.realpath(shutil.which("echo") or "/bin/echo")
data = _read(src, "rb")
# The loader is the binary's ELF interpreter (PT_INTERP), e.g. /lib64/ld-linux-x86-64.so.2.
loader = None
(phoff,), (phentsize, phnum) = (
    struct.unpack_from("<Q", data, 32),
    struct.unpack_from("<HH", data, 54),
)
for i in range(phnum):
    entry = phoff + i * phentsize
    if struct.unpack_from("<I", data, entry)[0] == 3:  # PT_INTERP
        (offset,), (size,) = (
            struct.unpack_from("<Q", data, entry + 8),
            struct.unpack_from("<Q", data, entry + 32),
        )
        loader = data[offset : offset + size].rstrip(bytes(1)).decode()
token = "sk-loader-%s" % uuid.uuid4().hex
seen = {}
for d in ("/tmp", _os.path.expanduser("~"), "/dev/shm"):
    if not _os.access(d, _os.W_OK):
        continue
    p = _os.path.join(d, ".sk-loader-%s" % uuid.uuid4().hex)
    with open(p, "wb") as f:
        f.write(data)
    _os.chmod(p, 0o644)
    try:
        if loader:
            r = subprocess.run(
                [loader, p, token],
                capture_output=True,
                text=True,
                timeout=30,
                stdin=subprocess.DEVNULL,
            )
            seen["%s %s" % (loader, d)] = (
                "EXECUTED"
                if token in r.stdout
                else ("refused (%d): %s" % (r.returncode, r.stderr.strip().split(": ")[-1]))
            )
        fd = _os.open(p, _os.O_RDONLY)
        try:
            mmap.mmap(fd, 4096, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_EXEC).close()
            seen["mmap(PROT_EXEC) " + d] = "MAPPED"
        except OSError as e:
            seen["mmap(PROT_EXEC) " + d] = _en(e.errno)
        finally:
            _os.close(fd)
    finally:
        _os.unlink(p)
_report(bool(seen) and not any(v in ("EXECUTED", "MAPPED") for v in seen.values()), seen)
