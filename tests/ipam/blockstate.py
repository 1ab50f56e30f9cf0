"""What the blocks in etcd say about a node, read through ``Ipam.snapshot()``.

The tests assert IPAM's state with these; the daemon derives its routes from
its own watch of the block keys (bgpd/node/daemon.py), not from ``Ipam``.
"""

from __future__ import annotations

from ipam.allocator import Ipam
from ipam.model import net_sort_key


def confirmed_blocks(ipam: Ipam, node: str | None = None) -> list[str]:
    """CIDRs of the CONFIRMED blocks affine to ``node`` (default: the Ipam's own)."""
    node = node or ipam.node
    _, blocks = ipam.snapshot()
    return sorted((str(b.cidr) for b in blocks if b.affinity == node and b.confirmed),
                  key=net_sort_key)


def borrowed_addresses(ipam: Ipam, node: str | None = None) -> list[str]:
    """Addresses ``node`` holds in blocks affine to other nodes."""
    node = node or ipam.node
    _, blocks = ipam.snapshot()
    return sorted((str(b.ip(o)) for b in blocks if b.affinity != node
                   for o, a in b.allocations.items() if a.node == node), key=net_sort_key)
