"""The allocator: pools, block claims, allocation and release over a ``Store``.

Write discipline (the reason nothing is ever handed out twice):

* Every write is one store transaction whose compares pin the mod revision of
  every key the decision was based on (``0`` = the key must not exist). A
  lost race makes the whole transaction fail; the failure branch returns the
  current values, the caches are refreshed from them, and the decision is
  made again — at most ``max_retries`` times. Nothing but a conflict is
  retried.
* Caches are only refreshed from values read from the store or written by a
  transaction that succeeded (with the transaction's revision). A stale cache
  can only cost a retry, never a wrong write.
* An allocation writes the block and the handle in the same transaction, so
  there is never a handle without its address or the reverse.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import random
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace

import structlog

from ipam.audit import CheckReport, check_state, live_set, plan_gc
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
)
from ipam.model import (
    CONFIRMED,
    PENDING,
    AffinityIndex,
    Block,
    HandleRecord,
    IPAddress,
    IPNetwork,
    Pool,
    check_handle,
    check_node,
    cidr_key,
    claim_order,
    net_sort_key,
    overlapping,
    parse_ip,
    parse_network,
    reserved_ordinals,
    selector_matches,
)
from ipam.store import KV, Delete, Expect, Put, Store, TxnResult

DEFAULT_PREFIX = "/noderouter/ipam/v1/"


@functools.lru_cache(maxsize=65536)
def _net(cidr: str) -> IPNetwork:
    return ipaddress.ip_network(cidr)
CLUSTER_SCOPE = "_cluster"


class Keys:
    """The etcd key layout (see ipam/README.md)."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"

    def pools(self) -> str:
        return self.prefix + "pools/"

    def pool(self, cidr: IPNetwork | str) -> str:
        return self.pools() + cidr_key(cidr)

    def poolsrev(self) -> str:
        return self.prefix + "poolsrev"

    def blocks(self, pool: IPNetwork | str | None = None) -> str:
        base = self.prefix + "blocks/"
        return base if pool is None else base + cidr_key(pool) + "/"

    def block(self, pool: IPNetwork | str, block: IPNetwork | str) -> str:
        return self.blocks(pool) + cidr_key(block)

    def affinities(self) -> str:
        return self.prefix + "affinities/"

    def affinity(self, node: str) -> str:
        return self.affinities() + node

    def handles(self) -> str:
        return self.prefix + "handles/"

    def handle(self, handle: str) -> str:
        return self.handles() + handle

    def reservations(self) -> str:
        return self.prefix + "reservations"

    def gc(self, scope: str) -> str:
        return self.prefix + "gc/" + scope


@dataclass(frozen=True)
class Dump:
    """Everything under the prefix at one revision, parsed."""

    revision: int
    pools: dict[str, tuple[Pool, int]]
    blocks: dict[str, tuple[Block, int]]          # block cidr -> (block, mod)
    handles: dict[str, tuple[HandleRecord, int]]
    affinities: dict[str, tuple[AffinityIndex, int]]
    reservations: list[IPNetwork]


@dataclass(frozen=True)
class Lease:
    """One address held under a handle. ``seq`` makes a later release exact
    (``release_ip(ip, seq=...)`` cannot free a reused address)."""

    ip: str
    seq: int
    block: str
    handle: str
    new: bool       # False when an existing lease of the handle was returned


