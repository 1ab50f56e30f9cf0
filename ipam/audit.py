"""Pure consistency check and garbage-collection planning over one snapshot.

``check_state`` compares what the blocks and handles say with the live
workloads; ``plan_gc`` turns a check and the previous gc state into the next
state and the actions that are due; ``GcReport`` is what a gc run did;
``parse_live_handles`` reads a live-workload list. None does I/O or reads the
clock: ``ipam.gc`` reads the snapshot and carries the plan out.
"""

from __future__ import annotations

import ipaddress
import json
from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from ipam.model import (
    TUNNEL_HANDLE_PREFIX,
    VXLAN_TUNNEL_HANDLE_PREFIX,
    Block,
    HandleRecord,
)


@dataclass
class CheckReport:
    revision: int = 0
    allocations: int = 0
    handles: int = 0
    blocks: int = 0
    leaks: list[dict] = field(default_factory=list)               # allocated, handle not live
    orphaned_handles: list[dict] = field(default_factory=list)    # handle names an ip the block does not give it
    missing_handles: list[dict] = field(default_factory=list)     # block allocation without handle record
    double_allocations: list[dict] = field(default_factory=list)  # one ip claimed more than once
    orphan_affinities: list[dict] = field(default_factory=list)   # block affine to a node that is gone
    affinity_mismatches: list[dict] = field(default_factory=list)  # per-node index disagrees with blocks
    pending_blocks: list[dict] = field(default_factory=list)      # claims not confirmed (informational)

    @property
    def clean(self) -> bool:
        return not (self.leaks or self.orphaned_handles or self.missing_handles
                    or self.double_allocations or self.orphan_affinities
                    or self.affinity_mismatches)

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items()}
        d["clean"] = self.clean
        return d


def live_set(live_handles: Collection[str], live_nodes: Collection[str] | None) -> set[str]:
    """Live handles, plus the tunnel-address handles (IPIP and VXLAN) of every live node."""
    live = set(live_handles)
    for n in live_nodes or ():
        live.add(TUNNEL_HANDLE_PREFIX + n)
        live.add(VXLAN_TUNNEL_HANDLE_PREFIX + n)
    return live


def check_state(blocks: Mapping[str, Block], handles: Mapping[str, HandleRecord],
                affinities: Mapping[str, Mapping[str, str]], live_handles: Collection[str],
                node: str | None = None, live_nodes: Collection[str] | None = None,
                revision: int = 0) -> CheckReport:
    """``blocks``: cidr -> Block; ``handles``: handle -> record; ``affinities``:
    node -> {block cidr: state}. ``node`` limits leak detection to the
    addresses that node allocated (its live list only covers its own pods)."""
    live = live_set(live_handles, live_nodes)
    rep = CheckReport(revision=revision, handles=len(handles), blocks=len(blocks))
    holders: dict[str, list[tuple[str, int, str]]] = defaultdict(list)
    for cidr, b in sorted(blocks.items()):
        for ordinal, a in sorted(b.allocations.items()):
            ip = str(b.ip(ordinal))
            holders[ip].append((a.handle, a.seq, cidr))
            rep.allocations += 1
            rec = handles.get(a.handle)
            if rec is None or rec.ips.get(ip) != (cidr, a.seq):
                rep.missing_handles.append({"ip": ip, "handle": a.handle, "seq": a.seq,
                                            "block": cidr})
            if (node is None or a.node == node) and a.handle not in live:
                rep.leaks.append({"ip": ip, "handle": a.handle, "seq": a.seq, "node": a.node,
                                  "block": cidr, "attrs": dict(a.attrs), "allocated_at": a.at})
        if b.state != "confirmed":
            rep.pending_blocks.append({"block": cidr, "node": b.affinity,
                                       "claimed_at": b.claimed_at})
        if live_nodes is not None and b.affinity is not None and b.affinity not in live_nodes:
            rep.orphan_affinities.append({"block": cidr, "node": b.affinity,
                                          "allocations": len(b.allocations)})
        if b.affinity is not None:
            idx_state = affinities.get(b.affinity, {}).get(cidr)
            if idx_state != b.state:
                rep.affinity_mismatches.append({"node": b.affinity, "block": cidr,
                                                "reason": f"block is {b.state}, node index says "
                                                          f"{idx_state or 'nothing'}"})
    for n, idx in sorted(affinities.items()):
        for cidr in sorted(idx):
            if cidr not in blocks:
                rep.affinity_mismatches.append({"node": n, "block": cidr,
                                                "reason": "node index names a missing block"})
            elif blocks[cidr].affinity != n:
                rep.affinity_mismatches.append({"node": n, "block": cidr,
                                                "reason": f"block is affine to {blocks[cidr].affinity}"})
    claimed_by: dict[str, list[str]] = defaultdict(list)
    for h, rec in sorted(handles.items()):
        if not rec.ips:
            rep.orphaned_handles.append({"handle": h, "ip": None, "reason": "handle holds no address"})
        for ip, (cidr, seq) in sorted(rec.ips.items()):
            claimed_by[ip].append(h)
            b = blocks.get(cidr)
            if b is None:
                rep.orphaned_handles.append({"handle": h, "ip": ip, "reason": f"block {cidr} missing"})
                continue
            try:
                a = b.holder(ipaddress.ip_address(ip))
            except ValueError:
                a = None
            if a is None or a.handle != h or a.seq != seq:
                rep.orphaned_handles.append({"handle": h, "ip": ip,
                                             "reason": "block does not hold this address for the handle"})
    for ip, hs in sorted(claimed_by.items()):
        if len(hs) > 1:
            rep.double_allocations.append({"ip": ip, "handles": hs})
    for ip, hs in sorted(holders.items()):
        if len(hs) > 1:
            rep.double_allocations.append({"ip": ip, "handles": [h for h, _, _ in hs],
                                           "blocks": [c for _, _, c in hs]})
    return rep


