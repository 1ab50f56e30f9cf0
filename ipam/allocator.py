"""``Ipam``: the facade callers use, composed of the parts (one object per node and thread).

The parts share one :class:`~ipam.context.IpamContext` (store, node, settings,
log, stats) and one :class:`~ipam.cache.ReadCache`:

* :class:`~ipam.leases.LeaseAllocator`: allocate, assign, release; block
  claims, affinity, borrowing (the compare-and-swap discipline is described there);
* :class:`~ipam.pools.PoolAdmin`: pools and reservations;
* :class:`~ipam.gc.Auditor`: dump, snapshot, check and gc.

This module keeps the names callers import (``Ipam``, ``Keys``,
``DEFAULT_PREFIX``, ``Lease``, ``Dump``, ``GcReport``, ``parse_live_handles``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping

from ipam.audit import CheckReport, GcReport, parse_live_handles
from ipam.cache import ReadCache
from ipam.context import IpamContext
from ipam.gc import Auditor, Dump
from ipam.keys import DEFAULT_PREFIX, Keys
from ipam.leases import Lease, LeaseAllocator
from ipam.model import Block, Pool
from ipam.pools import PoolAdmin
from ipam.store import Store

__all__ = ["DEFAULT_PREFIX", "Dump", "GcReport", "Ipam", "Keys", "Lease", "parse_live_handles"]


class Ipam:
    """IPAM for one node (``node``) over a :class:`~ipam.store.Store`.

    ``clock`` is only read when a public call gets ``now=None``. Not
    thread-safe (the read cache is plain dicts): one per thread or process.
    """

    def __init__(self, store: Store, node: str, *, prefix: str = DEFAULT_PREFIX,
                 node_labels: Mapping[str, str] | None = None, max_blocks_per_node: int = 20,
                 strict_affinity: bool = False, cooldown: float = 30.0, max_retries: int = 50,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.ctx = IpamContext.create(store, node, prefix=prefix, node_labels=node_labels,
                                      max_blocks_per_node=max_blocks_per_node,
                                      strict_affinity=strict_affinity, cooldown=cooldown,
                                      max_retries=max_retries, clock=clock, sleep=sleep)
        self.cache = ReadCache(self.ctx)
        self.leases = LeaseAllocator(self.ctx, self.cache)
        self.pools = PoolAdmin(self.ctx, self.cache, self.leases)
        self.auditor = Auditor(self.ctx, self.leases)

    # ---------------------------------------------------------------- shared state

    @property
    def store(self) -> Store:
        return self.ctx.store

    @store.setter
    def store(self, store: Store) -> None:
        self.ctx.store = store      # every part reads the store through the context

    @property
    def node(self) -> str:
        return self.ctx.node

    @property
    def keys(self) -> Keys:
        return self.ctx.keys

    @property
    def stats(self) -> Counter[str]:
        """allocations, borrowed, conflicts (lost CAS races), claims."""
        return self.ctx.stats

    def invalidate(self) -> None:
        """Drop every cached value (the next call reads from the store)."""
        self.cache.invalidate()

    # ---------------------------------------------------------------- allocation

    def allocate(self, handle: str, attrs: Mapping[str, str] | None = None,
                 pool: str | None = None, now: float | None = None,
                 family: int | None = None) -> str:
        return self.leases.allocate(handle, attrs, pool, now, family)

    def allocate_lease(self, handle: str, attrs: Mapping[str, str] | None = None,
                       pool: str | None = None, now: float | None = None,
                       family: int | None = None) -> Lease:
        return self.leases.allocate_lease(handle, attrs, pool, now, family)

    def assign(self, ip: str, handle: str, attrs: Mapping[str, str] | None = None,
               now: float | None = None) -> str:
        return self.leases.assign(ip, handle, attrs, now)

    def release_ip(self, ip: str, seq: int | None = None, handle: str | None = None,
                   now: float | None = None) -> bool:
        return self.leases.release_ip(ip, seq=seq, handle=handle, now=now)

    def release_handle(self, handle: str, now: float | None = None) -> list[str]:
        return self.leases.release_handle(handle, now)

    def handle_ips(self, handle: str) -> list[str]:
        return self.leases.handle_ips(handle)

    # ---------------------------------------------------------------- pools and reservations

    def add_pool(self, cidr: str, block_size: int | None = None, **opts) -> Pool:
        return self.pools.add_pool(cidr, block_size, **opts)

    def list_pools(self) -> list[Pool]:
        return self.pools.list_pools()

    def get_pool(self, cidr: str) -> Pool:
        return self.pools.get_pool(cidr)

    def update_pool(self, cidr: str, **changes) -> Pool:
        return self.pools.update_pool(cidr, **changes)

    def delete_pool(self, cidr: str, force: bool = False, now: float | None = None) -> dict:
        return self.pools.delete_pool(cidr, force, now)

    def reservations(self) -> list[str]:
        return self.pools.reservations()

    def reserve(self, cidr: str) -> list[str]:
        return self.pools.reserve(cidr)

    def unreserve(self, cidr: str) -> list[str]:
        return self.pools.unreserve(cidr)

    # ---------------------------------------------------------------- whole state, check, gc

    def dump(self) -> Dump:
        return self.auditor.dump()

    def snapshot(self) -> tuple[int, list[Block]]:
        return self.auditor.snapshot()

    def check(self, live_handles: Collection[str], node: str | None = None,
              live_nodes: Collection[str] | None = None) -> CheckReport:
        return self.auditor.check(live_handles, node, live_nodes)

    def gc(self, live_handles: Collection[str] | Callable[[], Collection[str]],
           now: float | None = None, grace: float = 900.0, node: str | None = None,
           live_nodes: Collection[str] | None = None, dry_run: bool = False) -> GcReport:
        return self.auditor.gc(live_handles, now, grace, node, live_nodes, dry_run)
