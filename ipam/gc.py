"""Whole-state reads, check and gc: the I/O around the pure ``ipam.audit``.

``ipam.audit`` decides (``check_state``, ``plan_gc``) over one parsed
snapshot; this module reads that snapshot (``dump``), keeps gc's sightings in
etcd under ``P/gc/<scope>`` so that separate runs add up, and carries out the
plan through the lease allocator, each release conditional on the lease that
was seen (ipam/README.md, "check and gc").
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass

from ipam.audit import CheckReport, GcReport, check_state, live_set, plan_gc
from ipam.context import IpamContext
from ipam.errors import IpamConflict, IpamError
from ipam.keys import CLUSTER_SCOPE
from ipam.leases import LeaseAllocator
from ipam.model import AffinityIndex, Block, HandleRecord, IPNetwork, Pool
from ipam.store import Expect, Put


@dataclass(frozen=True)
class Dump:
    """Everything under the prefix at one revision, parsed."""

    revision: int
    pools: dict[str, tuple[Pool, int]]
    blocks: dict[str, tuple[Block, int]]          # block cidr -> (block, mod)
    handles: dict[str, tuple[HandleRecord, int]]
    affinities: dict[str, tuple[AffinityIndex, int]]
    reservations: list[IPNetwork]

    def block_values(self) -> dict[str, Block]:
        return {c: b for c, (b, _) in self.blocks.items()}

    def check(self, live_handles: Collection[str], node: str | None = None,
              live_nodes: Collection[str] | None = None) -> CheckReport:
        """``ipam.audit.check_state`` over this snapshot."""
        return check_state(self.block_values(), {h: r for h, (r, _) in self.handles.items()},
                           {n: a.blocks for n, (a, _) in self.affinities.items()},
                           live_handles, node=node, live_nodes=live_nodes, revision=self.revision)


class Auditor:
    def __init__(self, ctx: IpamContext, leases: LeaseAllocator) -> None:
        self.ctx = ctx
        self.leases = leases

    def dump(self) -> Dump:
        """Everything under the prefix, parsed, at one revision."""
        rev, kvs = self.ctx.store.range(self.ctx.keys.prefix)
        pools, blocks, handles, affs = {}, {}, {}, {}
        resv: list[IPNetwork] = []
        for kv in kvs:
            k = kv.key
            if k.startswith(self.ctx.keys.pools()):
                p = Pool.from_dict(json.loads(kv.value))
                pools[str(p.cidr)] = (p, kv.mod_revision)
            elif k.startswith(self.ctx.keys.blocks()):
                b = Block.from_json(kv.value)
                blocks[str(b.cidr)] = (b, kv.mod_revision)
            elif k.startswith(self.ctx.keys.handles()):
                h = HandleRecord.from_json(kv.value)
                handles[h.handle] = (h, kv.mod_revision)
            elif k.startswith(self.ctx.keys.affinities()):
                a = AffinityIndex.from_json(kv.value)
                affs[a.node] = (a, kv.mod_revision)
            elif k == self.ctx.keys.reservations():
                resv = [ipaddress.ip_network(c) for c in json.loads(kv.value)]
        return Dump(rev, pools, blocks, handles, affs, resv)

    def snapshot(self) -> tuple[int, list[Block]]:
        """(revision, every block) at one revision (``noderouter ipam show --allocations``)."""
        rev, kvs = self.ctx.store.range(self.ctx.keys.blocks())
        return rev, [Block.from_json(kv.value) for kv in kvs]

    def check(self, live_handles: Collection[str], node: str | None = None,
              live_nodes: Collection[str] | None = None) -> CheckReport:
        """Compare allocations with the live workloads (see ipam.audit.check_state)."""
        return self.dump().check(live_handles, node=node, live_nodes=live_nodes)

    def gc(self, live_handles: Collection[str] | Callable[[], Collection[str]],
           now: float | None = None, grace: float = 900.0, node: str | None = None,
           live_nodes: Collection[str] | None = None, dry_run: bool = False) -> GcReport:
        """Release leaks seen for at least ``grace`` seconds and empty blocks seen
        empty on two consecutive runs. The gc state (first sightings) lives in
        etcd under ``gc/<scope>`` so that CLI runs add up. Just before each
        release the live list is fetched again (if ``live_handles`` is callable)
        and the release is conditional on the same (handle, seq) still holding
        the address."""
        now = self.ctx.now(now)
        scope = node or CLUSTER_SCOPE
        gkey = self.ctx.keys.gc(scope)
        live0 = live_handles() if callable(live_handles) else live_handles
        for _ in range(self.ctx.max_retries):
            d = self.dump()
            rep = d.check(live0, node=node, live_nodes=live_nodes)
            gkv = self.ctx.store.get(gkey)
            prev = json.loads(gkv.value) if gkv else {}
            plan = plan_gc(rep, d.block_values(), prev, now, grace, node=node, live_nodes=live_nodes)
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
            res = self.ctx.store.txn([Expect(gkey, gkv.mod_revision if gkv else 0)],
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
                ok = self.leases.release_ip(leak["ip"], seq=leak["seq"], handle=leak["handle"], now=now)
            except IpamError as exc:
                skipped.append({**leak, "reason": str(exc)})
                continue
            (released if ok else skipped).append(
                leak if ok else {**leak, "reason": "address changed since it was seen"})
        freed = []
        for cidr in plan.due_blocks:
            b, bmod = d.blocks[cidr]
            bkey = self.ctx.keys.block(b.pool, b.cidr)
            if self.leases.free_block(bkey, expect_mod=bmod):
                freed.append(cidr)
        self.ctx.log.info("gc_done", scope=scope, released=len(released), skipped=len(skipped),
                          waiting=len(plan.waiting_leaks), freed_blocks=len(freed))
        return GcReport(released, skipped, plan.waiting_leaks, freed, plan.kept_blocks, False)