@dataclass
class GcPlan:
    state: dict                      # the next persisted gc state
    due_leaks: list[dict]            # leaks past the grace period: release (after a re-check)
    waiting_leaks: list[dict]        # leaks still inside the grace period
    due_blocks: list[str]            # empty on two consecutive sightings: free
    kept_blocks: list[str]           # empty twice but kept (a live node's last block)


def _leak_id(leak: Mapping) -> str:
    return f"{leak['ip']}|{leak['handle']}|{leak['seq']}"


def plan_gc(report: CheckReport, blocks: Mapping[str, Block], prev_state: Mapping | None,
            now: float, grace: float, node: str | None = None,
            live_nodes: Collection[str] | None = None) -> GcPlan:
    """Leaks are released once seen continuously for ``grace`` seconds (the same
    (ip, handle, seq) in every run since first sighting). Empty blocks are freed
    on the second consecutive run that sees them empty, except a live node's
    last block (it would be re-claimed by the next pod anyway)."""
    prev = prev_state or {}
    prev_leaks = prev.get("leaks", {})
    leaks: dict[str, float] = {}
    due, waiting = [], []
    for leak in report.leaks:
        lid = _leak_id(leak)
        first = float(prev_leaks.get(lid, now))
        leaks[lid] = first
        item = {**leak, "first_seen": first, "due_at": first + grace}
        (due if now - first >= grace else waiting).append(item)

    prev_empty = prev.get("empty", {})
    empty: dict[str, int] = {}
    per_node: dict[str | None, list[str]] = defaultdict(list)
    for cidr, b in blocks.items():
        per_node[b.affinity].append(cidr)
    due_blocks, kept = [], []
    remaining = {n: len(cs) for n, cs in per_node.items()}
    for cidr, b in sorted(blocks.items()):
        if node is not None and b.affinity != node:
            continue
        if b.allocations:
            continue
        count = int(prev_empty.get(cidr, 0)) + 1
        empty[cidr] = count
        if count < 2:
            continue
        node_live = b.affinity is not None and (live_nodes is None or b.affinity in live_nodes)
        if node_live and remaining[b.affinity] <= 1:
            kept.append(cidr)
            continue
        remaining[b.affinity] -= 1
        due_blocks.append(cidr)
    state = {"leaks": leaks, "empty": empty, "at": now}
    return GcPlan(state=state, due_leaks=due, waiting_leaks=waiting, due_blocks=due_blocks,
                  kept_blocks=kept)


@dataclass
class GcReport:
    """What one gc run did (``dry_run``: what it would do; every leak is then "waiting")."""

    released: list[dict]
    skipped: list[dict]
    waiting: list[dict]
    freed_blocks: list[str]
    kept_blocks: list[str]
    dry_run: bool

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def parse_live_handles(text: str) -> set[str]:
    """A live-workload list: a JSON list of handles, or one handle per line (# comments)."""
    s = text.strip()
    if s.startswith("["):
        return {str(h) for h in json.loads(s)}
    return {ln.strip() for ln in s.splitlines() if ln.strip() and not ln.strip().startswith("#")}
