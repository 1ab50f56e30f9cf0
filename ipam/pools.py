"""Pools and reservations: add, list, update and delete pools; reserve ranges.

Pools never overlap: every add and delete rewrites ``poolsrev`` in the same
transaction and compares it, so two concurrent overlapping adds cannot both
succeed. Deletion marks the pool ``deleting`` first (claims and allocations
compare the pool key, so they stop), then releases and frees its blocks
through the lease allocator, then deletes the key (ipam/README.md, invariant 7).
"""

from __future__ import annotations

import json
from dataclasses import replace

from ipam.cache import ReadCache
from ipam.context import IpamContext
from ipam.errors import IpamConflict, IpamInvalid, IpamNotFound, IpamPoolInUse, IpamPoolOverlap
from ipam.leases import LeaseAllocator
from ipam.model import Block, IPNetwork, Pool, overlapping, parse_network
from ipam.store import Delete, Expect, Put


class PoolAdmin:
    def __init__(self, ctx: IpamContext, cache: ReadCache, leases: LeaseAllocator) -> None:
        self.ctx = ctx
        self.cache = cache
        self.leases = leases

    def add_pool(self, cidr: str, block_size: int | None = None, **opts) -> Pool:
        """Create a pool; refused if it overlaps another (atomic with ``poolsrev``)."""
        pool = Pool.new(cidr, block_size, **opts)
        for _ in range(self.ctx.max_retries):
            rev_kv = self.ctx.store.get(self.ctx.keys.poolsrev())
            pools = self.cache.load_pools()
            clash = overlapping(pool.cidr, [p.cidr for p, _ in pools.values()])
            if clash:
                raise IpamPoolOverlap(f"pool {pool.cidr} overlaps existing pool(s) "
                                      f"{', '.join(map(str, clash))}; pick a disjoint CIDR or "
                                      f"delete the other pool first")
            res = self.ctx.store.txn(
                [Expect(self.ctx.keys.poolsrev(), rev_kv.mod_revision if rev_kv else 0),
                 Expect(self.ctx.keys.pool(pool.cidr), 0)],
                [Put(self.ctx.keys.pool(pool.cidr), json.dumps(pool.to_dict()).encode()),
                 Put(self.ctx.keys.poolsrev(), str(pool.cidr).encode())])
            if res.succeeded:
                self.cache.pools = None
                self.ctx.log.info("pool_added", pool=str(pool.cidr), block_size=pool.block_size)
                return pool
        raise IpamConflict(f"adding pool {pool.cidr}: gave up after {self.ctx.max_retries} "
                           f"conflicting pool changes; retry")

    def list_pools(self) -> list[Pool]:
        return sorted((p for p, _ in self.cache.load_pools().values()),
                      key=lambda p: (p.cidr.version, p.cidr))

    def get_pool(self, cidr: str) -> Pool:
        net = parse_network(cidr, "pool CIDR")
        kv = self.ctx.store.get(self.ctx.keys.pool(net))
        if kv is None:
            raise IpamNotFound(f"pool {net} does not exist; list pools with `noderouter pool list`")
        return Pool.from_dict(json.loads(kv.value))

    def update_pool(self, cidr: str, **changes) -> Pool:
        """Change a pool's settings (not its CIDR or block size, fixed once created)."""
        if {"cidr", "block_size"} & changes.keys():
            raise IpamInvalid(f"pool {cidr}: CIDR and block size are fixed once created; "
                              f"create a new pool instead")
        net = parse_network(cidr, "pool CIDR")
        for _ in range(self.ctx.max_retries):
            kv = self.ctx.store.get(self.ctx.keys.pool(net))
            if kv is None:
                raise IpamNotFound(f"pool {net} does not exist; list pools with `noderouter pool list`")
            old = Pool.from_dict(json.loads(kv.value))
            new = Pool.new(str(old.cidr), old.block_size,
                           **{**{k: v for k, v in old.to_dict().items()
                                 if k not in ("cidr", "block_size")}, **changes})
            res = self.ctx.store.txn([Expect(kv.key, kv.mod_revision)],
                                     [Put(kv.key, json.dumps(new.to_dict()).encode())])
            if res.succeeded:
                self.cache.pools = None
                self.ctx.log.info("pool_updated", pool=str(net), **{k: str(v) for k, v in changes.items()})
                return new
        raise IpamConflict(f"updating pool {net}: gave up after {self.ctx.max_retries} conflicts; retry")

    def delete_pool(self, cidr: str, force: bool = False, now: float | None = None) -> dict:
        """Delete a pool and its blocks.

        Refused while any address is allocated unless ``force`` (which releases
        them). The pool is first marked ``deleting`` (no new claims or
        allocations: those transactions compare the pool key), then blocks are
        removed one transaction at a time; a crash part-way leaves a pool marked
        deleting that a second ``delete_pool`` finishes.
        """
        now = self.ctx.now(now)
        net = parse_network(cidr, "pool CIDR")
        pkey = self.ctx.keys.pool(net)
        kv = self.ctx.store.get(pkey)
        if kv is None:
            raise IpamNotFound(f"pool {net} does not exist; list pools with `noderouter pool list`")
        pool = Pool.from_dict(json.loads(kv.value))
        in_use = self._pool_allocations(pool)
        if in_use and not force:
            raise IpamPoolInUse(f"pool {net} still has {in_use} allocated address(es); release "
                                f"them (noderouter ipam release) or delete with --force")
        was = pool
        if not pool.deleting:
            res = self.ctx.store.txn([Expect(pkey, kv.mod_revision)],
                                     [Put(pkey, json.dumps(replace(pool, deleting=True).to_dict()).encode())])
            if not res.succeeded:
                raise IpamConflict(f"pool {net} changed while deleting it; retry")
            self.cache.pools = None
        in_use = self._pool_allocations(pool)
        if in_use and not force:
            # An allocation slipped in before the mark: undo the mark, refuse.
            kv2 = self.ctx.store.get(pkey)
            if kv2 is not None:
                self.ctx.store.txn([Expect(pkey, kv2.mod_revision)],
                                   [Put(pkey, json.dumps(was.to_dict()).encode())])
            raise IpamPoolInUse(f"pool {net} still has {in_use} allocated address(es); release "
                                f"them (noderouter ipam release) or delete with --force")
        released = 0
        _, kvs = self.ctx.store.range(self.ctx.keys.blocks(pool.cidr))
        for bkv in kvs:
            block = Block.from_json(bkv.value)
            for ordinal in sorted(block.allocations):
                if self.leases.release_ip(str(block.ip(ordinal)), now=now, cooldown=0.0):
                    released += 1
            self.leases.free_block(bkv.key, expect_empty=True)
        for _ in range(self.ctx.max_retries):
            kv = self.ctx.store.get(pkey)
            rev_kv = self.ctx.store.get(self.ctx.keys.poolsrev())
            if kv is None:
                break
            res = self.ctx.store.txn([Expect(pkey, kv.mod_revision),
                                      Expect(self.ctx.keys.poolsrev(), rev_kv.mod_revision if rev_kv else 0)],
                                     [Delete(pkey), Put(self.ctx.keys.poolsrev(), b"delete " + str(net).encode())])
            if res.succeeded:
                break
        self.cache.pools = None
        self.ctx.log.info("pool_deleted", pool=str(net), forced=force, released=released,
                          blocks=len(kvs))
        return {"pool": str(net), "released": released, "blocks": len(kvs), "forced": force}

    def _pool_allocations(self, pool: Pool) -> int:
        _, kvs = self.ctx.store.range(self.ctx.keys.blocks(pool.cidr))
        return sum(len(Block.from_json(kv.value).allocations) for kv in kvs)

    # ---------------------------------------------------------------- reservations

    def reservations(self) -> list[str]:
        return [str(n) for n in self.cache.load_reservations()[0]]

    def reserve(self, cidr: str) -> list[str]:
        """Never hand out addresses in ``cidr`` (existing allocations stay)."""
        return self._edit_resv(parse_network(cidr, "reservation"), add=True)

    def unreserve(self, cidr: str) -> list[str]:
        return self._edit_resv(parse_network(cidr, "reservation"), add=False)

    def _edit_resv(self, net: IPNetwork, add: bool) -> list[str]:
        key = self.ctx.keys.reservations()
        for _ in range(self.ctx.max_retries):
            nets, mod = self.cache.load_reservations()
            new = sorted({str(n) for n in nets} | {str(net)} if add
                         else {str(n) for n in nets} - {str(net)})
            res = self.ctx.store.txn([Expect(key, mod)], [Put(key, json.dumps(new).encode())], [key])
            if res.succeeded:
                self.cache.resv = None
                self.ctx.log.info("reservation_" + ("added" if add else "removed"), cidr=str(net))
                return new
        raise IpamConflict(f"editing reservations: gave up after {self.ctx.max_retries} conflicts; retry")
