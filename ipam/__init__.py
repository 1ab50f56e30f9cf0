"""IPAM: pod and tunnel addresses in etcd, Calico-style, safe under contention.

Modules (pure ones do no I/O and never read the clock)
- ``model``: pure. The records as stored in etcd (``Pool``, ``Block`` with its
  ``Allocation``s, ``HandleRecord``, ``AffinityIndex``), block arithmetic, allocation
  order, selectors, pool eligibility, and the CIDR <-> key-segment encoding
  (``cidr_key``, ``key_cidr``, ``cidr_from_key``).
- ``keys``: the etcd key layout (``Keys``, ``DEFAULT_PREFIX``).
- ``audit``: pure. Consistency check (``check_state``) and gc planning (``plan_gc``),
  ``GcReport``, ``parse_live_handles``.
- ``store``: the only module that talks to etcd (``EtcdStore``; ``Store`` protocol);
  ``wire``: the hand-encoded etcd transaction requests it sends.
- ``context``: ``IpamContext``, what the parts of one ``Ipam`` share (store, node,
  settings, log, stats).
- ``cache``: ``ReadCache``, values and mod revisions as last read or written.
- ``leases``: ``LeaseAllocator``, the compare-and-swap allocator: allocate, assign,
  release; block claims (two-phase), affinity, borrowing, freeing blocks.
- ``pools``: ``PoolAdmin``, pools (add/list/update/delete) and reservations.
- ``gc``: ``Auditor``, whole-state reads (``dump``, ``snapshot``), check and gc.
- ``allocator``: ``Ipam``, the facade callers use, composed of the parts above.
- ``errors``: ``IpamError`` and its subclasses, the root of every error raised here.

Who owns which concept
- Pool and Block (and Allocation, HandleRecord, AffinityIndex): ``ipam.model`` owns the
  records as stored in etcd; only ``ipam`` writes them (``pools`` writes pools and
  reservations, ``leases`` and ``gc`` write blocks, handles and node indexes). The
  daemon (``bgpd.node``) reads pools and blocks from its own watch of these keys
  (parsing them with ``model.Pool``/``model.Block`` and ``model.cidr_from_key``) and
  derives routes; IPAM has no routing view of its own.
- Node: owned by ``bgpd.node`` (``registry.NodeInfo``, the node's lease-backed
  registration). IPAM knows a node only as a validated name: the key of its block
  index (``affinities/<node>``), a block's ``affinity``, an allocation's ``node``.
  Which nodes are alive is the caller's input (``live_nodes`` of check/gc).
- Workload: owned by the CNI plugin (``bgpd.cni.records.WorkloadRecord``, one per pod
  attachment on the node) and read by ``bgpd.node.workloads``. IPAM knows a workload
  only as a handle (``pod_handle(container_id)``) with attributes; which workloads are
  alive is the caller's input (``live_handles`` of check/gc).

Key layout and invariants: ipam/README.md.

Public API (``now`` is always optional: only ``IpamContext.now`` reads the clock)::

    store = EtcdStore("127.0.0.1:2379", ca=None, cert=None, key=None, timeout=5.0)
    ipam = Ipam(store, node, *, prefix="/noderouter/ipam/v1/", node_labels=None,
                max_blocks_per_node=20, strict_affinity=False, cooldown=30.0,
                max_retries=50, clock=time.time)

    # allocation (idempotent per handle and family; one IP version per call: the pool's,
    # else family, else 4 -- dual stack calls once per family with the same handle)
    ipam.allocate(handle, attrs=None, pool=None, now=None, family=None) -> str
    ipam.allocate_lease(handle, attrs=None, pool=None, now=None, family=None) -> Lease(ip, seq, block, handle, new)
    ipam.assign(ip, handle, attrs=None, now=None) -> str
    ipam.release_handle(handle, now=None) -> list[str]
    ipam.release_ip(ip, seq=None, handle=None, now=None) -> bool
    ipam.handle_ips(handle) -> list[str]

    # pools and reservations
    ipam.add_pool(cidr, block_size=None, *, disabled=False, node_selector="all()",
                  ipip_mode="Never", vxlan_mode="Never", nat_outgoing=False,
                  strict_affinity=False) -> Pool
    ipam.list_pools() -> list[Pool];  ipam.get_pool(cidr) -> Pool
    ipam.update_pool(cidr, **changes) -> Pool            # not cidr/block_size
    ipam.delete_pool(cidr, force=False, now=None) -> dict
    ipam.reserve(cidr) / ipam.unreserve(cidr) / ipam.reservations() -> list[str]

    # whole state, check and gc
    ipam.dump() -> Dump;  ipam.snapshot() -> (revision, list[Block])
    ipam.check(live_handles, node=None, live_nodes=None) -> CheckReport
    ipam.gc(live_handles | callable, now=None, grace=900, node=None, live_nodes=None,
            dry_run=False) -> GcReport

    ipam.store (settable), ipam.node, ipam.keys, ipam.stats, ipam.invalidate()
    pod_handle(container_id) -> "k8s-pod-network.<id>";  tunnel_handle(node) -> "ipip-tunnel-addr-<node>"

Errors: every failure is an ``IpamError`` subclass (``ipam.errors``) whose
message names the thing and the fix; ``IpamStoreUnavailable`` means etcd did
not answer within the store's ``timeout``.
"""

from ipam.allocator import Ipam
from ipam.audit import CheckReport, GcReport, parse_live_handles
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
from ipam.gc import Dump
from ipam.keys import DEFAULT_PREFIX, Keys
from ipam.leases import Lease
from ipam.model import Allocation, Block, Pool, cidr_from_key, pod_handle, tunnel_handle
from ipam.store import EtcdStore

__all__ = [
    "DEFAULT_PREFIX", "Allocation", "Block", "CheckReport", "Dump", "EtcdStore", "GcReport", "Ipam",
    "IpamAddressInUse", "IpamAffinityError", "IpamConflict", "IpamError", "IpamExhausted",
    "IpamInvalid", "IpamNotFound", "IpamPoolInUse", "IpamPoolOverlap", "IpamReserved",
    "IpamStoreUnavailable", "Keys", "Lease", "Pool", "cidr_from_key", "parse_live_handles",
    "pod_handle", "tunnel_handle",
]
