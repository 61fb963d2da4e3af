"""A backdoored agent, for the tests that play a sandbox which got hold of the agent's pipe.

Kernel code can no longer reach the agent's pipe or stop the agent (the attacks
``priv-agent-pipe`` and ``priv-agent-signal`` check that on every backend). The host must
still hold whatever such a sandbox could send, so these tests hand the kernel exactly
those abilities: :func:`backdoored_payload` is the real agent plus a thread that serves a
unix socket, :data:`BACKDOOR`, open to every uid in the sandbox, answering

* ``fd``: the agent's end of the host pipe (its original stdout), passed as a descriptor;
* ``stop``: the agent's event loop freezes, so it neither reads nor answers any more.

:data:`KERNEL_PRELUDE` is the kernel-side code that uses it (``pipe``, ``frame``,
``write_all``, ``stop_agent``, ``backdoor``). Everything else is the production agent and
relay. Frames written while the agent runs can interleave with its own (the pipe is
shared): attacks that need whole frames to arrive stop the agent first.
"""

from __future__ import annotations

from sandbox_kernel import bundle

BACKDOOR = "/tmp/.backdoor.sock"

_BACKDOOR_SOURCE = f"""
import array, os, socket, sys, threading, time

AGENTS = []

def arm():
    pipe_out = os.dup(1)  # before main() moves the pipe away from fd 1
    agent_class = sys.modules["sandbox_kernel.inside.agent"].Agent
    init = agent_class.__init__

    def remember(self, *args, **kwargs):
        init(self, *args, **kwargs)
        AGENTS.append(self)

    agent_class.__init__ = remember
    try:
        os.unlink({BACKDOOR!r})
    except OSError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind({BACKDOOR!r})
    os.chmod({BACKDOOR!r}, 0o666)
    srv.listen(4)

    def serve():
        while True:
            conn, _ = srv.accept()
            cmd = conn.recv(16)
            if cmd.startswith(b"fd"):
                rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [pipe_out]))]
                conn.sendmsg([b"ok"], rights)
                conn.close()
            elif cmd.startswith(b"stop"):
                # Freeze the agent's event loop: it neither reads nor writes any more (a
                # SIGSTOP would do the same where it works; PID 1 ignores it on Linux).
                # Answered once the loop is frozen, so the caller needs no pause.
                frozen = threading.Event()

                def freeze():
                    frozen.set()
                    time.sleep(3600)

                AGENTS[0].loop.call_soon_threadsafe(freeze)
                frozen.wait()
                conn.sendall(b"ok")
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
"""

_MAIN_CALL = "sys.modules['sandbox_kernel.inside.agent'].main(**MAIN_KWARGS)"


def backdoored_payload(
    escaped_stdin: bool = True,
    kernel_user: str | None = None,
    kernel_rlimits: tuple[tuple[str, int], ...] = (),
) -> bytes:
    """:func:`sandbox_kernel.bundle.agent_payload` itself, with the backdoor module added to
    its modules and armed before the agent's main (derived from the real payload, so a new
    argument of the agent reaches the backdoored one too)."""
    code = bundle.agent_payload(escaped_stdin, kernel_user, kernel_rlimits)[10:].decode()
    assert code.endswith(bundle._STAGE2) and _MAIN_CALL in bundle._STAGE2
    head = code[: -len(bundle._STAGE2)]
    backdoor = "MODULES.append(%r)\n" % (("sandbox_kernel.agent.backdoor", _BACKDOOR_SOURCE),)
    stage2 = bundle._STAGE2.replace(
        _MAIN_CALL, "sys.modules['sandbox_kernel.agent.backdoor'].arm()\n" + _MAIN_CALL
    )
    out = (head + backdoor + stage2).encode()
    assert b"\x10" not in out
    return b"%010d" % len(out) + out


KERNEL_PRELUDE = f'''
import array as _array, json as _json, os as _os, socket as _socket, struct as _struct

def backdoor(cmd):
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    s.connect({BACKDOOR!r})
    s.sendall(cmd)
    _msg, anc, _flags, _addr = s.recvmsg(16, _socket.CMSG_SPACE(4))
    s.close()
    fds = _array.array("i")
    for _level, _kind, data in anc:
        fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)

def frame(message):
    body = _json.dumps(message).encode()
    return _struct.pack(">BII", 6, 0, len(body)) + body

def write_all(data):
    view = memoryview(data)
    while view:
        view = view[_os.write(pipe, view[:65536]):]

def stop_agent():
    """Stop the agent (the backdoor answers once it is still): from then on our writes are
    the only ones on the pipe."""
    backdoor(b"stop")

pipe = backdoor(b"fd")[0]
# The agent made its end non-blocking; a writer that waits is the stronger attacker.
_os.set_blocking(pipe, True)
'''
