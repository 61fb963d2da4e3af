"""The test backend's stand-in for a sandbox: a host process that runs the real agent and
plays the part of the sandbox's namespaces (tests only; isolates nothing).

``python local_sandbox.py CONFIG -- COMMAND...`` (see ``local_backend.py``). It runs
COMMAND (the bootstrap command the provisioner gave the backend) with pipes of its own,
copies what the agent writes to its stdout unchanged, and passes what arrives on its stdin
to the agent with the sandbox's names translated to this host's:

* a real sandbox has its own /tmp and home folder: paths under ``/tmp`` and the policy's
  home in ``start``, ``prewarm`` and ``put_start`` name folders under CONFIG's ``root``;
* a real sandbox has its own loopback, so every kernel binds the same inside ports
  (15001-15005); here they are mapped to CONFIG's ``ports`` (free ports picked per
  sandbox), in the connection the agent writes for the kernel and in ``OPEN`` frames.

Started by root, it first enters a user namespace of its own in which it is the policy's
uid (``map_uid``; outside, still root): the host's checks refuse an agent or a kernel that
runs as root, and another real uid could not read an interpreter under /root (pyenv).

The agent, the kernel and the bundle are untouched; only those fields change. Code in
the kernel sees the host's files (its /tmp is ``$TMPDIR``, the sandbox's own folder). As a child
subreaper, every process of the sandbox stays a descendant of this one (as in a pid
namespace), so "the whole sandbox" is this process's tree: on SIGTERM (the backend's
``kill``) or when the agent exits, every descendant is killed and reaped, then this
process exits. If it is killed outright, its pipes close and the agent ends the kernel,
as it does when the Jupyter process dies.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from sandbox_kernel.inside import ops
from sandbox_kernel.inside import protocol as p

PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWUSER = 0x10000000
KILLED = 128 + signal.SIGKILL


def descendants(root: int) -> set[int]:
    """Every process below ``root`` (zombies included), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def end_sandbox(deadline: float = 20.0) -> None:
    """Kill every descendant and reap those that come back to us (we are their
    subreaper), until none is left."""
    end = time.monotonic() + deadline
    while True:
        left = descendants(os.getpid())
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        reap()
        if not left or time.monotonic() > end:
            return
        time.sleep(0.01)


def reap() -> dict[int, int]:
    """Reap every child that has exited: pid -> wait status."""
    done: dict[int, int] = {}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        if pid == 0:
            return done
        done[pid] = status


class Translator:
    """Host -> agent: the bundle unchanged, then frames with the sandbox's names mapped."""

    def __init__(
        self, paths: dict[str, str], ports: dict[int, int], kernel_env: dict[str, str]
    ) -> None:
        # Longest prefix first, so /tmp/x never shadows a longer mapped folder.
        self.paths = sorted(paths.items(), key=lambda kv: -len(kv[0]))
        self.ports = ports
        self.kernel_env = kernel_env  # added to the kernel's environment (start, prewarm)
        self.bundle_left: int | None = None  # bytes of the bundle still to pass through
        self.head = b""
        self.decoder = p.FrameDecoder()

    def feed(self, data: bytes) -> bytes:
        if self.bundle_left is None:  # the bundle's 10-digit length first
            self.head += data
            if len(self.head) < 10:
                return b""
            data, self.head = self.head, b""
            self.bundle_left = 10 + int(data[:10])
        out = b""
        if self.bundle_left:
            out, data = data[: self.bundle_left], data[self.bundle_left :]
            self.bundle_left -= len(out)
        for frame in self.decoder.feed(data):
            out += self.frame(frame)
        return out

    def frame(self, frame: p.Frame) -> bytes:
        if frame.type == p.OPEN:
            port = p.decode_port(frame.payload)
            return p.encode_open(frame.stream, self.ports.get(port, port))
        if frame.type == p.CONTROL:
            return p.encode_control(self.control(p.decode_control(frame.payload)))
        return p.encode(frame.type, frame.stream, frame.payload)

    def control(self, msg: dict[str, Any]) -> dict[str, Any]:
        if msg["op"] in (ops.START, ops.PREWARM):
            msg["connection_file"] = self.path(msg["connection_file"])
            # argv[0] is the host's interpreter (the fake runs the host's Python), which
            # may itself live under /tmp when the checkout does.
            argv = msg["argv"]
            msg["argv"] = argv[:1] + [self.path(a) for a in argv[1:]]
            msg["env"] = {k: self.path(v) for k, v in dict(msg.get("env") or {}).items()}
            msg["env"].update(self.kernel_env)
            if msg.get("cwd"):
                msg["cwd"] = self.path(msg["cwd"])
            msg["connection"] = {
                k: self.ports.get(v, v) if k.endswith("_port") else v
                for k, v in msg["connection"].items()
            }
        elif msg["op"] == ops.PUT_START:
            msg["home"] = self.path(msg["home"])
        return msg

    def path(self, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        for inside, here in self.paths:
            if value == inside or value.startswith(inside + "/"):
                return here + value[len(inside) :]
        return value


def pump(src: int, dst: int, translate: Translator | None) -> None:
    """Copy ``src`` to ``dst`` until EOF, then close ``dst``."""
    try:
        while True:
            data = os.read(src, 65536)
            if not data:
                break
            if translate is not None:
                data = translate.feed(data)
            view = memoryview(data)
            while view:
                view = view[os.write(dst, view) :]
    except (OSError, p.ProtocolError):
        pass
    finally:
        os.close(dst)


def enter_user_namespace(libc: ctypes.CDLL, ids: tuple[int, int]) -> None:
    """Become (uid, gid) in a new user namespace, mapped to our own ids outside (the one
    mapping a process may write for itself); must run before any thread starts."""
    outside = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER)")
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{ids[0]} {outside[0]} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{ids[1]} {outside[1]} 1")


def main() -> None:
    config = json.loads(sys.argv[1])
    assert sys.argv[2] == "--", sys.argv
    command = sys.argv[3:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_CHILD_SUBREAPER")
    if config.get("map_uid"):
        enter_user_namespace(libc, tuple(config["map_uid"]))
    translate = Translator(
        config["paths"], {int(k): v for k, v in config["ports"].items()}, config["kernel_env"]
    )
    agent = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=config["root"],
        env=config["env"],
    )
    assert agent.stdin is not None and agent.stdout is not None
    # From here SIGTERM (the backend's kill) and SIGCHLD wait for sigwait below: blocked in
    # this thread and the two started after it, not in the agent (started before).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGCHLD})
    down = threading.Thread(
        target=pump, args=(0, os.dup(agent.stdin.fileno()), translate), daemon=True
    )
    up = threading.Thread(target=pump, args=(agent.stdout.fileno(), os.dup(1), None), daemon=True)
    agent.stdin.close()
    os.close(1)
    down.start()
    up.start()
    code = 0
    while True:
        exited = reap()
        if agent.pid in exited:
            status = exited[agent.pid]
            code = os.waitstatus_to_exitcode(status)
            up.join(timeout=10)  # the agent's last frames (exited) reach the host
            break
        sig = signal.sigwait({signal.SIGTERM, signal.SIGCHLD})
        if sig == signal.SIGTERM:
            code = -signal.SIGKILL
            break
    end_sandbox()
    os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
