"""A node process for the contention and crash tests: allocates, releases some,
and prints one JSON line per completed operation (flushed), so the parent
knows exactly what finished even if this process is SIGKILLed.

    python -m tests.ipam.worker --endpoint H:P --node N --count 1000 --seed 1
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys

import structlog

from ipam.allocator import Ipam
from ipam.store import EtcdStore


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--node", required=True)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--release-ratio", type=float, default=0.3)
    ap.add_argument("--cooldown", type=float, default=0.0)
    ap.add_argument("--max-blocks", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--tag", default=None, help="handle name part (default: the node name)")
    ap.add_argument("--family", type=int, choices=(4, 6), default=None,
                    help="IP version to allocate (default: IPAM's default, IPv4)")
    args = ap.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                        logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    rng = random.Random(args.seed)
    ipam = Ipam(EtcdStore(args.endpoint, timeout=args.timeout), args.node, cooldown=args.cooldown,
                max_blocks_per_node=args.max_blocks)
    held: list[tuple[str, str, int]] = []
    out = sys.stdout

    def emit(**kw):
        out.write(json.dumps(kw) + "\n")
        out.flush()

    emit(op="start", node=args.node)
    for i in range(args.count):
        handle = f"k8s-pod-network.{args.tag or args.node}-{i}"
        lease = ipam.allocate_lease(handle, {"namespace": "bench", "pod": f"p{i}"},
                                    family=args.family)
        held.append((handle, lease.ip, lease.seq))
        emit(op="alloc", h=handle, ip=lease.ip, seq=lease.seq, block=lease.block)
        if held and rng.random() < args.release_ratio:
            h, ip, seq = held.pop(rng.randrange(len(held)))
            if rng.random() < 0.5:
                got = ipam.release_handle(h)
                emit(op="rel", h=h, ip=ip, seq=seq, how="handle", ok=got == [ip])
            else:
                ok = ipam.release_ip(ip, seq=seq)
                emit(op="rel", h=h, ip=ip, seq=seq, how="ip", ok=ok)
    emit(op="done", stats=dict(ipam.stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
