"""A stateful fake kernel routing table for the reconciler's unit tests.

It behaves like the IPv4 FIB where the reconciler depends on it: every route
carries a protocol; NLM_F_EXCL adds fail with EEXIST on an occupied key whatever
its protocol; NLM_F_REPLACE overwrites whatever is there (the kernel does not
check protocols on replace, so the reconciler must not replace foreign routes);
a delete naming a protocol fails with ESRCH unless the route has that protocol;
dumps filter by protocol and table; an oif that is not a link fails with ENODEV.
Multipath routes (oif ``MULTIPATH_OIF``, hops in the gateway slot) are stored in
the order they were sent and dumped with their hops sorted, as ``nlwire``'s
parser returns them; any hop through a missing link fails the route (ENODEV) and
a hop without a gateway is refused (EINVAL: we never send one).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from felix_like.nlwire import (
    MULTIPATH_OIF,
    OP_ADD,
    OP_DELETE,
    OP_REPLACE,
    RTN_BLACKHOLE,
    RTN_UNICAST,
    RouteForm,
    RouteKey,
    RouteOp,
    dump_with_retry,
)


def key(dst: str, table: int = 254, metric: int = 0) -> RouteKey:
    addr, _, plen = dst.partition("/")
    return (table, socket.inet_aton(addr), int(plen or 32), metric)


def via(gw: str, oif: int, onlink: bool = False) -> RouteForm:
    return (RTN_UNICAST, socket.inet_aton(gw), oif, onlink)


def dev(oif: int) -> RouteForm:
    return (RTN_UNICAST, b"", oif, False)


BLACKHOLE: RouteForm = (RTN_BLACKHOLE, b"", 0, False)


def multipath(*hops: tuple[str, int] | tuple[str, int, bool]) -> RouteForm:
    """An ECMP form as a dump returns it: hops (gateway, oif[, onlink]) sorted."""
    return (RTN_UNICAST, tuple(sorted((socket.inet_aton(h[0]), h[1], bool(h[2:3] and h[2]))
                                      for h in hops)), MULTIPATH_OIF, False)  # type: ignore


def _as_dumped(form: RouteForm) -> RouteForm:
    if form[2] == MULTIPATH_OIF:
        return (form[0], tuple(sorted(form[1])), form[2], form[3])  # type: ignore[arg-type]
    return form


@dataclass
class FakeKernel:
    links: dict[str, int] = field(default_factory=lambda: {"lo": 1, "eth0": 2})
    routes: dict[RouteKey, tuple[int, RouteForm]] = field(default_factory=dict)
    fail_once: dict[RouteKey, int] = field(default_factory=dict)
    interrupt_dumps: int = 0
    dumps: int = 0
    oif_dumps: int = 0
    executed: list[RouteOp] = field(default_factory=list)

    # -- what tests use to arrange and inspect the "kernel" --------------------------
    def add_foreign(self, dst: str, form: RouteForm, protocol: int, table: int = 254) -> None:
        self.routes[key(dst, table)] = (protocol, form)

    def of_protocol(self, protocol: int) -> dict[RouteKey, RouteForm]:
        return {k: f for k, (p, f) in self.routes.items() if p == protocol}

    # -- RouteDriver ------------------------------------------------------------------
    def dump_routes(self, protocol: int, tables: frozenset[int]) -> dict[RouteKey, RouteForm]:
        def attempt() -> tuple[dict, bool]:
            self.dumps += 1
            if self.interrupt_dumps:
                self.interrupt_dumps -= 1
                return {}, True
            return {k: _as_dumped(f) for k, (p, f) in self.routes.items()
                    if p == protocol and k[0] in tables}, False

        return dump_with_retry(attempt, max_attempts=3)

    def dump_routes_via(self, protocol: int, tables: frozenset[int],
                        oif: int) -> dict[RouteKey, RouteForm]:
        self.oif_dumps += 1
        return {k: f for k, f in self.dump_routes(protocol, tables).items() if f[2] == oif}

    def link_indexes(self) -> dict[str, int]:
        return dict(self.links)

    def execute(self, ops: Sequence[RouteOp], protocol: int) -> list[int]:
        out = []
        for op in ops:
            self.executed.append(op)
            out.append(self._one(op, protocol))
        return out

    def _one(self, op: RouteOp, protocol: int) -> int:
        kind, k, form = op
        injected = self.fail_once.pop(k, None)
        if injected:
            return injected
        present = self.routes.get(k)
        if kind == OP_DELETE:
            if present is None or present[0] != protocol:
                return errno.ESRCH
            del self.routes[k]
            return 0
        assert form is not None
        if form[2] == MULTIPATH_OIF:
            hops = form[1]
            if len(hops) < 2 or any(not gw for gw, _o, _l in hops):  # type: ignore[misc]
                return errno.EINVAL
            if any(o and o not in self.links.values() for _g, o, _l in hops):  # type: ignore[misc]
                return errno.ENODEV
        elif form[2] and form[2] not in self.links.values():
            return errno.ENODEV
        if kind == OP_ADD and present is not None:
            return errno.EEXIST
        assert kind in (OP_ADD, OP_REPLACE)
        self.routes[k] = (protocol, form)
        return 0
