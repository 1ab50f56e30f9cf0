"""ICMP echo from inside a guest namespace (this machine has no `ping` binary).

Usage: guest_ping.py DEST [COUNT] [DEADLINE_SECONDS] [INTERVAL_SECONDS]
Prints ping-style "N packets transmitted, M received" and exits 0 only if
every request got its reply before the deadline (like `ping -c N -w D`).
Runs as root inside the UML guest: a raw ICMP socket needs CAP_NET_RAW.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import sys
import time


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int) -> bytes:
    payload = b"noderouter-uml-ping".ljust(32, b".")
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return struct.pack("!BBHHH", 8, 0, checksum(header + payload), ident, seq) + payload


def main(argv: list[str]) -> int:
    dest = argv[1]
    count = int(argv[2]) if len(argv) > 2 else 3
    deadline = time.monotonic() + (float(argv[3]) if len(argv) > 3 else 20.0)
    interval = float(argv[4]) if len(argv) > 4 else 0.2
    ident = os.getpid() & 0xFFFF
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    replied: set[int] = set()
    sent = 0
    # One request per interval until `count` replies or the deadline, like ping:
    # a lost first packet (ARP still resolving) is made up for by later ones.
    next_send = time.monotonic()
    while len(replied) < count and time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_send and sent < count + 5:
            sent += 1
            sock.sendto(echo_request(ident, sent), (dest, 0))
            next_send = now + interval
        wait = max(0.0, min(next_send, deadline) - time.monotonic())
        ready, _, _ = select.select([sock], [], [], wait)
        if not ready:
            continue
        packet, (src, _) = sock.recvfrom(65535)
        ihl = (packet[0] & 0x0F) * 4
        icmp_type, _, _, r_ident, r_seq = struct.unpack("!BBHHH", packet[ihl : ihl + 8])
        if icmp_type == 0 and r_ident == ident and src == dest:
            if r_seq not in replied:
                print(f"reply from {src}: icmp_seq={r_seq}", flush=True)
            replied.add(r_seq)
    print(f"{sent} packets transmitted, {len(replied)} received")
    return 0 if len(replied) >= count else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
