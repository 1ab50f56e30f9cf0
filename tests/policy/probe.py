"""Servers and probes for the kernel policy test (run with ``ip netns exec``).

``serve``: TCP and UDP echo on ports 80 and 81 (all addresses), until killed.
``probe '<json [[addr, port, proto], ...]>' timeout``: tries every target in
parallel, prints a JSON list of booleans (TCP: the handshake completed;
UDP: the echo came back).
``hold timeout``: one UDP socket per destination, kept across requests (same
5-tuple = same conntrack entry); each stdin line ``addr port`` sends a ping on
it and prints 1 (echo came back) or 0.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
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


def _probe(target, timeout: float) -> bool:
    addr, port, proto = target
    kind = socket.SOCK_STREAM if proto == "TCP" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.settimeout(timeout)
        try:
            if proto == "TCP":
                s.connect((addr, port))
                return True
            s.sendto(b"ping", (addr, port))
            data, _ = s.recvfrom(64)
            return data == b"ping"
        except OSError:
            return False


def probe(targets: list, timeout: float) -> list[bool]:
    with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        return list(pool.map(lambda t: _probe(t, timeout), targets))


def hold(timeout: float) -> None:
    sockets: dict[tuple[str, int], socket.socket] = {}
    for line in sys.stdin:
        addr, port = line.split()
        key = (addr, int(port))
        if key not in sockets:
            sockets[key] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sockets[key].settimeout(timeout)
        s = sockets[key]
        try:
            s.sendto(b"ping", key)
            ok = s.recvfrom(64)[0] == b"ping"
        except OSError:
            ok = False
        print(1 if ok else 0, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    elif sys.argv[1] == "hold":
        hold(float(sys.argv[2]))
    else:
        print(json.dumps(probe(json.loads(sys.argv[2]), float(sys.argv[3]))))
