"""The read cache of one ``Ipam``: values and mod revisions as last seen in etcd.

Discipline (why a stale cache is safe): entries are only set from values read
from the store or written by a transaction that succeeded (with that
transaction's revision). Every write pins the mod revisions it was decided on,
so a stale entry costs a failed transaction and a retry, never a wrong write;
the failed transaction returns the current values and :meth:`refresh_from`
takes them in.

Not thread-safe (plain dicts): one ``Ipam`` per thread or process.
"""

from __future__ import annotations

import ipaddress
import json
from collections import OrderedDict

from ipam.context import IpamContext
from ipam.model import (
    AffinityIndex,
    Block,
    HandleRecord,
    IPAddress,
    IPNetwork,
    Pool,
    cidr_from_key,
    reserved_ordinals,
)
from ipam.store import KV, TxnResult

# Handle records kept at most (oldest dropped first): a node's live pods fit many times over.
MAX_CACHED_HANDLES = 20000


class ReadCache:
    def __init__(self, ctx: IpamContext) -> None:
        self.ctx = ctx
        self.pools: dict[str, tuple[Pool, int]] | None = None
        self.resv: tuple[list[IPNetwork], int] | None = None
        self.aff: tuple[AffinityIndex, int] | None = None       # this node's block index
        self.blocks: dict[str, tuple[Block, int]] = {}           # block key -> (block, mod)
        self.handles: OrderedDict[str, tuple[HandleRecord, int]] = OrderedDict()
        self.resv_ordinals: dict[str, frozenset[int]] = {}      # block cidr -> reserved ordinals

    def invalidate(self) -> None:
        """Drop everything (the next read goes to the store)."""
        self.pools = None
        self.resv = None
        self.aff = None
        self.blocks.clear()
        self.handles.clear()
        self.resv_ordinals.clear()

    # ---------------------------------------------------------------- pools

    def load_pools(self) -> dict[str, tuple[Pool, int]]:
        _, kvs = self.ctx.store.range(self.ctx.keys.pools())
        self.pools = {}
        for kv in kvs:
            p = Pool.from_dict(json.loads(kv.value))
            self.pools[str(p.cidr)] = (p, kv.mod_revision)
        return self.pools

    def pool_map(self) -> dict[str, tuple[Pool, int]]:
        return self.pools if self.pools is not None else self.load_pools()

    def pool_of(self, ip: IPAddress) -> tuple[Pool, int] | None:
        """The pool holding ``ip`` (reloading the pools once if no cached pool does)."""
        for _ in range(2):
            for p, mod in self.pool_map().values():
                if ip in p.cidr:
                    return p, mod
            self.load_pools()
        return None

    # ---------------------------------------------------------------- reservations

    def load_reservations(self) -> tuple[list[IPNetwork], int]:
        self.set_reservations(self.ctx.store.get(self.ctx.keys.reservations()))
        assert self.resv is not None
        return self.resv

    def set_reservations(self, kv: KV | None) -> None:
        nets = [ipaddress.ip_network(c) for c in json.loads(kv.value)] if kv else []
        new = (nets, kv.mod_revision if kv else 0)
        if self.resv is None or self.resv[1] != new[1]:
            self.resv_ordinals.clear()
        self.resv = new

    def reservations(self) -> tuple[list[IPNetwork], int]:
        return self.resv if self.resv is not None else self.load_reservations()

    def reserved(self, block: IPNetwork) -> frozenset[int]:
        """The reserved ordinals of ``block`` under the current reservations."""
        self.reservations()    # (re)loads after invalidation, dropping stale ordinals
        k = str(block)
        if k not in self.resv_ordinals:
            self.resv_ordinals[k] = reserved_ordinals(block, self.reservations()[0])
        return self.resv_ordinals[k]

    # ---------------------------------------------------------------- this node's index

    def load_affinity(self) -> tuple[AffinityIndex, int]:
        self.set_affinity(self.ctx.store.get(self.ctx.keys.affinity(self.ctx.node)))
        assert self.aff is not None
        return self.aff

    def set_affinity(self, kv: KV | None) -> None:
        self.aff = ((AffinityIndex.from_json(kv.value), kv.mod_revision) if kv
                    else (AffinityIndex(self.ctx.node), 0))

    def affinity(self) -> tuple[AffinityIndex, int]:
        return self.aff if self.aff is not None else self.load_affinity()

    # ---------------------------------------------------------------- blocks and handles

    def set_block(self, key: str, kv: KV | None) -> tuple[Block, int] | None:
        if kv is None:
            self.blocks.pop(key, None)
            return None
        v = (Block.from_json(kv.value), kv.mod_revision)
        self.blocks[key] = v
        return v

    def block(self, key: str, fresh: bool = False) -> tuple[Block, int] | None:
        if not fresh and key in self.blocks:
            return self.blocks[key]
        return self.set_block(key, self.ctx.store.get(key))

    def set_handle(self, key: str, rec: HandleRecord | None, mod: int) -> None:
        self.handles.pop(key, None)
        if rec is not None:
            self.handles[key] = (rec, mod)
            while len(self.handles) > MAX_CACHED_HANDLES:
                self.handles.popitem(last=False)

    def handle(self, key: str, fresh: bool = False) -> tuple[HandleRecord | None, int]:
        if not fresh and key in self.handles:
            return self.handles[key]
        kv = self.ctx.store.get(key)
        rec = HandleRecord.from_json(kv.value) if kv else None
        self.set_handle(key, rec, kv.mod_revision if kv else 0)
        return rec, (kv.mod_revision if kv else 0)

    # ---------------------------------------------------------------- after a lost race

    def refresh_from(self, res: TxnResult) -> None:
        """Take in the current values a failed transaction returned."""
        keys = self.ctx.keys
        for key, kv in res.current.items():
            if key.startswith(keys.blocks()):
                self.set_block(key, kv)
            elif key.startswith(keys.handles()):
                rec = HandleRecord.from_json(kv.value) if kv else None
                self.set_handle(key, rec, kv.mod_revision if kv else 0)
            elif key == keys.reservations():
                self.set_reservations(kv)
            elif key == keys.affinity(self.ctx.node):
                self.set_affinity(kv)
            elif key.startswith(keys.pools()) and self.pools is not None:
                if kv is None:
                    self.pools.pop(str(cidr_from_key(key)), None)
                else:
                    p = Pool.from_dict(json.loads(kv.value))
                    self.pools[str(p.cidr)] = (p, kv.mod_revision)
