"""IPAM: pod and tunnel addresses in etcd, Calico-style, safe under contention.

Layout: ``model`` (pure values and block arithmetic), ``audit`` (pure check and
gc planning), ``store`` (the thin etcd adapter), ``wire`` (hand-encoded etcd
transactions), ``allocator`` (``Ipam``), ``errors``. Key layout and invariants:
ipam/README.md.

Public API (``now`` is always optional: only the adapter reads the clock)::

    store = EtcdStore("127.0.0.1:2379", ca=None, cert=None, key=None, timeout=5.0)
    ipam = Ipam(store, node, *, prefix="/noderouter/ipam/v1/", node_labels=None,
                max_blocks_per_node=20, strict_affinity=False, cooldown=30.0,
                max_retries=50, clock=time.time)

    # allocation (idempotent per handle and pool)
    ipam.allocate(handle, attrs=None, pool=None, now=None) -> str
    ipam.allocate_lease(handle, attrs=None, pool=None, now=None) -> Lease(ip, seq, block, handle, new)
    ipam.assign(ip, handle, attrs=None, now=None) -> str
    ipam.release_handle(handle, now=None) -> list[str]
    ipam.release_ip(ip, seq=None, handle=None, now=None) -> bool
    ipam.handle_ips(handle) -> list[str]

    # routing view
    ipam.blocks_for_node(node=None) -> list[str]        # CONFIRMED blocks only
    ipam.borrowed_for_node(node=None) -> list[str]      # /32s held in others' blocks
    ipam.snapshot() -> (revision, list[Block])
    ipam.watch_blocks(start_revision) -> (iterator of (kind, cidr, Block|None, mod_rev), cancel)

    # pools and reservations
    ipam.add_pool(cidr, block_size=None, *, disabled=False, node_selector="all()",
                  ipip_mode="Never", vxlan_mode="Never", nat_outgoing=False,
                  strict_affinity=False) -> Pool
    ipam.list_pools() -> list[Pool];  ipam.get_pool(cidr) -> Pool
    ipam.update_pool(cidr, **changes) -> Pool            # not cidr/block_size
    ipam.delete_pool(cidr, force=False, now=None) -> dict
    ipam.reserve(cidr) / ipam.unreserve(cidr) / ipam.reservations() -> list[str]

    # audit
    ipam.check(live_handles, node=None, live_nodes=None) -> CheckReport
    ipam.gc(live_handles | callable, now=None, grace=900, node=None, live_nodes=None,
            dry_run=False) -> GcReport
    ipam.dump() -> Dump

    pod_handle(container_id) -> "k8s-pod-network.<id>";  tunnel_handle(node) -> "ipip-tunnel-addr-<node>"

Errors: every failure is an ``IpamError`` subclass (``ipam.errors``) whose
message names the thing and the fix; ``IpamStoreUnavailable`` means etcd did
not answer within the store's ``timeout``.
"""

from ipam.allocator import DEFAULT_PREFIX, Dump, GcReport, Ipam, Lease, parse_live_handles
from ipam.audit import CheckReport
from ipam.errors import (
    IpamAddressInUse,
    IpamAffinityError,
    IpamConflict,
    IpamError,
    IpamExhausted,
    IpamInvalid,
    IpamNotFound,
    IpamPoolInUse,
    IpamPoolOverlap,
    IpamReserved,
    IpamStoreUnavailable,
)
from ipam.model import Allocation, Block, Pool, pod_handle, tunnel_handle
from ipam.store import EtcdStore

__all__ = [
    "DEFAULT_PREFIX", "Allocation", "Block", "CheckReport", "Dump", "EtcdStore", "GcReport", "Ipam",
    "IpamAddressInUse", "IpamAffinityError", "IpamConflict", "IpamError", "IpamExhausted",
    "IpamInvalid", "IpamNotFound", "IpamPoolInUse", "IpamPoolOverlap", "IpamReserved",
    "IpamStoreUnavailable", "Lease", "Pool", "parse_live_handles", "pod_handle", "tunnel_handle",
]
