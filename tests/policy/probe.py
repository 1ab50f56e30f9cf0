"""Servers and probes for the kernel policy test (run with ``ip netns exec``).

``serve``: TCP and UDP echo on ports 80 and 81 (all addresses), until killed.
``probe '<json [[addr, port, proto], ...]>' timeout [udp_port_base]``: tries
every target in parallel, prints a JSON list of booleans (TCP: the handshake
completed; UDP: the echo of this probe's own nonce came back from the target).
With ``udp_port_base``, the UDP probe of target i is sent from source port
``udp_port_base + i``: the caller hands out ports so that no probe repeats an
earlier probe's 5-tuple. (An ephemeral port is random: one equal to an earlier
probe's port met that flow's conntrack entry, ``ct state established`` let a
now-denied probe through, and a late echo to it counted for the wrong probe;
seen as one wrong UDP cell in a loaded run.)
``agent``: ``serve`` plus a prober that stays up (the lab's policy matrix, where a
Python start per probe round would cost more than the probes): each stdin line
``{"targets": [[addr, port, proto], ...], "timeout": t}`` is answered by one line,
the JSON list of booleans, all targets tried in parallel. UDP probes take their
source ports from a counter of the agent's own (10000-32767, below the kernel's
ephemeral range that TCP uses), so no probe of one run repeats an earlier 5-tuple;
its TCP probes close with a RST, so conntrack forgets them after 10 s, not 120 s.
``hold timeout``: one UDP socket per destination, kept across requests (same
5-tuple = same conntrack entry); each stdin line ``addr port`` sends a ping on
it and prints 1 (the echo of that ping came back) or 0.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

PORTS = (80, 81)


def _tcp_server(port: int) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(128)
    while True:
        conn, _ = srv.accept()
        conn.close()


def _udp_server(port: int) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("0.0.0.0", port))
    while True:
        data, peer = srv.recvfrom(64)
        srv.sendto(data, peer)


def serve() -> None:
    threads = [threading.Thread(target=f, args=(p,), daemon=True)
               for p in PORTS for f in (_tcp_server, _udp_server)]
    for t in threads:
        t.start()
    print("ready", flush=True)
    threading.Event().wait()


def _udp_echo(s: socket.socket, dest: tuple[str, int], timeout: float) -> bool:
    """Send a fresh nonce to ``dest``; True only if ``dest`` echoes that nonce back
    within ``timeout``. Anything else arriving meanwhile (a late echo meant for an
    earlier probe) is skipped, not counted."""
    nonce = b"ping-" + os.urandom(8).hex().encode()
    deadline = time.monotonic() + timeout
    s.sendto(nonce, dest)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        s.settimeout(left)
        data, peer = s.recvfrom(64)
        if data == nonce and peer == dest:
            return True


def _probe(target, timeout: float, udp_source_port: int | None, rst_close: bool = False) -> bool:
    addr, port, proto = target
    kind = socket.SOCK_STREAM if proto == "TCP" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.settimeout(timeout)
        try:
            if proto == "TCP":
                # TCP keeps an ephemeral port: a SYN meeting an old entry of a closed
                # connection starts a new one (or is invalid), never "established".
                s.connect((addr, port))
                if rst_close:
                    # Close with a RST: conntrack keeps the flow 10 s (CLOSE), not 120 s
                    # (TIME_WAIT), so thousands of probes do not pile up in the node's
                    # table that every policy change scans for flows to cut.
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return True
            if udp_source_port is not None:
                s.bind(("0.0.0.0", udp_source_port))
            return _udp_echo(s, (addr, port), timeout)
        except OSError:
            return False


def probe(targets: list, timeout: float, udp_port_base: int | None = None,
          rst_close: bool = False) -> list[bool]:
    ports = [None if udp_port_base is None else udp_port_base + i for i in range(len(targets))]
    with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        return list(pool.map(lambda t, p: _probe(t, timeout, p, rst_close), targets, ports))


AGENT_UDP_PORTS = (10000, 32768)


def agent() -> None:
    threads = [threading.Thread(target=f, args=(p,), daemon=True)
               for p in PORTS for f in (_tcp_server, _udp_server)]
    for t in threads:
        t.start()
    print("ready", flush=True)
    low, high = AGENT_UDP_PORTS
    next_port = low
    for line in sys.stdin:
        request = json.loads(line)
        targets = request["targets"]
        if next_port + len(targets) > high:
            next_port = low
        results = probe(targets, float(request["timeout"]), next_port, rst_close=True)
        next_port += len(targets)
        print(json.dumps(results), flush=True)


def hold(timeout: float) -> None:
    sockets: dict[tuple[str, int], socket.socket] = {}
    for line in sys.stdin:
        addr, port = line.split()
        key = (addr, int(port))
        if key not in sockets:
            sockets[key] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sockets[key].settimeout(timeout)
        try:
            ok = _udp_echo(sockets[key], key, timeout)
        except OSError:
            ok = False
        print(1 if ok else 0, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    elif sys.argv[1] == "agent":
        agent()
    elif sys.argv[1] == "hold":
        hold(float(sys.argv[2]))
    else:
        base = int(sys.argv[4]) if len(sys.argv) > 4 else None
        print(json.dumps(probe(json.loads(sys.argv[2]), float(sys.argv[3]), base)))
