"""Learned BGP routes -> the dataplane: a manager (Felix pattern) over the route table
and the remote-block manager.

The speaker's reader thread only records RIB changes; the daemon's cycle drains them
(``Speaker.take_route_changes()``) and hands them to ``Dataplane.on_update`` as a
``LearnedRouteChanges`` message (or, when the classification context changed, a
``LearnedContextUpdate`` with every best route). ``on_update`` only queues;
``complete_deferred_work`` classifies and writes the route table's desired state; the
route table's ``apply()`` does the netlink work -- so netlink work never happens on the
thread that reads ExaBGP's pipe. The daemon and bench/bench_bgp.py use this same path:
the benchmark measures the daemon's.

What a learned route becomes is ``felix_like.classify``'s decision (pure): a remote block
of another node (the ``RemoteBlockManager`` shapes it per pool encapsulation), a plain
route via the next hop(s) (through the uplink when on-link), or a reason it is not routed.

Review notes: this sits on the 100k-routes path. The RIB's ``Route`` values are interned,
so changes are grouped by route object and classified once per group
(``classify_path``); a plain route is handed to the route table in bulk as the group's
shared template ``Target`` (``update_many``) -- no per-prefix ``Target``, ``Route`` or
classification object. Only remote blocks and not-routed prefixes (few) are kept per
prefix here; a plain route is recorded only in the route table's desired class (issue 17:
the per-prefix map of what each prefix became was a third 100k-entry dict, 3.8 MB, for
what the table holds anyway). A learned prefix in neither small map is a plain route.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from felix_like.classify import classify_path, classify_prefix
from felix_like.routetable import RouteTable
from felix_like.updates import (
    CLASS_BGP,
    LearnedContext,
    LearnedContextUpdate,
    LearnedRoute,
    LearnedRouteChanges,
    RemoteBlock,
    Target,
)


class LearnedRoutes:
    """Keeps what each learned prefix became and the dataplane in step with it.

    ``on_block_update`` / ``on_block_remove``: the remote-block manager's inputs (the
    daemon passes ``dp.remote``'s); without them (the speaker tests, the benchmark) a
    route via another node is a plain route.
    """

    def __init__(self, table: RouteTable, route_class: str = CLASS_BGP,
                 on_block_update: Callable[[RemoteBlock], None] | None = None,
                 on_block_remove: Callable[[str], None] | None = None) -> None:
        self.table = table
        self.route_class = route_class
        self._block_update = on_block_update
        self._block_remove = on_block_remove
        self.context: LearnedContext | None = None
        # The few prefixes that are not plain routes (every other learned prefix is one,
        # held in the route table's class ``route_class`` only).
        self._blocks: dict[str, RemoteBlock] = {}
        self._not_routed: dict[str, str] = {}
        # Queued by on_update, applied in order by complete_deferred_work.
        self._queued: list[LearnedContextUpdate | LearnedRouteChanges] = []
        self._paths: dict[LearnedRoute, object] = {}  # per context: route -> classify_path()

    # -- queries ------------------------------------------------------------------
    def remote_blocks(self) -> list[RemoteBlock]:
        return list(self._blocks.values())

    def pending(self) -> list[tuple[str, str]]:
        """(prefix, why it is not routed)."""
        return sorted(self._not_routed.items())

    def __len__(self) -> int:
        return self.table.desired_count(self.route_class) + len(self._blocks) \
            + len(self._not_routed)

    # -- the manager interface (Dataplane.on_update / apply) -----------------------
    def on_update(self, msg: object) -> None:
        """Record a learned-routes message; no work until ``complete_deferred_work``."""
        if isinstance(msg, LearnedContextUpdate):
            # Its routes are the RIB's whole best set: earlier changes are in it.
            self._queued = [msg]
        elif isinstance(msg, LearnedRouteChanges) and msg.changes:
            self._queued.append(msg)

    def complete_deferred_work(self) -> None:
        queued, self._queued = self._queued, []
        for msg in queued:
            if isinstance(msg, LearnedContextUpdate):
                self.set_context(msg.context, msg.routes)
            elif self.context is not None:
                # Before the first context the changes are dropped: the context update
                # carries the RIB's whole table, these changes included.
                self.apply(msg.changes)

    # -- inputs -------------------------------------------------------------------
    def set_context(self, ctx: LearnedContext, routes: Mapping[str, LearnedRoute]) -> None:
        """The context (our blocks, pools, nodes) changed: classify all of ``routes`` (the
        RIB's best routes) again and replace the learned route class at once."""
        self.context = ctx
        self._paths = {}
        old_blocks = set(self._blocks)
        self._blocks = {}
        self._not_routed = {}
        groups: dict[LearnedRoute, list[str]] = {}
        for prefix, route in routes.items():
            groups.setdefault(route, []).append(prefix)
        plain: list[tuple[list[str], Target]] = []
        for route, prefixes in groups.items():
            for template, dsts in self._classify(route, prefixes, check_own=True).items():
                plain.append((dsts, template))
        self.table.set_routes_grouped(self.route_class, plain)
        if self._block_remove is not None:
            for prefix in old_blocks - {b.cidr for b in self.remote_blocks()}:
                self._block_remove(prefix)

    def apply(self, changes: Mapping[str, LearnedRoute | None]) -> int:
        """RIB changes ({prefix: Route, or None when gone}) into the dataplane (no I/O).
        Returns how many prefixes were handed on (gone, or classified again: a plain
        route whose template did not change costs the table a comparison, nothing more)."""
        if self.context is None:
            raise RuntimeError("LearnedRoutes.apply before set_context")
        groups: dict[LearnedRoute | None, list[str]] = {}
        last: object = groups  # never a route
        lst: list[str] = []
        for prefix, route in changes.items():
            if route is not last:  # runs of one route are the rule: skip the hashing
                last = route
                lst = groups.setdefault(route, [])
            lst.append(prefix)
        gone = groups.pop(None, ())
        unroute: list[str] = []
        for prefix in gone:
            self._forget(prefix, unroute)
        changed = len(gone)
        for route, prefixes in groups.items():
            for template, dsts in self._classify(route, prefixes, unroute=unroute).items():
                self.table.update_many(self.route_class, dsts, template)
                changed += len(dsts)
        if unroute:
            self.table.remove_many(self.route_class, unroute)
        return changed

    # -- internals ----------------------------------------------------------------
    def _old(self, prefix: str) -> RemoteBlock | str | None:
        """What a learned prefix is now, as far as this manager keeps it: a remote block,
        a not-routed reason, or None (a plain route, or not learned at all)."""
        block = self._blocks.get(prefix)
        return block if block is not None else self._not_routed.get(prefix)

    def _forget(self, prefix: str, unroute: list[str]) -> None:
        if prefix in self._blocks:
            del self._blocks[prefix]
            if self._block_remove is not None:
                self._block_remove(prefix)
        elif prefix in self._not_routed:
            del self._not_routed[prefix]
        else:
            unroute.append(prefix)  # a plain route (removing a key not there is a no-op)

    def _classify(self, route: LearnedRoute, prefixes: list[str], check_own: bool = False,
                  unroute: list[str] | None = None) -> dict[Target, list[str]]:
        """Record what each prefix of one route group becomes; returns the plain routes
        that changed, by template. ``unroute`` (incremental mode) collects prefixes that
        were plain routes and no longer are; remote-block changes go to the manager.

        ``check_own``: refuse prefixes inside our own blocks. Needed when the context
        changes (``set_context``): the RIB may hold routes accepted before we claimed a
        block -- the daemon re-runs the import policy right after, which removes them.
        Not needed for changes: the RIB only takes routes the current policy accepts,
        and the daemon updates policy and context in the same loop cycle (a route
        accepted under the old policy in between is removed again by ``set_policy``
        before the changes are taken, so it nets out). Skipping it saves a prefix parse
        per learned route.
        """
        ctx = self.context
        path = self._paths.get(route)
        if path is None:
            path = self._paths[route] = classify_path(route.nexthops, ctx)
        own = ctx.own_ranges if check_own else ()
        plain: dict[Target, list[str]] = {}
        blocks, not_routed = self._blocks, self._not_routed
        if isinstance(path, Target) and not own:
            # The common case (a ToR's 100k routes, one template for the whole group):
            # every prefix that is not a block or not-routed now, in bulk (the table skips
            # keys whose route is already this template's).
            if not blocks and not not_routed:
                plain[path] = list(prefixes)
                return plain
            plain[path] = [p for p in prefixes if p not in blocks and p not in not_routed]
            prefixes = [p for p in prefixes if p in blocks or p in not_routed]
        for prefix in prefixes:
            old = self._old(prefix)
            new = classify_prefix(prefix, path, ctx, check_own)
            if new == old:
                continue
            if isinstance(new, Target):
                if isinstance(old, RemoteBlock):
                    del self._blocks[prefix]
                    if self._block_remove is not None:
                        self._block_remove(prefix)
                elif isinstance(old, str):
                    del self._not_routed[prefix]
                plain.setdefault(new, []).append(prefix)
            else:
                self._settle(prefix, old, new, unroute)
        return plain

    def _settle(self, prefix: str, old: RemoteBlock | str | None, new: RemoteBlock | str,
                unroute: list[str] | None) -> None:
        """A prefix becomes a remote block or a not-routed reason (``old`` None: it was a
        plain route or not learned; removing its table key is a no-op when absent)."""
        if isinstance(new, RemoteBlock):
            self._blocks[prefix] = new
            self._not_routed.pop(prefix, None)
        else:
            self._not_routed[prefix] = new
            self._blocks.pop(prefix, None)
        if old is None and unroute is not None:
            unroute.append(prefix)
        elif isinstance(old, RemoteBlock) and self._block_remove is not None \
                and not isinstance(new, RemoteBlock):
            self._block_remove(prefix)
        if isinstance(new, RemoteBlock) and self._block_update is not None:
            self._block_update(new)
