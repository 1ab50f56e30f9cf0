"""The compare-and-swap allocator: blocks, affinity, borrowing; allocate, assign, release.

Write discipline (the reason nothing is ever handed out twice):

* Every write is one store transaction whose compares pin the mod revision of
  every key the decision was based on (``0`` = the key must not exist). A
  lost race makes the whole transaction fail; the failure branch returns the
  current values, the cache takes them in (``ReadCache.refresh_from``), and
  the decision is made again, at most ``max_retries`` times. Nothing but a
  conflict is retried.
* An allocation writes the block and the handle in the same transaction, so
  there is never a handle without its address or the reverse.
* Claims are two-phase (pending, then confirmed, block and node index
  together), see ipam/README.md invariant 6.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from ipam.cache import ReadCache
from ipam.context import IpamContext
from ipam.errors import (
    IpamAddressInUse,
    IpamAffinityError,
    IpamConflict,
    IpamExhausted,
    IpamNotFound,
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
    claim_order,
    eligible_pools,
    parse_ip,
    parse_network,
    request_family,
)
from ipam.store import Delete, Expect, Put


@functools.lru_cache(maxsize=65536)
def _net(cidr: str) -> IPNetwork:
    return ipaddress.ip_network(cidr)


@dataclass(frozen=True)
class Lease:
    """One address held under a handle. ``seq`` makes a later release exact
    (``release_ip(ip, seq=...)`` cannot free a reused address)."""

    ip: str
    seq: int
    block: str
    handle: str
    new: bool       # False when an existing lease of the handle was returned


class LeaseAllocator:
    """Allocation and release for the context's node, over its read cache."""

    def __init__(self, ctx: IpamContext, cache: ReadCache) -> None:
        self.ctx = ctx
        self.cache = cache
        self._hint: tuple[str, str] | None = None     # (block key, cidr) last allocated from

    def _eligible(self, pool: str | None,
                  family: int | None = None) -> tuple[list[tuple[Pool, int]], list[str]]:
        want = parse_network(pool, "pool CIDR") if pool else None
        return eligible_pools(self.cache.pool_map().values(), want, self.ctx.node,
                              self.ctx.node_labels, request_family(want, family))

    def _blocks_held(self, aff: AffinityIndex, family: int) -> int:
        """The node's blocks of one IP version: ``max_blocks_per_node`` counts per family
        (as Calico's maxBlocksPerHost does), so IPv4 blocks never starve IPv6 claims."""
        return sum(1 for c in aff.blocks if _net(c).version == family)

    def _strict(self, pool: Pool) -> bool:
        return self.ctx.strict_affinity or pool.strict_affinity

    def allocate(self, handle: str, attrs: Mapping[str, str] | None = None,
                 pool: str | None = None, now: float | None = None,
                 family: int | None = None) -> str:
        """Allocate one address for ``handle`` and return it (a string); see
        :meth:`allocate_lease`."""
        return self.allocate_lease(handle, attrs, pool, now, family).ip

    def allocate_lease(self, handle: str, attrs: Mapping[str, str] | None = None,
                       pool: str | None = None, now: float | None = None,
                       family: int | None = None) -> Lease:
        """Allocate one address for ``handle``; returns the lease (ip, seq, block).

        One IP version per call: ``pool``'s, else ``family``, else IPv4 (a
        dual-stack caller calls once per family with the same handle).
        Idempotent per handle and family: if ``handle`` already holds an address in an
        eligible pool (e.g. a retried CNI ADD), that address is returned.
        Order: the node's confirmed blocks, then its pending claims (confirmed
        first), then a newly claimed block, then borrowing from other nodes'
        blocks (unless strict affinity). Raises :class:`IpamExhausted` naming
        every pool and why it had nothing.
        """
        check_handle(handle)
        now = self.ctx.now(now)
        family = request_family(parse_network(pool, "pool CIDR") if pool else None, family)
        attrs = {**(attrs or {})}
        attrs.setdefault("node", self.ctx.node)
        hkey = self.ctx.keys.handle(handle)
        hrec: HandleRecord | None = None
        hmod = 0
        refreshed = False
        for attempt in range(self.ctx.max_retries):
            pools, reasons = self._eligible(pool, family)
            if hrec is not None:
                for ip, (cidr, seq) in hrec.ips.items():
                    if any(parse_ip(ip) in p.cidr for p, _ in pools):
                        self.ctx.log.debug("allocate_existing", handle=handle, ip=ip)
                        return Lease(ip, seq, cidr, handle, False)
            resv_mod = self.cache.reservations()[1]
            choice, why = self._choose(pool, family, now) if pools else (None, [])
            if choice is None:
                if not refreshed:
                    # Decide exhaustion on fresh data only.
                    self.cache.invalidate()
                    refreshed = True
                    hrec, hmod = self.cache.handle(hkey, fresh=True)
                    continue
                self._exhausted(handle, family, reasons + why)
            pool_obj, pmod, bkey, block, bmod, ordinal = choice
            new_block = block.allocate(ordinal, handle, self.ctx.node, attrs, now)
            ip = str(block.ip(ordinal))
            seq = new_block.seq
            base = hrec if hrec is not None else HandleRecord(handle)
            new_rec = base.with_ip(ip, str(block.cidr), seq, attrs)
            if self.cache.reservations()[1] != resv_mod:
                continue    # reservations reloaded while choosing: choose again
            # Only the likely losers of a race are read back on failure (fewer
            # messages per call: protobuf is pure Python here); if neither moved,
            # the pool or the reservations did and are reloaded.
            res = self.ctx.store.txn(
                [Expect(bkey, bmod), Expect(hkey, hmod), Expect(self.ctx.keys.pool(pool_obj.cidr), pmod),
                 Expect(self.ctx.keys.reservations(), resv_mod)],
                [Put(bkey, new_block.to_json()), Put(hkey, new_rec.to_json())],
                [bkey, hkey])
            if res.succeeded:
                self.cache.blocks[bkey] = (new_block, res.revision)
                self.cache.set_handle(hkey, new_rec, res.revision)
                self.ctx.stats["allocations"] += 1
                if block.affinity != self.ctx.node:
                    self.ctx.stats["borrowed"] += 1
                self.ctx.log.debug("allocated", handle=handle, ip=ip, seq=seq, block=str(block.cidr),
                                   borrowed=block.affinity != self.ctx.node, attempt=attempt)
                return Lease(ip, seq, str(block.cidr), handle, True)
            self.cache.refresh_from(res)
            hkv, bkv = res.current.get(hkey), res.current.get(bkey)
            hrec = HandleRecord.from_json(hkv.value) if hkv else None
            hmod = hkv.mod_revision if hkv else 0
            if (bkv.mod_revision if bkv else 0) == bmod and hmod == 0:
                self.cache.pools = None
                self.cache.resv = None
            self.ctx.stats["conflicts"] += 1
            self.ctx.log.debug("allocate_conflict", handle=handle, block=str(block.cidr), attempt=attempt)
            self._back_off(attempt)
        raise IpamConflict(f"allocating for handle {handle}: {self.ctx.max_retries} compare-and-swap "
                           f"conflicts in a row; the blocks are too contended — retry, or give "
                           f"node {self.ctx.node} more blocks")

    def _back_off(self, attempt: int) -> None:
        """After a few conflicts in a row, wait a random moment before the next try.

        Racers that all retry at once keep choosing the same lowest free ordinal: measured
        (tests/ipam/test_etcd_faults.py, 3 owners + 3 borrowers on one block set, 2 busy
        cores) a borrower lost 50 times in a row. Full jitter, capped at 50 ms, breaks the
        lockstep; the first two retries stay immediate (the common, uncontended case).
        """
        if attempt >= 2:
            self.ctx.sleep(self.ctx.jitter.uniform(0, min(0.05, 0.002 * 2 ** attempt)))

    def _exhausted(self, handle: str, family: int, reasons: list[str]) -> None:
        if not self.cache.pool_map():
            raise IpamExhausted(f"no address for handle {handle} on node {self.ctx.node}: no IP pool "
                                f"exists; add one with `noderouter pool add <cidr>`")
        if not any(p.cidr.version == family for p, _ in self.cache.pool_map().values()):
            raise IpamExhausted(f"no address for handle {handle} on node {self.ctx.node}: no "
                                f"IPv{family} pool exists; add one with `noderouter pool add <cidr>`")
        raise IpamExhausted(
            f"no address for handle {handle} on node {self.ctx.node}: " + "; ".join(reasons)
            + ". Fix: add or enable a pool (`noderouter pool add`), raise max_blocks_per_node "
            f"(now {self.ctx.max_blocks_per_node}), allow borrowing (strict affinity off), or "
            "reclaim leaks (`noderouter ipam gc`)")

    def _choose(self, pool_filter: str | None, family: int, now: float):
        """Pick (pool, pool mod, block key, block, block mod, ordinal) of IP version
        ``family``, claiming or confirming blocks as needed. Returns (None, reasons)
        when nothing fits."""
        for _ in range(self.ctx.max_retries):
            pools, _why = self._eligible(pool_filter, family)
            by_cidr = {str(p.cidr): (p, m) for p, m in pools}
            aff, _amod = self.cache.affinity()
            # Fast path: the block the last allocation went to, if it still has room.
            hint = self._hint
            if hint is not None and aff.blocks.get(hint[1]) == CONFIRMED and hint[0] in self.cache.blocks:
                pc = self._pool_cidr_for(hint[1], by_cidr)
                block, bmod = self.cache.blocks[hint[0]]
                if pc is not None and block.affinity == self.ctx.node and block.confirmed:
                    o = block.pick(self.cache.reserved(block.cidr), now)
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
                bkey = self.ctx.keys.block(p.cidr, cidr)
                got = self.cache.block(bkey)
                if got is None or got[0].affinity != self.ctx.node:
                    got = self.cache.block(bkey, fresh=True)
                if got is None or got[0].affinity != self.ctx.node:
                    self._drop_stale_affinity(cidr)
                    restart = True
                    break
                block, bmod = got
                if state != CONFIRMED or not block.confirmed:
                    self._confirm(bkey, block, bmod)
                    restart = True
                    break
                o = block.pick(self.cache.reserved(block.cidr), now)
                if o is not None:
                    self._hint = (bkey, cidr)
                    return (p, pmod, bkey, block, bmod, o), []
                cooling += block.cooling(now)
            if restart:
                continue
            # 3. claim a new block
            reasons: list[str] = []
            if self._blocks_held(aff, family) >= self.ctx.max_blocks_per_node:
                reasons.append(f"node {self.ctx.node} holds the maximum of {self.ctx.max_blocks_per_node} "
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
                               f"cooldown ({self.ctx.cooldown:g}s)")
            # 4. borrow from other nodes' blocks
            for p, pmod in pools:
                if self._strict(p):
                    reasons.append(f"pool {p.cidr}: strict affinity forbids borrowing from "
                                   f"other nodes' blocks")
                    continue
                _, kvs = self.ctx.store.range(self.ctx.keys.blocks(p.cidr))
                for kv in kvs:
                    got = self.cache.set_block(kv.key, kv)
                    assert got is not None
                    block, bmod = got
                    if block.affinity == self.ctx.node or not block.confirmed:
                        continue
                    o = block.pick(self.cache.reserved(block.cidr), now)
                    if o is not None:
                        self.ctx.log.info("borrowing", block=str(block.cidr), owner=block.affinity)
                        return (p, pmod, kv.key, block, bmod, o), []
                reasons.append(f"pool {p.cidr}: no free address to borrow in other nodes' blocks")
            return None, reasons
        raise IpamConflict(f"node {self.ctx.node}: block claims kept conflicting "
                           f"({self.ctx.max_retries} times); retry")

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
        aff, amod = self.cache.affinity()
        # Keys only: a pool's blocks can be megabytes of JSON, and a claim only
        # needs to know which block keys exist.
        _, kvs = self.ctx.store.range(self.ctx.keys.blocks(pool.cidr), keys_only=True)
        taken = {kv.key for kv in kvs}
        order = ([pool.block_index(only)] if only is not None else claim_order(pool, self.ctx.node))
        for idx in order:
            cidr = pool.block_at(idx)
            bkey = self.ctx.keys.block(pool.cidr, cidr)
            if bkey in taken:
                continue
            if len(self.cache.reserved(cidr)) >= cidr.num_addresses:
                continue  # wholly reserved: claiming it would only waste the node's block quota
            block = Block(cidr=cidr, pool=pool.cidr, affinity=self.ctx.node, state=PENDING,
                          claimed_at=now)
            new_aff = aff.with_block(str(cidr), PENDING)
            akey = self.ctx.keys.affinity(self.ctx.node)
            pkey = self.ctx.keys.pool(pool.cidr)
            res = self.ctx.store.txn([Expect(bkey, 0), Expect(akey, amod), Expect(pkey, pmod)],
                                     [Put(bkey, block.to_json()), Put(akey, new_aff.to_json())],
                                     [bkey, akey, pkey])
            if not res.succeeded:
                self.cache.refresh_from(res)
                cur_a, cur_p = res.current.get(akey), res.current.get(pkey)
                if (cur_a.mod_revision if cur_a else 0) != amod:
                    return "restart"    # another process of this node claimed: look again
                if cur_p is None or cur_p.mod_revision != pmod:
                    return "restart"    # the pool changed (disabled, deleting)
                taken.add(bkey)         # somebody else got this block: walk on
                continue
            self.cache.blocks[bkey] = (block, res.revision)
            self.cache.aff = (new_aff, res.revision)
            self.ctx.stats["claims"] += 1
            self.ctx.log.info("block_claimed", block=str(cidr), pool=str(pool.cidr), state=PENDING)
            self._confirm(bkey, block, res.revision)
            return "restart"
        return None

    def _confirm(self, bkey: str, block: Block, bmod: int) -> bool:
        """Phase 2 of a claim: pending -> confirmed, block and node index together."""
        aff, amod = self.cache.affinity()
        akey = self.ctx.keys.affinity(self.ctx.node)
        new_block = block.confirm()
        new_aff = aff.with_block(str(block.cidr), CONFIRMED)
        res = self.ctx.store.txn([Expect(bkey, bmod), Expect(akey, amod)],
                                 [Put(bkey, new_block.to_json()), Put(akey, new_aff.to_json())],
                                 [bkey, akey])
        if res.succeeded:
            self.cache.blocks[bkey] = (new_block, res.revision)
            self.cache.aff = (new_aff, res.revision)
            self.ctx.log.info("block_confirmed", block=str(block.cidr))
            return True
        self.cache.refresh_from(res)
        return False

    def _drop_stale_affinity(self, cidr: str) -> None:
        """Our index names a block that is gone or no longer ours (freed by gc):
        remove the entry (CAS; a conflict just means someone else fixed it)."""
        aff, amod = self.cache.load_affinity()
        if cidr not in aff.blocks:
            return
        akey = self.ctx.keys.affinity(self.ctx.node)
        rest = aff.without_block(cidr)
        res = self.ctx.store.txn([Expect(akey, amod)], [Put(akey, rest.to_json())], [akey])
        if res.succeeded:
            self.cache.aff = (rest, res.revision)
            self.ctx.log.info("affinity_entry_dropped", block=cidr)
        else:
            self.cache.refresh_from(res)

    def assign(self, ip: str, handle: str, attrs: Mapping[str, str] | None = None,
               now: float | None = None) -> str:
        """Assign the chosen address ``ip`` to ``handle`` (claiming its block for this
        node if nobody holds it). Ignores release cooldown; refuses reserved and
        held addresses and other nodes' blocks under strict affinity."""
        check_handle(handle)
        now = self.ctx.now(now)
        addr = parse_ip(ip)
        attrs = {**(attrs or {})}
        attrs.setdefault("node", self.ctx.node)
        found = self.cache.pool_of(addr)
        if found is None:
            raise IpamNotFound(f"address {addr} is in no IP pool; add a pool containing it "
                               f"(`noderouter pool add`) first")
        pool, _ = found
        hkey = self.ctx.keys.handle(handle)
        for _attempt in range(self.ctx.max_retries):
            pool, pmod = self.cache.pool_of(addr) or (None, 0)
            if pool is None or pool.deleting:
                raise IpamNotFound(f"pool of {addr} is gone or being deleted")
            resv, resv_mod = self.cache.reservations()
            if any(addr in r for r in resv):
                raise IpamReserved(f"address {addr} is reserved; remove the reservation first "
                                   f"or pick another address")
            cidr = pool.block_for(addr)
            bkey = self.ctx.keys.block(pool.cidr, cidr)
            got = self.cache.block(bkey)
            if got is None:
                aff, _ = self.cache.affinity()
                if self._blocks_held(aff, addr.version) >= self.ctx.max_blocks_per_node:
                    raise IpamExhausted(f"cannot assign {addr}: its block {cidr} is unclaimed and "
                                        f"node {self.ctx.node} already holds the maximum of "
                                        f"{self.ctx.max_blocks_per_node} blocks; raise "
                                        f"max_blocks_per_node or free a block (`noderouter ipam gc`)")
                self._claim(pool, pmod, now, only=cidr)
                continue
            block, bmod = got
            if block.affinity != self.ctx.node:
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
            hrec, hmod = self.cache.handle(hkey)
            new_block = block.allocate(ordinal, handle, self.ctx.node, attrs, now)
            new_rec = (hrec or HandleRecord(handle)).with_ip(str(addr), str(cidr), new_block.seq,
                                                             attrs)
            res = self.ctx.store.txn(
                [Expect(bkey, bmod), Expect(hkey, hmod), Expect(self.ctx.keys.pool(pool.cidr), pmod),
                 Expect(self.ctx.keys.reservations(), resv_mod)],
                [Put(bkey, new_block.to_json()), Put(hkey, new_rec.to_json())],
                [bkey, hkey, self.ctx.keys.pool(pool.cidr), self.ctx.keys.reservations()])
            if res.succeeded:
                self.cache.blocks[bkey] = (new_block, res.revision)
                self.cache.set_handle(hkey, new_rec, res.revision)
                self.ctx.log.info("assigned", handle=handle, ip=str(addr), seq=new_block.seq)
                return str(addr)
            self.cache.refresh_from(res)
        raise IpamConflict(f"assigning {addr} to {handle}: {self.ctx.max_retries} conflicts in a row; retry")

    def _block_key_for(self, ip: IPAddress) -> str | None:
        found = self.cache.pool_of(ip)
        if found is None:
            return None
        pool = found[0]
        return self.ctx.keys.block(pool.cidr, pool.block_for(ip))

    def release_ip(self, ip: str, seq: int | None = None, handle: str | None = None,
                   now: float | None = None, cooldown: float | None = None) -> bool:
        """Release one address. With ``seq`` (and/or ``handle``) the release only
        happens if the address is still held under that lease — a stale release
        of a reused address is a no-op. Returns True if released."""
        now = self.ctx.now(now)
        addr = parse_ip(ip)
        cooldown = self.ctx.cooldown if cooldown is None else cooldown
        bkey = self._block_key_for(addr)
        if bkey is None:
            raise IpamNotFound(f"address {addr} is in no IP pool; nothing to release")
        fresh = False
        for _ in range(self.ctx.max_retries):
            got = self.cache.block(bkey, fresh=fresh)
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
                self.ctx.log.info("release_stale", ip=str(addr), want_seq=seq, have_seq=a.seq,
                                  want_handle=handle, have_handle=a.handle)
                return False
            hkey = self.ctx.keys.handle(a.handle)
            hrec, hmod = self.cache.handle(hkey)
            ops: list[Put | Delete] = [Put(bkey, block.release(ordinal, now, cooldown).to_json())]
            new_rec = None
            if hrec is not None and str(addr) in hrec.ips:
                new_rec = hrec.without_ip(str(addr))
                ops.append(Put(hkey, new_rec.to_json()) if new_rec.ips else Delete(hkey))
            res = self.ctx.store.txn([Expect(bkey, bmod), Expect(hkey, hmod)], ops, [bkey, hkey])
            if res.succeeded:
                self.cache.blocks[bkey] = (block.release(ordinal, now, cooldown), res.revision)
                self.cache.set_handle(hkey, new_rec if new_rec and new_rec.ips else None, res.revision)
                self.ctx.log.debug("released", ip=str(addr), handle=a.handle, seq=a.seq)
                return True
            self.cache.refresh_from(res)
        raise IpamConflict(f"releasing {addr}: {self.ctx.max_retries} conflicts in a row; retry")

    def release_handle(self, handle: str, now: float | None = None) -> list[str]:
        """Release every address held by ``handle``; returns them (empty if none)."""
        check_handle(handle)
        now = self.ctx.now(now)
        hkey = self.ctx.keys.handle(handle)
        fresh = False
        for _ in range(self.ctx.max_retries):
            hrec, hmod = self.cache.handle(hkey, fresh=fresh)
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
                    got = self.cache.block(bkey, fresh=fresh)
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
                    new_blocks[bkey] = b.release(o, now, self.ctx.cooldown)
                    released.append(ip)
            ops: list[Put | Delete] = [Put(k, b.to_json()) for k, b in new_blocks.items()]
            ops.append(Delete(hkey))
            res = self.ctx.store.txn(expect, ops, reads)
            if res.succeeded:
                for k, b in new_blocks.items():
                    self.cache.blocks[k] = (b, res.revision)
                self.cache.set_handle(hkey, None, 0)
                self.ctx.log.debug("released_handle", handle=handle, ips=released)
                return released
            self.cache.refresh_from(res)
            fresh = True
        raise IpamConflict(f"releasing handle {handle}: {self.ctx.max_retries} conflicts in a row; retry")

    def free_block(self, bkey: str, expect_mod: int | None = None,
                   expect_empty: bool = True) -> bool:
        """Delete an empty block and its node-index entry, atomically, only if the
        block is unchanged (``expect_mod``) and still empty."""
        for _ in range(self.ctx.max_retries):
            kv = self.ctx.store.get(bkey)
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
                akey = self.ctx.keys.affinity(block.affinity)
                akv = self.ctx.store.get(akey)
                if akv is not None:
                    idx = AffinityIndex.from_json(akv.value)
                    expect.append(Expect(akey, akv.mod_revision))
                    rest = idx.without_block(str(block.cidr))
                    ops.append(Put(akey, rest.to_json()) if rest.blocks else Delete(akey))
            res = self.ctx.store.txn(expect, ops)
            if res.succeeded:
                self.cache.blocks.pop(bkey, None)
                if block.affinity == self.ctx.node:
                    self.cache.aff = None
                self.ctx.log.info("block_freed", block=str(block.cidr), node=block.affinity)
                return True
        raise IpamConflict(f"freeing block {bkey}: {self.ctx.max_retries} conflicts in a row; retry")

    def handle_ips(self, handle: str) -> list[str]:
        rec, _ = self.cache.handle(self.ctx.keys.handle(check_handle(handle)), fresh=True)
        return sorted(rec.ips) if rec else []

