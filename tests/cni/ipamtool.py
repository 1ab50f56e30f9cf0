"""A tiny IPAM client the CNI tests run *inside* the node namespace (where etcd
listens): the test process itself lives in the root namespace and cannot reach it.

    python -m tests.cni.ipamtool ENDPOINT add-pool CIDR [disabled=1] [node_selector=SEL]
    python -m tests.cni.ipamtool ENDPOINT reserve CIDR
    python -m tests.cni.ipamtool ENDPOINT handle-ips HANDLE
    python -m tests.cni.ipamtool ENDPOINT handles
    python -m tests.cni.ipamtool ENDPOINT release-handle HANDLE
    python -m tests.cni.ipamtool ENDPOINT get-prefix PREFIX     {key: JSON value}
    python -m tests.cni.ipamtool ENDPOINT put KEY JSON

Prints one JSON document.
"""

from __future__ import annotations

import json
import sys

import structlog

from ipam.allocator import Ipam
from ipam.store import EtcdStore


def main(argv: list[str]) -> int:
    endpoint, op, *rest = argv
    # stdout carries the answer; structlog's default writes to stdout.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    ipam = Ipam(EtcdStore(endpoint, timeout=5.0), "ipamtool", cooldown=0.0)
    if op == "add-pool":
        opts: dict[str, object] = {}
        for item in rest[1:]:
            key, _, value = item.partition("=")
            opts[key] = value == "1" if key == "disabled" else value
        pool = ipam.add_pool(rest[0], **opts)
        out: object = str(pool.cidr)
    elif op == "reserve":
        out = ipam.reserve(rest[0])
    elif op == "handle-ips":
        out = ipam.handle_ips(rest[0])
    elif op == "release-handle":
        # cooldown=0 above: the address is free for the next allocation at once.
        out = ipam.release_handle(rest[0])
    elif op == "get-prefix":
        _, kvs = ipam.store.range(rest[0])
        out = {kv.key: json.loads(kv.value) for kv in kvs}
    elif op == "put":
        from ipam.store import Put

        out = ipam.store.txn([], [Put(rest[0], rest[1].encode())]).revision
    elif op == "handles":
        out = {h: sorted(rec.ips) for h, (rec, _mod) in ipam.dump().handles.items()}
    else:
        raise SystemExit(f"unknown op {op!r}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
