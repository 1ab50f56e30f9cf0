"""Denied packets and bytes per policy and direction, from our table's nft counters
(issue 14's metrics). Pure: parsing ``nft -j list table inet noderouter`` output,
naming each drop rule's counter, and accumulating monotonic totals. The
``PolicyManager`` does the one ``nft -j -t list`` (``NftCli.list_table_json``).

Which drop rules carry a counter (``policy_nft``):

- a ``Deny`` rule in a policy chain ``pi-``/``pe-<hash>``: that policy
  (namespace, name) and its direction;
- the end-of-tier drop of an endpoint chain ``tw-``/``fw-<if>`` (a policy selected
  the pod and none allowed the packet): policy ``<end-of-tier>``, the pod's namespace;
- the fail-closed drop of the dispatch chains (a workload interface not programmed
  yet): policy ``<not-programmed>``, no namespace.

Kernel counters restart from zero when a rule is replaced (a full reload, a flushed
chain): a rule is known by (chain, handle) and nft never reuses a handle while the
table lives, so a rule not seen before counts from zero. The manager reads just
before any apply that replaces rules and calls ``forget_rules`` after a full reload
(which recreates the table and may reuse handles), so nothing is counted twice and at
most the packets of those milliseconds are missed.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from felix_like.policy_calc import PolicyPlan
from felix_like.policy_nft import endpoint_chain_name

END_OF_TIER = "<end-of-tier>"
NOT_PROGRAMMED = "<not-programmed>"
_VERDICTS = ("accept", "drop", "return", "jump", "goto", "continue", "queue")


@dataclass(frozen=True)
class RuleCounter:
    """The counter of one drop rule, as the kernel reports it now."""

    chain: str
    handle: int
    packets: int
    bytes: int


@dataclass(frozen=True)
class DenyKey:
    """What a denied packet is attributed to (the metric's labels)."""

    namespace: str
    policy: str
    direction: str              # ingress | egress


def parse_drop_counters(listing: str | Mapping) -> list[RuleCounter]:
    """Every rule of the listing whose verdict is drop and that has a counter.
    ``listing``: ``nft -j list table ...`` output (text or parsed). Raises ValueError
    on output that is not nft's JSON."""
    doc = json.loads(listing) if isinstance(listing, str) else listing
    items = doc.get("nftables") if isinstance(doc, Mapping) else None
    if not isinstance(items, list):
        raise ValueError("not nft JSON output (no 'nftables' list)")
    out = []
    for item in items:
        rule = item.get("rule") if isinstance(item, Mapping) else None
        if not isinstance(rule, Mapping):
            continue
        counter = None
        verdict = None
        for expr in rule.get("expr") or ():
            if not isinstance(expr, Mapping):
                continue
            if "counter" in expr and isinstance(expr["counter"], Mapping):
                counter = expr["counter"]
            for v in _VERDICTS:
                if v in expr:
                    verdict = v
        if counter is not None and verdict == "drop":
            out.append(RuleCounter(str(rule.get("chain")), int(rule.get("handle", 0)),
                                   int(counter.get("packets", 0)),
                                   int(counter.get("bytes", 0))))
    return out


def attribution(plan: PolicyPlan) -> dict[str, DenyKey]:
    """Chain name -> what its drop rules deny for, for the chains of ``plan``."""
    out = {"to-wl-dispatch": DenyKey("", NOT_PROGRAMMED, "ingress"),
           "from-wl-dispatch": DenyKey("", NOT_PROGRAMMED, "egress")}
    for ep in plan.endpoints:
        for direction in ("Ingress", "Egress"):
            out[endpoint_chain_name(direction, ep.interface)] = DenyKey(
                ep.endpoint[0], END_OF_TIER, direction.lower())
    for chain in plan.chains:
        _kind, namespace, name = chain.policy
        out[chain.name] = DenyKey(namespace, name, chain.direction.lower())
    return out


class DenyCounters:
    """Monotonic denied packets/bytes per ``DenyKey`` from successive readings."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, int], tuple[int, int]] = {}
        self.totals: dict[DenyKey, tuple[int, int]] = {}

    def absorb(self, readings: Iterable[RuleCounter], names: Mapping[str, DenyKey],
               chains: Collection[str] | None = None) -> None:
        """Add what each rule counted since the last reading. ``names``: the
        ``attribution`` of the plan the kernel holds; a chain it does not name is
        not ours to count (a hand-added one) and is skipped. ``chains``: the
        readings cover only these chains (read right before they are flushed);
        what is known of the other chains' rules is kept, or their next reading
        would count everything again. None: the readings cover the whole table."""
        seen: dict[tuple[str, int], tuple[int, int]] = {}
        for r in readings:
            key = (r.chain, r.handle)
            seen[key] = (r.packets, r.bytes)
            label = names.get(r.chain)
            if label is None:
                continue
            before = self._last.get(key, (0, 0))
            if r.packets < before[0] or r.bytes < before[1]:
                before = (0, 0)               # the rule was reset under us: all is new
            packets, nbytes = r.packets - before[0], r.bytes - before[1]
            if packets or nbytes:
                p, b = self.totals.get(label, (0, 0))
                self.totals[label] = (p + packets, b + nbytes)
        # Rules that are gone are forgotten: their handles are never seen again.
        if chains is None:
            self._last = seen
        else:
            kept = {k: v for k, v in self._last.items() if k[0] not in chains}
            kept.update(seen)
            self._last = kept

    def forget_rules(self) -> None:
        """The table was recreated: its rules count from zero, handles may repeat."""
        self._last = {}
