import signal
import socket

from ._prelude import _err, _os, _report  # inlined

agent = _os.getppid()
path = _os.environ.get("SANDBOX_KERNEL_AGENT_SOCKET", "/tmp/.sandbox-agent/agent.sock")


def answers():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(path)
        s.sendall(b'{"op": "ports"}\n')
        return b'"ok": true' in s.recv(4096)
    except OSError:
        return False
    finally:
        s.close()


if not answers():
    _report(False, "the agent did not answer before the attempt: nothing to judge")
else:
    results = {}
    for sig in ("SIGSTOP", "SIGTSTP", "SIGTTIN"):
        try:
            _os.kill(agent, getattr(signal, sig))
            results["kill(agent, %s)" % sig] = "OK"
        except OSError as e:
            results["kill(agent, %s)" % sig] = _err(e)
    alive = answers()
    try:
        _os.kill(agent, signal.SIGCONT)  # undo a stop, if one took
    except OSError:
        pass
    _report(
        alive, "%s; the agent %s" % (results, "still answers" if alive else "stopped answering")
    )