@dataclass
class GcReport:
    released: list[dict]
    skipped: list[dict]
    waiting: list[dict]
    freed_blocks: list[str]
    kept_blocks: list[str]
    dry_run: bool

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class Ipam:
    """IPAM for one node (``node``) over a :class:`~ipam.store.Store`.

    ``clock`` is only read when a public call gets ``now=None``.
    """

    def __init__(self, store: Store, node: str, *, prefix: str = DEFAULT_PREFIX,
                 node_labels: Mapping[str, str] | None = None, max_blocks_per_node: int = 20,
                 strict_affinity: bool = False, cooldown: float = 30.0, max_retries: int = 50,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.store = store
        self.node = check_node(node)
        self.keys = Keys(prefix)
        self.node_labels = dict(node_labels or {})
        self.max_blocks_per_node = int(max_blocks_per_node)
        self.strict_affinity = bool(strict_affinity)
        self.cooldown = float(cooldown)
        self.max_retries = int(max_retries)
        self.clock = clock
        self.sleep = sleep
        self._jitter = random.Random()
        self.log = structlog.get_logger("ipam").bind(node=self.node)
        # Read caches (see module docstring): value + mod revision as last seen.
        self._pools: dict[str, tuple[Pool, int]] | None = None
        self._resv: tuple[list[IPNetwork], int] | None = None
        self._aff: tuple[AffinityIndex, int] | None = None
        self._blocks: dict[str, tuple[Block, int]] = {}
        self._handles: OrderedDict[str, tuple[HandleRecord, int]] = OrderedDict()
        self._resv_ord: dict[str, frozenset[int]] = {}
        self._hint: tuple[str, str] | None = None     # (block key, cidr) last allocated from
        # Counters for metrics and tests: allocations, conflicts (lost CAS races), claims.
        self.stats: Counter[str] = Counter()

    # ================================================================ caches

    def _now(self, now: float | None) -> float:
        return self.clock() if now is None else float(now)

    def _load_pools(self) -> dict[str, tuple[Pool, int]]:
        _, kvs = self.store.range(self.keys.pools())
        self._pools = {}
        for kv in kvs:
            p = Pool.from_dict(json.loads(kv.value))
            self._pools[str(p.cidr)] = (p, kv.mod_revision)
        return self._pools

    def _pool_map(self) -> dict[str, tuple[Pool, int]]:
        return self._pools if self._pools is not None else self._load_pools()

    def _load_resv(self) -> tuple[list[IPNetwork], int]:
        kv = self.store.get(self.keys.reservations())
        self._set_resv(kv)
        assert self._resv is not None
        return self._resv

    def _set_resv(self, kv: KV | None) -> None:
        nets = [ipaddress.ip_network(c) for c in json.loads(kv.value)] if kv else []
        new = (nets, kv.mod_revision if kv else 0)
        if self._resv is None or self._resv[1] != new[1]:
            self._resv_ord.clear()
        self._resv = new

    def _reservations(self) -> tuple[list[IPNetwork], int]:
        return self._resv if self._resv is not None else self._load_resv()

    def _reserved(self, block: IPNetwork) -> frozenset[int]:
        self._reservations()    # (re)loads after invalidation, dropping stale ordinals
        k = str(block)
        if k not in self._resv_ord:
            self._resv_ord[k] = reserved_ordinals(block, self._reservations()[0])
        return self._resv_ord[k]

    def _load_aff(self) -> tuple[AffinityIndex, int]:
        self._set_aff(self.store.get(self.keys.affinity(self.node)))
        assert self._aff is not None
        return self._aff

    def _set_aff(self, kv: KV | None) -> None:
        self._aff = ((AffinityIndex.from_json(kv.value), kv.mod_revision) if kv
                     else (AffinityIndex(self.node), 0))

    def _affinity(self) -> tuple[AffinityIndex, int]:
        return self._aff if self._aff is not None else self._load_aff()

    def _set_block(self, key: str, kv: KV | None) -> tuple[Block, int] | None:
        if kv is None:
            self._blocks.pop(key, None)
            return None
        v = (Block.from_json(kv.value), kv.mod_revision)
        self._blocks[key] = v
        return v

    def _block(self, key: str, fresh: bool = False) -> tuple[Block, int] | None:
        if not fresh and key in self._blocks:
            return self._blocks[key]
        return self._set_block(key, self.store.get(key))

    def _set_handle(self, key: str, rec: HandleRecord | None, mod: int) -> None:
        self._handles.pop(key, None)
        if rec is not None:
            self._handles[key] = (rec, mod)
            while len(self._handles) > 20000:
                self._handles.popitem(last=False)

    def _handle(self, key: str, fresh: bool = False) -> tuple[HandleRecord | None, int]:
        if not fresh and key in self._handles:
            return self._handles[key]
        kv = self.store.get(key)
        rec = HandleRecord.from_json(kv.value) if kv else None
        self._set_handle(key, rec, kv.mod_revision if kv else 0)
        return rec, (kv.mod_revision if kv else 0)

    def _refresh_from(self, res: TxnResult) -> None:
        """Refresh caches from the current values a failed transaction returned."""
        for key, kv in res.current.items():
            if key.startswith(self.keys.blocks()):
                self._set_block(key, kv)
            elif key.startswith(self.keys.handles()):
                rec = HandleRecord.from_json(kv.value) if kv else None
                self._set_handle(key, rec, kv.mod_revision if kv else 0)
            elif key == self.keys.reservations():
                self._set_resv(kv)
            elif key == self.keys.affinity(self.node):
                self._set_aff(kv)
            elif key.startswith(self.keys.pools()) and self._pools is not None:
                cidr = key[len(self.keys.pools()):].replace("-", "/")
                if kv is None:
                    self._pools.pop(str(ipaddress.ip_network(cidr)), None)
                else:
                    p = Pool.from_dict(json.loads(kv.value))
                    self._pools[str(p.cidr)] = (p, kv.mod_revision)

    def invalidate(self) -> None:
        """Drop every cache (the next call reads from the store)."""
        self._pools = None
        self._resv = None
        self._aff = None
        self._blocks.clear()
        self._handles.clear()
        self._resv_ord.clear()

    def _pool_of(self, ip: IPAddress) -> tuple[Pool, int] | None:
        for _ in range(2):
            for p, mod in self._pool_map().values():
                if ip in p.cidr:
                    return p, mod
            self._load_pools()
        return None

    # ================================================================ pools

    def add_pool(self, cidr: str, block_size: int | None = None, **opts) -> Pool:
        """Create a pool; refused if it overlaps another (atomic with ``poolsrev``)."""
        pool = Pool.new(cidr, block_size, **opts)
        for _ in range(self.max_retries):
            rev_kv = self.store.get(self.keys.poolsrev())
            pools = self._load_pools()
            clash = overlapping(pool.cidr, [p.cidr for p, _ in pools.values()])
            if clash:
                raise IpamPoolOverlap(f"pool {pool.cidr} overlaps existing pool(s) "
                                      f"{', '.join(map(str, clash))}; pick a disjoint CIDR or "
                                      f"delete the other pool first")
            res = self.store.txn(
                [Expect(self.keys.poolsrev(), rev_kv.mod_revision if rev_kv else 0),
                 Expect(self.keys.pool(pool.cidr), 0)],
                [Put(self.keys.pool(pool.cidr), json.dumps(pool.to_dict()).encode()),
                 Put(self.keys.poolsrev(), str(pool.cidr).encode())])
            if res.succeeded:
                self._pools = None
                self.log.info("pool_added", pool=str(pool.cidr), block_size=pool.block_size)
                return pool
        raise IpamConflict(f"adding pool {pool.cidr}: gave up after {self.max_retries} "
                           f"conflicting pool changes; retry")

    def list_pools(self) -> list[Pool]:
        return sorted((p for p, _ in self._load_pools().values()),
                      key=lambda p: (p.cidr.version, p.cidr))

    def get_pool(self, cidr: str) -> Pool:
        net = parse_network(cidr, "pool CIDR")
        kv = self.store.get(self.keys.pool(net))
        if kv is None:
            raise IpamNotFound(f"pool {net} does not exist; list pools with `noderouter pool list`")
        return Pool.from_dict(json.loads(kv.value))

    def update_pool(self, cidr: str, **changes) -> Pool:
        """Change a pool's settings (not its CIDR or block size, fixed once created)."""
        if {"cidr", "block_size"} & changes.keys():
            raise IpamInvalid(f"pool {cidr}: CIDR and block size are fixed once created; "
                              f"create a new pool instead")
        net = parse_network(cidr, "pool CIDR")
        for _ in range(self.max_retries):
            kv = self.store.get(self.keys.pool(net))
            if kv is None:
                raise IpamNotFound(f"pool {net} does not exist; list pools with `noderouter pool list`")
            old = Pool.from_dict(json.loads(kv.value))
            new = Pool.new(str(old.cidr), old.block_size,
                           **{**{k: v for k, v in old.to_dict().items()
                                 if k not in ("cidr", "block_size")}, **changes})
            res = self.store.txn([Expect(kv.key, kv.mod_revision)],
                                 [Put(kv.key, json.dumps(new.to_dict()).encode())])
            if res.succeeded:
                self._pools = None
                self.log.info("pool_updated", pool=str(net), **{k: str(v) for k, v in changes.items()})
                return new
        raise IpamConflict(f"updating pool {net}: gave up after {self.max_retries} conflicts; retry")

    def delete_pool(self, cidr: str, force: bool = False, now: float | None = None) -> dict:
        """Delete a pool and its blocks.

        Refused while any address is allocated unless ``force`` (which releases
        them). The pool is first marked ``deleting`` (no new claims or
        allocations: those transactions compare the pool key), then blocks are
        removed one transaction at a time; a crash part-way leaves a pool marked
        deleting that a second ``delete_pool`` finishes.
        """
        now = self._now(now)
        net = parse_network(cidr, "pool CIDR")
        pkey = self.keys.pool(net)
        kv = self.store.get(pkey)
        if kv is None:
            raise IpamNotFound(f"pool {net} does not exist; list pools with `noderouter pool list`")
        pool = Pool.from_dict(json.loads(kv.value))
        in_use = self._pool_allocations(pool)
        if in_use and not force:
            raise IpamPoolInUse(f"pool {net} still has {in_use} allocated address(es); release "
                                f"them (noderouter ipam release) or delete with --force")
        was = pool
        if not pool.deleting:
            res = self.store.txn([Expect(pkey, kv.mod_revision)],
                                 [Put(pkey, json.dumps(replace(pool, deleting=True).to_dict()).encode())])
            if not res.succeeded:
                raise IpamConflict(f"pool {net} changed while deleting it; retry")
            self._pools = None
        in_use = self._pool_allocations(pool)
        if in_use and not force:
            # An allocation slipped in before the mark: undo the mark, refuse.
            kv2 = self.store.get(pkey)
            if kv2 is not None:
                self.store.txn([Expect(pkey, kv2.mod_revision)],
                               [Put(pkey, json.dumps(was.to_dict()).encode())])
            raise IpamPoolInUse(f"pool {net} still has {in_use} allocated address(es); release "
                                f"them (noderouter ipam release) or delete with --force")
        released = 0
        _, kvs = self.store.range(self.keys.blocks(pool.cidr))
        for bkv in kvs:
            block = Block.from_json(bkv.value)
            for ordinal in sorted(block.allocations):
                if self.release_ip(str(block.ip(ordinal)), now=now, _cooldown=0.0):
                    released += 1
            self._free_block(bkv.key, expect_empty=True)
        for _ in range(self.max_retries):
            kv = self.store.get(pkey)
            rev_kv = self.store.get(self.keys.poolsrev())
            if kv is None:
                break
            res = self.store.txn([Expect(pkey, kv.mod_revision),
                                  Expect(self.keys.poolsrev(), rev_kv.mod_revision if rev_kv else 0)],
                                 [Delete(pkey), Put(self.keys.poolsrev(), b"delete " + str(net).encode())])
            if res.succeeded:
                break
        self._pools = None
        self.log.info("pool_deleted", pool=str(net), forced=force, released=released,
                      blocks=len(kvs))
        return {"pool": str(net), "released": released, "blocks": len(kvs), "forced": force}

    def _pool_allocations(self, pool: Pool) -> int:
        _, kvs = self.store.range(self.keys.blocks(pool.cidr))
        return sum(len(Block.from_json(kv.value).allocations) for kv in kvs)

    # ================================================================ reservations

    def reservations(self) -> list[str]:
        return [str(n) for n in self._load_resv()[0]]

    def reserve(self, cidr: str) -> list[str]:
        """Never hand out addresses in ``cidr`` (existing allocations stay)."""
        return self._edit_resv(parse_network(cidr, "reservation"), add=True)

    def unreserve(self, cidr: str) -> list[str]:
        return self._edit_resv(parse_network(cidr, "reservation"), add=False)

    def _edit_resv(self, net: IPNetwork, add: bool) -> list[str]:
        key = self.keys.reservations()
        for _ in range(self.max_retries):
            nets, mod = self._load_resv()
            new = sorted({str(n) for n in nets} | {str(net)} if add
                         else {str(n) for n in nets} - {str(net)})
            res = self.store.txn([Expect(key, mod)], [Put(key, json.dumps(new).encode())], [key])
            if res.succeeded:
                self._resv = None
                self.log.info("reservation_" + ("added" if add else "removed"), cidr=str(net))
                return new
        raise IpamConflict(f"editing reservations: gave up after {self.max_retries} conflicts; retry")

    # ================================================================ allocation

    def _eligible(self, pool: str | None) -> tuple[list[tuple[Pool, int]], list[str]]:
        reasons: list[str] = []
        out = []
        want = parse_network(pool, "pool CIDR") if pool else None
        for p, mod in sorted(self._pool_map().values(), key=lambda pm: net_sort_key(pm[0].cidr)):
            if want is not None and p.cidr != want:
                continue
            if p.deleting:
                reasons.append(f"pool {p.cidr}: being deleted")
            elif p.disabled:
                reasons.append(f"pool {p.cidr}: disabled")
            elif not selector_matches(p.node_selector, self.node, self.node_labels):
                reasons.append(f"pool {p.cidr}: node selector {p.node_selector!r} excludes "
                               f"node {self.node}")
            else:
                out.append((p, mod))
        if want is not None and not out and not reasons:
            reasons.append(f"pool {want}: does not exist")
        return out, reasons

    def _strict(self, pool: Pool) -> bool:
        return self.strict_affinity or pool.strict_affinity

    def allocate(self, handle: str, attrs: Mapping[str, str] | None = None,
                 pool: str | None = None, now: float | None = None) -> str:
        """Allocate one address for ``handle`` and return it (a string); see
        :meth:`allocate_lease`."""
        return self.allocate_lease(handle, attrs, pool, now).ip

    def allocate_lease(self, handle: str, attrs: Mapping[str, str] | None = None,
                       pool: str | None = None, now: float | None = None) -> Lease:
        """Allocate one address for ``handle``; returns the lease (ip, seq, block).

        Idempotent per handle: if ``handle`` already holds an address in an
        eligible pool (e.g. a retried CNI ADD), that address is returned.
        Order: the node's confirmed blocks, then its pending claims (confirmed
        first), then a newly claimed block, then borrowing from other nodes'
        blocks (unless strict affinity). Raises :class:`IpamExhausted` naming
        every pool and why it had nothing.
        """
        check_handle(handle)
        now = self._now(now)
        attrs = {**(attrs or {})}
        attrs.setdefault("node", self.node)
        hkey = self.keys.handle(handle)
        hrec: HandleRecord | None = None
        hmod = 0
        refreshed = False
        for attempt in range(self.max_retries):
            pools, reasons = self._eligible(pool)
            if hrec is not None:
                for ip, (cidr, seq) in hrec.ips.items():
                    if any(parse_ip(ip) in p.cidr for p, _ in pools):
                        self.log.debug("allocate_existing", handle=handle, ip=ip)
                        return Lease(ip, seq, cidr, handle, False)
            resv_mod = self._reservations()[1]
            choice, why = self._choose(pool, now) if pools else (None, [])
            if choice is None:
                if not refreshed:
                    # Decide exhaustion on fresh data only.
                    self.invalidate()
                    refreshed = True
                    hrec, hmod = self._handle(hkey, fresh=True)
                    continue
                self._exhausted(handle, reasons + why)
            pool_obj, pmod, bkey, block, bmod, ordinal = choice
            new_block = block.allocate(ordinal, handle, self.node, attrs, now)
            ip = str(block.ip(ordinal))
            seq = new_block.seq
            base = hrec if hrec is not None else HandleRecord(handle)
            new_rec = base.with_ip(ip, str(block.cidr), seq, attrs)
            if self._reservations()[1] != resv_mod:
                continue    # reservations reloaded while choosing: choose again
            # Only the likely losers of a race are read back on failure (fewer
            # messages per call: protobuf is pure Python here); if neither moved,
            # the pool or the reservations did and are reloaded.
            res = self.store.txn(
                [Expect(bkey, bmod), Expect(hkey, hmod), Expect(self.keys.pool(pool_obj.cidr), pmod),
                 Expect(self.keys.reservations(), resv_mod)],
                [Put(bkey, new_block.to_json()), Put(hkey, new_rec.to_json())],
                [bkey, hkey])
            if res.succeeded:
                self._blocks[bkey] = (new_block, res.revision)
                self._set_handle(hkey, new_rec, res.revision)
                self.stats["allocations"] += 1
                if block.affinity != self.node:
                    self.stats["borrowed"] += 1
                self.log.debug("allocated", handle=handle, ip=ip, seq=seq, block=str(block.cidr),
                               borrowed=block.affinity != self.node, attempt=attempt)
                return Lease(ip, seq, str(block.cidr), handle, True)
            self._refresh_from(res)
            hkv, bkv = res.current.get(hkey), res.current.get(bkey)
            hrec = HandleRecord.from_json(hkv.value) if hkv else None
            hmod = hkv.mod_revision if hkv else 0
            if (bkv.mod_revision if bkv else 0) == bmod and hmod == 0:
                self._pools = None
                self._resv = None
            self.stats["conflicts"] += 1
            self.log.debug("allocate_conflict", handle=handle, block=str(block.cidr), attempt=attempt)
            self._back_off(attempt)
        raise IpamConflict(f"allocating for handle {handle}: {self.max_retries} compare-and-swap "
                           f"conflicts in a row; the blocks are too contended — retry, or give "
                           f"node {self.node} more blocks")

    def _back_off(self, attempt: int) -> None:
        """After a few conflicts in a row, wait a random moment before the next try.

        Racers that all retry at once keep choosing the same lowest free ordinal: measured
        (tests/ipam/test_etcd_faults.py, 3 owners + 3 borrowers on one block set, 2 busy
        cores) a borrower lost 50 times in a row. Full jitter, capped at 50 ms, breaks the
        lockstep; the first two retries stay immediate (the common, uncontended case).
        """
        if attempt >= 2:
            self.sleep(self._jitter.uniform(0, min(0.05, 0.002 * 2 ** attempt)))

    def _exhausted(self, handle: str, reasons: list[str]) -> None:
        if not self._pool_map():
            raise IpamExhausted(f"no address for handle {handle} on node {self.node}: no IP pool "
                                f"exists; add one with `noderouter pool add <cidr>`")
        raise IpamExhausted(
            f"no address for handle {handle} on node {self.node}: " + "; ".join(reasons)
            + ". Fix: add or enable a pool (`noderouter pool add`), raise max_blocks_per_node "
            f"(now {self.max_blocks_per_node}), allow borrowing (strict affinity off), or "
            "reclaim leaks (`noderouter ipam gc`)")

    def _choose(self, pool_filter: str | None, now: float):
        """Pick (pool, pool mod, block key, block, block mod, ordinal), claiming or
        confirming blocks as needed. Returns (None, reasons) when nothing fits."""
        for _ in range(self.max_retries):
            pools, _why = self._eligible(pool_filter)
            by_cidr = {str(p.cidr): (p, m) for p, m in pools}
            aff, _amod = self._affinity()
            # Fast path: the block the last allocation went to, if it still has room.
            hint = self._hint
            if hint is not None and aff.blocks.get(hint[1]) == CONFIRMED and hint[0] in self._blocks:
                pc = self._pool_cidr_for(hint[1], by_cidr)
                block, bmod = self._blocks[hint[0]]
                if pc is not None and block.affinity == self.node and block.confirmed:
                    o = block.pick(self._reserved(block.cidr), now)
                    if o is not None:
                        p, pmod = by_cidr[pc]
                        return (p, pmod, hint[0], block, bmod, o), []
            own = []
            for c, st in sorted(aff.blocks.items()):
                pc = self._pool_cidr_for(c, by_cidr)
                if pc is not None:
                    own.append((c, st, pc))
            restart = False
            cooling = 0
            # 1. confirmed own blocks, 2. own pending claims (confirm first)
            for cidr, state, pc in sorted(own, key=lambda x: x[1] != CONFIRMED):
                p, pmod = by_cidr[pc]
                bkey = self.keys.block(p.cidr, cidr)
                got = self._block(bkey)
                if got is None or got[0].affinity != self.node:
                    got = self._block(bkey, fresh=True)
                if got is None or got[0].affinity != self.node:
                    self._drop_stale_affinity(cidr)
                    restart = True
                    break
                block, bmod = got
                if state != CONFIRMED or not block.confirmed:
                    self._confirm(bkey, block, bmod)
                    restart = True
                    break
                o = block.pick(self._reserved(block.cidr), now)
                if o is not None:
                    self._hint = (bkey, cidr)
                    return (p, pmod, bkey, block, bmod, o), []
                cooling += block.cooling(now)
            if restart:
                continue
            # 3. claim a new block
            reasons: list[str] = []
            if len(aff.blocks) >= self.max_blocks_per_node:
                reasons.append(f"node {self.node} holds the maximum of {self.max_blocks_per_node} "
                               f"blocks, all full")
            else:
                claimed = False
                for p, pmod in pools:
                    r = self._claim(p, pmod, now)
                    if r == "restart":
                        claimed = True
                        break
                    if r is None:
                        reasons.append(f"pool {p.cidr}: all {p.n_blocks} blocks of /{p.block_size} "
                                       f"are claimed")
                if claimed:
                    continue
            if cooling:
                reasons.append(f"{cooling} address(es) in the node's blocks are in release "
                               f"cooldown ({self.cooldown:g}s)")
            # 4. borrow from other nodes' blocks
            for p, pmod in pools:
                if self._strict(p):
                    reasons.append(f"pool {p.cidr}: strict affinity forbids borrowing from "
                                   f"other nodes' blocks")
                    continue
                _, kvs = self.store.range(self.keys.blocks(p.cidr))
                for kv in kvs:
                    got = self._set_block(kv.key, kv)
                    assert got is not None
                    block, bmod = got
                    if block.affinity == self.node or not block.confirmed:
                        continue
                    o = block.pick(self._reserved(block.cidr), now)
                    if o is not None:
                        self.log.info("borrowing", block=str(block.cidr), owner=block.affinity)
                        return (p, pmod, kv.key, block, bmod, o), []
                reasons.append(f"pool {p.cidr}: no free address to borrow in other nodes' blocks")
            return None, reasons
        raise IpamConflict(f"node {self.node}: block claims kept conflicting "
                           f"({self.max_retries} times); retry")

    @staticmethod
    def _pool_cidr_for(block_cidr: str, by_cidr: Mapping[str, tuple[Pool, int]]) -> str | None:
        net = _net(block_cidr)
        for c, (p, _) in by_cidr.items():
            if net.version == p.cidr.version and net.subnet_of(p.cidr):
                return c
        return None

    def _claim(self, pool: Pool, pmod: int, now: float, only: IPNetwork | None = None):
        """Claim a free block of ``pool`` for this node (phase 1: pending) and confirm
        it (phase 2). Returns "restart" when the caller should choose again (a
        block was claimed, or our index changed under us), None when the pool
        has no free block."""
        aff, amod = self._affinity()
        # Keys only: a pool's blocks can be megabytes of JSON, and a claim only
        # needs to know which block keys exist.
        _, kvs = self.store.range(self.keys.blocks(pool.cidr), keys_only=True)
        taken = {kv.key for kv in kvs}
        order = ([pool.block_index(only)] if only is not None else claim_order(pool, self.node))
        for idx in order:
            cidr = pool.block_at(idx)
            bkey = self.keys.block(pool.cidr, cidr)
            if bkey in taken:
                continue
            if len(self._reserved(cidr)) >= cidr.num_addresses:
                continue  # wholly reserved: claiming it would only waste the node's block quota
            block = Block(cidr=cidr, pool=pool.cidr, affinity=self.node, state=PENDING,
                          claimed_at=now)
            new_aff = aff.with_block(str(cidr), PENDING)
            akey = self.keys.affinity(self.node)
            pkey = self.keys.pool(pool.cidr)
            res = self.store.txn([Expect(bkey, 0), Expect(akey, amod), Expect(pkey, pmod)],
                                 [Put(bkey, block.to_json()), Put(akey, new_aff.to_json())],
                                 [bkey, akey, pkey])
            if not res.succeeded:
                self._refresh_from(res)
                cur_a, cur_p = res.current.get(akey), res.current.get(pkey)
                if (cur_a.mod_revision if cur_a else 0) != amod:
                    return "restart"    # another process of this node claimed: look again
                if cur_p is None or cur_p.mod_revision != pmod:
                    return "restart"    # the pool changed (disabled, deleting)
                taken.add(bkey)         # somebody else got this block: walk on
                continue
            self._blocks[bkey] = (block, res.revision)
            self._aff = (new_aff, res.revision)
            self.stats["claims"] += 1
            self.log.info("block_claimed", block=str(cidr), pool=str(pool.cidr), state=PENDING)
            self._confirm(bkey, block, res.revision)
            return "restart"
        return None

    def _confirm(self, bkey: str, block: Block, bmod: int) -> bool:
        """Phase 2 of a claim: pending -> confirmed, block and node index together."""
        aff, amod = self._affinity()
        akey = self.keys.affinity(self.node)
        new_block = block.confirm()
        new_aff = aff.with_block(str(block.cidr), CONFIRMED)
        res = self.store.txn([Expect(bkey, bmod), Expect(akey, amod)],
                             [Put(bkey, new_block.to_json()), Put(akey, new_aff.to_json())],
                             [bkey, akey])
        if res.succeeded:
            self._blocks[bkey] = (new_block, res.revision)
            self._aff = (new_aff, res.revision)
            self.log.info("block_confirmed", block=str(block.cidr))
            return True
        self._refresh_from(res)
        return False

    def _drop_stale_affinity(self, cidr: str) -> None:
        """Our index names a block that is gone or no longer ours (freed by gc):
        remove the entry (CAS; a conflict just means someone else fixed it)."""
        aff, amod = self._load_aff()
        if cidr not in aff.blocks:
            return
        akey = self.keys.affinity(self.node)
        rest = aff.without_block(cidr)
        res = self.store.txn([Expect(akey, amod)], [Put(akey, rest.to_json())], [akey])
        if res.succeeded:
            self._aff = (rest, res.revision)
            self.log.info("affinity_entry_dropped", block=cidr)
        else:
            self._refresh_from(res)

    def assign(self, ip: str, handle: str, attrs: Mapping[str, str] | None = None,
               now: float | None = None) -> str:
        """Assign the chosen address ``ip`` to ``handle`` (claiming its block for this
        node if nobody holds it). Ignores release cooldown; refuses reserved and
        held addresses and other nodes' blocks under strict affinity."""
        check_handle(handle)
        now = self._now(now)
        addr = parse_ip(ip)
        attrs = {**(attrs or {})}
        attrs.setdefault("node", self.node)
        found = self._pool_of(addr)
        if found is None:
            raise IpamNotFound(f"address {addr} is in no IP pool; add a pool containing it "
                               f"(`noderouter pool add`) first")
        pool, _ = found
        hkey = self.keys.handle(handle)
        for _attempt in range(self.max_retries):
            pool, pmod = self._pool_of(addr) or (None, 0)
            if pool is None or pool.deleting:
                raise IpamNotFound(f"pool of {addr} is gone or being deleted")
            resv, resv_mod = self._reservations()
            if any(addr in r for r in resv):
                raise IpamReserved(f"address {addr} is reserved; remove the reservation first "
                                   f"or pick another address")
            cidr = pool.block_for(addr)
            bkey = self.keys.block(pool.cidr, cidr)
            got = self._block(bkey)
            if got is None:
                aff, _ = self._affinity()
                if len(aff.blocks) >= self.max_blocks_per_node:
                    raise IpamExhausted(f"cannot assign {addr}: its block {cidr} is unclaimed and "
                                        f"node {self.node} already holds the maximum of "
                                        f"{self.max_blocks_per_node} blocks; raise "
                                        f"max_blocks_per_node or free a block (`noderouter ipam gc`)")
                self._claim(pool, pmod, now, only=cidr)
                continue
            block, bmod = got
            if block.affinity != self.node:
                if self._strict(pool):
                    raise IpamAffinityError(f"cannot assign {addr}: block {cidr} belongs to node "
                                            f"{block.affinity} and pool {pool.cidr} has strict "
                                            f"affinity; assign it on that node")
                if not block.confirmed:
                    raise IpamConflict(f"cannot assign {addr}: block {cidr} is a pending claim "
                                       f"of node {block.affinity}; retry in a moment")
            elif not block.confirmed:
                self._confirm(bkey, block, bmod)
                continue
            ordinal = block.ordinal(addr)
            holder = block.allocations.get(ordinal)
            if holder is not None:
                if holder.handle == handle:
                    return str(addr)
                raise IpamAddressInUse(f"address {addr} is held by handle {holder.handle} "
                                       f"(node {holder.node}); release it first "
                                       f"(`noderouter ipam release --ip {addr}`) or pick another")
            hrec, hmod = self._handle(hkey)
            new_block = block.allocate(ordinal, handle, self.node, attrs, now)
            new_rec = (hrec or HandleRecord(handle)).with_ip(str(addr), str(cidr), new_block.seq,
                                                             attrs)
            res = self.store.txn(
                [Expect(bkey, bmod), Expect(hkey, hmod), Expect(self.keys.pool(pool.cidr), pmod),
                 Expect(self.keys.reservations(), resv_mod)],
                [Put(bkey, new_block.to_json()), Put(hkey, new_rec.to_json())],
                [bkey, hkey, self.keys.pool(pool.cidr), self.keys.reservations()])
            if res.succeeded:
                self._blocks[bkey] = (new_block, res.revision)
                self._set_handle(hkey, new_rec, res.revision)
                self.log.info("assigned", handle=handle, ip=str(addr), seq=new_block.seq)
                return str(addr)
            self._refresh_from(res)
        raise IpamConflict(f"assigning {addr} to {handle}: {self.max_retries} conflicts in a row; retry")

    # ================================================================ release

    def _block_key_for(self, ip: IPAddress) -> str | None:
        found = self._pool_of(ip)
        if found is None:
            return None
        pool = found[0]
        return self.keys.block(pool.cidr, pool.block_for(ip))

    def release_ip(self, ip: str, seq: int | None = None, handle: str | None = None,
                   now: float | None = None, _cooldown: float | None = None) -> bool:
        """Release one address. With ``seq`` (and/or ``handle``) the release only
        happens if the address is still held under that lease — a stale release
        of a reused address is a no-op. Returns True if released."""
        now = self._now(now)
        addr = parse_ip(ip)
        cooldown = self.cooldown if _cooldown is None else _cooldown
        bkey = self._block_key_for(addr)
        if bkey is None:
            raise IpamNotFound(f"address {addr} is in no IP pool; nothing to release")
        fresh = False
        for _ in range(self.max_retries):
            got = self._block(bkey, fresh=fresh)
            a = None
            if got is not None:
                block, bmod = got
                ordinal = block.ordinal(addr)
                a = block.allocations.get(ordinal)
            stale = a is not None and ((seq is not None and a.seq != seq)
                                       or (handle is not None and a.handle != handle))
            if (a is None or stale) and not fresh:
                fresh = True    # decide "not held" on a fresh read only
                continue
            if a is None:
                return False
            if stale:
                self.log.info("release_stale", ip=str(addr), want_seq=seq, have_seq=a.seq,
                              want_handle=handle, have_handle=a.handle)
                return False
            hkey = self.keys.handle(a.handle)
            hrec, hmod = self._handle(hkey)
            ops: list[Put | Delete] = [Put(bkey, block.release(ordinal, now, cooldown).to_json())]
            new_rec = None
            if hrec is not None and str(addr) in hrec.ips:
                new_rec = hrec.without_ip(str(addr))
                ops.append(Put(hkey, new_rec.to_json()) if new_rec.ips else Delete(hkey))
            res = self.store.txn([Expect(bkey, bmod), Expect(hkey, hmod)], ops, [bkey, hkey])
            if res.succeeded:
                self._blocks[bkey] = (block.release(ordinal, now, cooldown), res.revision)
                self._set_handle(hkey, new_rec if new_rec and new_rec.ips else None, res.revision)
                self.log.debug("released", ip=str(addr), handle=a.handle, seq=a.seq)
                return True
            self._refresh_from(res)
        raise IpamConflict(f"releasing {addr}: {self.max_retries} conflicts in a row; retry")

    def release_handle(self, handle: str, now: float | None = None) -> list[str]:
        """Release every address held by ``handle``; returns them (empty if none)."""
        check_handle(handle)
        now = self._now(now)
        hkey = self.keys.handle(handle)
        fresh = False
        for _ in range(self.max_retries):
            hrec, hmod = self._handle(hkey, fresh=fresh)
            if hrec is None:
                if not fresh:
                    fresh = True
                    continue
                return []
            expect = [Expect(hkey, hmod)]
            new_blocks: dict[str, Block] = {}
            released = []
            reads = [hkey]
            for ip, (_cidr, seq) in sorted(hrec.ips.items()):
                addr = parse_ip(ip)
                bkey = self._block_key_for(addr)
                if bkey is None:
                    continue
                if bkey not in new_blocks:
                    got = self._block(bkey, fresh=fresh)
                    if got is None:
                        expect.append(Expect(bkey, 0))
                        reads.append(bkey)
                        continue
                    new_blocks[bkey] = got[0]
                    expect.append(Expect(bkey, got[1]))
                    reads.append(bkey)
                b = new_blocks[bkey]
                o = b.ordinal(addr)
                a = b.allocations.get(o)
                if a is not None and a.handle == handle and a.seq == seq:
                    new_blocks[bkey] = b.release(o, now, self.cooldown)
                    released.append(ip)
            ops: list[Put | Delete] = [Put(k, b.to_json()) for k, b in new_blocks.items()]
            ops.append(Delete(hkey))
            res = self.store.txn(expect, ops, reads)
            if res.succeeded:
                for k, b in new_blocks.items():
                    self._blocks[k] = (b, res.revision)
                self._set_handle(hkey, None, 0)
                self.log.debug("released_handle", handle=handle, ips=released)
                return released
            self._refresh_from(res)
            fresh = True
        raise IpamConflict(f"releasing handle {handle}: {self.max_retries} conflicts in a row; retry")

    # ================================================================ queries

    def dump(self) -> Dump:
        """Everything under the prefix, parsed, at one revision."""
        rev, kvs = self.store.range(self.keys.prefix)
        pools, blocks, handles, affs = {}, {}, {}, {}
        resv: list[IPNetwork] = []
        for kv in kvs:
            k = kv.key
            if k.startswith(self.keys.pools()):
                p = Pool.from_dict(json.loads(kv.value))
                pools[str(p.cidr)] = (p, kv.mod_revision)
            elif k.startswith(self.keys.blocks()):
                b = Block.from_json(kv.value)
                blocks[str(b.cidr)] = (b, kv.mod_revision)
            elif k.startswith(self.keys.handles()):
                h = HandleRecord.from_json(kv.value)
                handles[h.handle] = (h, kv.mod_revision)
            elif k.startswith(self.keys.affinities()):
                a = AffinityIndex.from_json(kv.value)
                affs[a.node] = (a, kv.mod_revision)
            elif k == self.keys.reservations():
                resv = [ipaddress.ip_network(c) for c in json.loads(kv.value)]
        return Dump(rev, pools, blocks, handles, affs, resv)

    def snapshot(self) -> tuple[int, list[Block]]:
        """(revision, blocks) — snapshot at N, then ``watch_blocks(N + 1)``."""
        rev, kvs = self.store.range(self.keys.blocks())
        return rev, [Block.from_json(kv.value) for kv in kvs]

    def watch_blocks(self, start_revision: int) -> tuple[Iterator[tuple[str, str, Block | None, int]],
                                                         Callable]:
        """Block events from ``start_revision``: (kind, block cidr, block or None on
        delete, mod revision), plus a cancel function."""
        events, cancel = self.store.watch(self.keys.blocks(), start_revision)

        def gen():
            for ev in events:
                seg = ev.key.rsplit("/", 1)[1]
                cidr = seg[: seg.rfind("-")] + "/" + seg[seg.rfind("-") + 1:]
                block = Block.from_json(ev.value) if ev.kind == "put" else None
                yield ev.kind, cidr, block, ev.mod_revision
        return gen(), cancel

    def blocks_for_node(self, node: str | None = None) -> list[str]:
        """CIDRs of the CONFIRMED blocks affine to ``node`` (pending claims are never routed)."""
        node = node or self.node
        _, blocks = self.snapshot()
        return sorted((str(b.cidr) for b in blocks if b.affinity == node and b.confirmed),
                      key=net_sort_key)

    def borrowed_for_node(self, node: str | None = None) -> list[str]:
        """Addresses (as /32 or /128) ``node`` holds in other nodes' blocks."""
        node = node or self.node
        _, blocks = self.snapshot()
        out = []
        for b in blocks:
            if b.affinity == node:
                continue
            for o, a in b.allocations.items():
                if a.node == node:
                    ip = b.ip(o)
                    out.append(f"{ip}/{ip.max_prefixlen}")
        return sorted(out, key=net_sort_key)

    def handle_ips(self, handle: str) -> list[str]:
        rec, _ = self._handle(self.keys.handle(check_handle(handle)), fresh=True)
        return sorted(rec.ips) if rec else []

    # ================================================================ check and gc

    def check(self, live_handles: Collection[str], node: str | None = None,
              live_nodes: Collection[str] | None = None) -> CheckReport:
        """Compare allocations with the live workloads (see ipam.audit.check_state)."""
        d = self.dump()
        return check_state({c: b for c, (b, _) in d.blocks.items()},
                           {h: r for h, (r, _) in d.handles.items()},
                           {n: a.blocks for n, (a, _) in d.affinities.items()},
                           live_handles, node=node, live_nodes=live_nodes, revision=d.revision)

    def gc(self, live_handles: Collection[str] | Callable[[], Collection[str]],
           now: float | None = None, grace: float = 900.0, node: str | None = None,
           live_nodes: Collection[str] | None = None, dry_run: bool = False) -> GcReport:
        """Release leaks seen for at least ``grace`` seconds and empty blocks seen
        empty on two consecutive runs. The gc state (first sightings) lives in
        etcd under ``gc/<scope>`` so that CLI runs add up. Just before each
        release the live list is fetched again (if ``live_handles`` is callable)
        and the release is conditional on the same (handle, seq) still holding
        the address."""
        now = self._now(now)
        scope = node or CLUSTER_SCOPE
        gkey = self.keys.gc(scope)
        live0 = live_handles() if callable(live_handles) else live_handles
        for _ in range(self.max_retries):
            d = self.dump()
            blocks = {c: b for c, (b, _) in d.blocks.items()}
            rep = check_state(blocks, {h: r for h, (r, _) in d.handles.items()},
                              {n: a.blocks for n, (a, _) in d.affinities.items()},
                              live0, node=node, live_nodes=live_nodes, revision=d.revision)
            gkv = self.store.get(gkey)
            prev = json.loads(gkv.value) if gkv else {}
            plan = plan_gc(rep, blocks, prev, now, grace, node=node, live_nodes=live_nodes)
            if dry_run:
                return GcReport([], [], plan.due_leaks + plan.waiting_leaks, [], plan.kept_blocks,
                                True)
            # Re-check: fetch the live list again now that the plan is made. A leak
            # whose workload turned up is skipped and forgotten (its grace restarts).
            live_now = live_set(live_handles() if callable(live_handles) else live_handles,
                                live_nodes)
            state = dict(plan.state)
            state["leaks"] = {lid: t for lid, t in plan.state["leaks"].items()
                              if lid.split("|")[1] not in live_now}
            res = self.store.txn([Expect(gkey, gkv.mod_revision if gkv else 0)],
                                 [Put(gkey, json.dumps(state).encode())])
            if res.succeeded:
                break
        else:
            raise IpamConflict(f"gc state {gkey} kept changing (another gc running?); retry")
        released, skipped = [], []
        for leak in plan.due_leaks:
            if leak["handle"] in live_now:
                skipped.append({**leak, "reason": "workload became live"})
                continue
            try:
                ok = self.release_ip(leak["ip"], seq=leak["seq"], handle=leak["handle"], now=now)
            except IpamError as exc:
                skipped.append({**leak, "reason": str(exc)})
                continue
            (released if ok else skipped).append(
                leak if ok else {**leak, "reason": "address changed since it was seen"})
        freed = []
        for cidr in plan.due_blocks:
            b, bmod = d.blocks[cidr]
            bkey = self.keys.block(b.pool, b.cidr)
            if self._free_block(bkey, expect_mod=bmod):
                freed.append(cidr)
        self.log.info("gc_done", scope=scope, released=len(released), skipped=len(skipped),
                      waiting=len(plan.waiting_leaks), freed_blocks=len(freed))
        return GcReport(released, skipped, plan.waiting_leaks, freed, plan.kept_blocks, False)

    def _free_block(self, bkey: str, expect_mod: int | None = None,
                    expect_empty: bool = True) -> bool:
        """Delete an empty block and its node-index entry, atomically, only if the
        block is unchanged (``expect_mod``) and still empty."""
        for _ in range(self.max_retries):
            kv = self.store.get(bkey)
            if kv is None:
                return False
            if expect_mod is not None and kv.mod_revision != expect_mod:
                return False
            block = Block.from_json(kv.value)
            if expect_empty and block.allocations:
                return False
            expect = [Expect(bkey, kv.mod_revision)]
            ops: list[Put | Delete] = [Delete(bkey)]
            if block.affinity is not None:
                akey = self.keys.affinity(block.affinity)
                akv = self.store.get(akey)
                if akv is not None:
                    idx = AffinityIndex.from_json(akv.value)
                    expect.append(Expect(akey, akv.mod_revision))
                    rest = idx.without_block(str(block.cidr))
                    ops.append(Put(akey, rest.to_json()) if rest.blocks else Delete(akey))
            res = self.store.txn(expect, ops)
            if res.succeeded:
                self._blocks.pop(bkey, None)
                if block.affinity == self.node:
                    self._aff = None
                self.log.info("block_freed", block=str(block.cidr), node=block.affinity)
                return True
        raise IpamConflict(f"freeing block {bkey}: {self.max_retries} conflicts in a row; retry")


def parse_live_handles(text: str) -> set[str]:
    """A live-workload list: a JSON list of handles, or one handle per line (# comments)."""
    s = text.strip()
    if s.startswith("["):
        return {str(h) for h in json.loads(s)}
    return {ln.strip() for ln in s.splitlines() if ln.strip() and not ln.strip().startswith("#")}


def iter_allocations(blocks: Iterable[Block]) -> Iterator[tuple[str, Block, int]]:
    for b in blocks:
        for o in sorted(b.allocations):
            yield str(b.ip(o)), b, o
