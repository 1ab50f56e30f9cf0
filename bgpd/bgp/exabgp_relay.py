"""The API process ExaBGP spawns: a relay between ExaBGP's pipes and the daemon's unix socket.

ExaBGP writes JSON messages, acks (``done``/``error``) and command answers to our stdin and
reads commands from our stdout. The daemon owns a unix socket; this relay connects to it
and copies bytes both ways, line by line:

    ExaBGP stdout --> [relay stdin] --reader thread--> memory queue --sender thread--> socket
    socket --main thread--> [relay stdout] --> ExaBGP stdin (commands)

Review notes:
- Reading ExaBGP's pipe never waits on anything: the reader thread only appends to an
  unbounded in-memory queue; a slow daemon costs memory, never ExaBGP's keepalives (an
  API process that stops reading blocks ExaBGP entirely and the peers' hold timers expire).
- Stdlib only and runnable as a plain script (``python bgpd/bgp/exabgp_relay.py SOCKET``): ExaBGP
  may run it with a different working directory and environment.
- If the socket goes away the relay exits. ExaBGP 5.0.15 then carries on without an API
  process (``api.terminate`` did not reliably end it in our tests), so the daemon's
  supervisor restarts ExaBGP when its relay connection drops, and resyncs (a respawned
  relay would get no replay of session state: a clean restart is the simpler answer).
- Lines can be ~400 KB (extended messages): binary readline, no line-length limit.
"""

from __future__ import annotations

import collections
import os
import socket
import sys
import threading
import time


def _connect(path: str, timeout: float) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def relay(path: str, stdin=None, stdout=None, connect_timeout: float = 10.0) -> int:
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    sock = _connect(path, connect_timeout)
    # First line tells the daemon who we are (so it can tell a stale relay from a new one).
    sock.sendall(f"#relay pid={os.getpid()} ppid={os.getppid()}\n".encode())

    queue: collections.deque[bytes] = collections.deque()
    cond = threading.Condition()
    eof = threading.Event()

    def read_exabgp() -> None:
        for line in iter(stdin.readline, b""):
            with cond:
                queue.append(line)
                cond.notify()
        eof.set()
        with cond:
            cond.notify()

    def send_daemon() -> None:
        while True:
            with cond:
                while not queue and not eof.is_set():
                    cond.wait()
                if not queue and eof.is_set():
                    break
                batch = b"".join(queue)
                queue.clear()
            try:
                sock.sendall(batch)
            except OSError:
                os._exit(3)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        os._exit(0)  # ExaBGP closed our stdin: it is going away

    threading.Thread(target=read_exabgp, name="from-exabgp", daemon=True).start()
    threading.Thread(target=send_daemon, name="to-daemon", daemon=True).start()

    reader = sock.makefile("rb")
    for line in iter(reader.readline, b""):
        stdout.write(line)
        stdout.flush()
    # The daemon closed the socket: stop, ExaBGP follows (exabgp.api.terminate).
    os._exit(2)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: exabgp_relay.py SOCKET_PATH", file=sys.stderr)
        return 2
    return relay(args[0])


if __name__ == "__main__":
    sys.exit(main())
