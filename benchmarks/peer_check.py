"""What the relay's peer check costs, before and after issue 19 (item 3).

    .venv/bin/python benchmarks/peer_check.py [--hold 0,2000,8000,19000] [--rate 160] [--seconds 5]

Before: for each accepted connection the relay read all of ``/proc/net/tcp`` on its event
loop (the function ``proc_net_tcp_owner`` below is that code). After: one sock_diag
lookup of the connecting socket (``relay/sockdiag.py``), on the peer-check thread, behind
the per-port accept bound (``relay/accept.py``).

For each number of extra listening sockets held by this process (``--hold``: lines added
to the table, as another local user can), prints one JSON object: the cost of one check
each way (median of 50), and the lag of a 20 ms ticker on a loop serving a port that is
flooded with ``--rate`` connections a second for ``--seconds`` (p50, p99, max: what a
kernel's messages on that loop would wait), once with the old check on the loop and once
with the gated acceptor; every connection is refused, as another user's would be. A
benchmark, not a test: nothing is asserted. The machine is shared: read the load average
printed with the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sandbox_kernel.relay import sockdiag  # noqa: E402
from sandbox_kernel.relay.accept import GatedAcceptor, reset  # noqa: E402
from sandbox_kernel.relay.peers import PeerCheck, peer_owner  # noqa: E402


def proc_net_tcp_owner(peer: tuple[str, int], local: tuple[str, int]) -> int | None:
    """The check before issue 19: scan /proc/net/tcp for the connecting socket."""

    def hexaddr(ip: str, port: int) -> str:
        (value,) = struct.unpack("<I", socket.inet_aton(ip))
        return f"{value:08X}:{port:04X}"

    want_local, want_remote = hexaddr(*peer), hexaddr(*local)
    with open("/proc/net/tcp") as f:
        next(f, None)
        for line in f:
            fields = line.split()
            if len(fields) >= 10 and fields[1] == want_local and fields[2] == want_remote:
                return None if int(fields[9]) == 0 else int(fields[7])
    return None


def check_costs(samples: int = 50) -> dict[str, float]:
    with socket.socket() as server, sockdiag.open_socket() as nl:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()):
            conn, peer = server.accept()
            with conn:
                local = conn.getsockname()
                costs: dict[str, list[float]] = {"proc_net_tcp": [], "sock_diag": []}
                for i in range(samples):
                    t = time.perf_counter()
                    proc_net_tcp_owner(peer, local)
                    costs["proc_net_tcp"].append(time.perf_counter() - t)
                    t = time.perf_counter()
                    peer_owner(nl, peer, local, i + 1)
                    costs["sock_diag"].append(time.perf_counter() - t)
    return {f"{k}_ms": round(statistics.median(v) * 1000, 3) for k, v in costs.items()}


FLOOD = """
import socket, sys, time
port, rate, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
sent, begin, pending = 0, time.monotonic(), []
while time.monotonic() - begin < seconds:
    c = socket.socket(); c.setblocking(False); c.connect_ex(("127.0.0.1", port))
    pending.append(c); sent += 1
    if len(pending) > rate:
        pending.pop(0).close()
    time.sleep(max(0.0, begin + sent / rate - time.monotonic()))
"""


class _OldRefuse(asyncio.Protocol):
    """The old path: the check in connection_made, on the loop; refused."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer, local = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
        proc_net_tcp_owner(peer, local)
        transport.abort()  # type: ignore[attr-defined]


def loop_lag(mode: str, rate: int, seconds: float) -> dict[str, float]:
    """Lag of a 20 ms ticker on a loop whose port is flooded (every connection refused)."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    lags: list[float] = []
    stop = threading.Event()
    closer: Callable[[], None]
    tasks: list[asyncio.Task[None]] = []

    async def start() -> None:
        nonlocal closer
        if mode == "before":
            server = await loop.create_server(_OldRefuse, sock=sock)
            closer = server.close
        else:
            check = PeerCheck()
            check.allowed = frozenset()  # refuse every connection, as another user's

            acceptor = GatedAcceptor(sock, lambda c, a: reset(c), what="bench",
                                     log=logging.getLogger("bench"), check=check)  # fmt: skip
            acceptor.start()
            closer = acceptor.close

        async def ticker() -> None:
            while not stop.is_set():
                t = loop.time()
                await asyncio.sleep(0.02)
                lags.append(loop.time() - t - 0.02)

        tasks.append(loop.create_task(ticker()))

    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    # The flood comes from another process (this one's GIL stays the loop's).
    subprocess.run([sys.executable, "-c", FLOOD, str(port), str(rate), str(seconds)], check=True)
    stop.set()
    loop.call_soon_threadsafe(closer)
    time.sleep(0.2)
    loop.call_soon_threadsafe(loop.stop)
    time.sleep(0.1)
    lags.sort()
    return {
        f"{mode}_lag_p50_ms": round(lags[len(lags) // 2] * 1000, 1),
        f"{mode}_lag_p99_ms": round(lags[int(len(lags) * 0.99)] * 1000, 1),
        f"{mode}_lag_max_ms": round(lags[-1] * 1000, 1),
        f"{mode}_ticks": len(lags),  # an idle loop: seconds / 0.02
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hold", default="0,2000,8000,19000")
    parser.add_argument("--rate", type=int, default=160)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held: list[socket.socket] = []
    for target in (int(n) for n in args.hold.split(",")):
        while len(held) < target:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            held.append(s)
        row: dict[str, object] = {"held_sockets": len(held), "load": os.getloadavg()[0]}
        row.update(check_costs())
        for mode in ("before", "after"):
            row.update(loop_lag(mode, args.rate, args.seconds))
        print(json.dumps(row), flush=True)
    for s in held:
        s.close()


if __name__ == "__main__":
    main()
