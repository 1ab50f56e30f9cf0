"""What the parts of one ``Ipam`` share: the store, the node, the settings, the log.

One mutable object so that the parts (``cache``, ``leases``, ``pools``,
``gc``) always use the same store: a caller (a test, the CNI plugin) may
swap ``Ipam.store`` after construction and every part follows.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from ipam.keys import Keys
from ipam.model import check_node
from ipam.store import Store


@dataclass
class IpamContext:
    store: Store
    node: str
    keys: Keys
    node_labels: dict[str, str]
    max_blocks_per_node: int
    strict_affinity: bool
    cooldown: float
    max_retries: int
    clock: Callable[[], float]
    sleep: Callable[[float], None]
    log: Any
    # Counters for metrics and tests: allocations, borrowed, conflicts (lost CAS races), claims.
    stats: Counter[str] = field(default_factory=Counter)
    jitter: random.Random = field(default_factory=random.Random)

    @classmethod
    def create(cls, store: Store, node: str, *, prefix: str,
               node_labels: Mapping[str, str] | None = None, max_blocks_per_node: int = 20,
               strict_affinity: bool = False, cooldown: float = 30.0, max_retries: int = 50,
               clock: Callable[[], float] = time.time,
               sleep: Callable[[float], None] = time.sleep) -> IpamContext:
        node = check_node(node)
        return cls(store=store, node=node, keys=Keys(prefix), node_labels=dict(node_labels or {}),
                   max_blocks_per_node=int(max_blocks_per_node),
                   strict_affinity=bool(strict_affinity), cooldown=float(cooldown),
                   max_retries=int(max_retries), clock=clock, sleep=sleep,
                   log=structlog.get_logger("ipam").bind(node=node))

    def now(self, now: float | None) -> float:
        """``now`` if given, else the clock (the only place the clock is read)."""
        return self.clock() if now is None else float(now)
