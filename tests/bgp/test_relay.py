"""The API relay (bgpd/bgp/exabgp_relay.py) drains ExaBGP's pipe even when the daemon stops reading,
and passes commands through line by line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from bgpd.bgp.speaker import RELAY


def test_relay_never_blocks_exabgp_and_relays_commands(tmp_path):
    path = str(tmp_path / "api.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    proc = subprocess.Popen([sys.executable, RELAY, path], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        conn, _ = srv.accept()
        # The daemon does not read at all: ~64 MB of 400 KB lines must still be consumed
        # (far more than the socket buffers), or ExaBGP would block on its write.
        line = b"{" + b"x" * 400_000 + b"}\n"
        for _ in range(160):
            proc.stdin.write(line)
        proc.stdin.flush()
        # Commands still flow the other way while the daemon ignores the backlog.
        conn.sendall(b"announce attributes next-hop self nlri 198.19.1.0/26\n")
        assert proc.stdout.readline() == b"announce attributes next-hop self nlri 198.19.1.0/26\n"
        # Now read: hello first, then every line intact and in order.
        f = conn.makefile("rb")
        assert f.readline().startswith(b"#relay pid=")
        for _ in range(160):
            assert f.readline() == line
        proc.stdin.write(b"done\n")
        proc.stdin.flush()
        assert f.readline() == b"done\n"
        proc.stdin.close()  # ExaBGP went away: the relay exits
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, 9)
            proc.wait()
        srv.close()
