"""The RIB of accepted learned routes (pure): best path per prefix, ECMP across peers.

Each prefix holds at most one path per peer (BGP replaces, per peer, on re-announce).
Selection, highest rank first: local preference (higher), AS path length (shorter), origin
(IGP < EGP < incomplete), MED (lower). Every path tied on that key is used: the route is ECMP
across their next hops (from different peers). No further tie-break is needed because the
kernel route carries all of them.

Changes are tracked: ``take_changes()`` returns ``{prefix: Route | None}`` for prefixes whose
best route (next hops) changed since the last call -- what the dataplane needs. ``routes()``
is a copy of the maintained best-route map (cheap: no re-ranking of unchanged prefixes) and
does not consume changes.

A ``Route`` (next hops, peers) does not carry its prefix: it is interned, so the 100k prefixes
learned from one ToR share one ``Route`` object. Consumers group changes by it (one
classification per next-hop set, not per prefix) and compare unchanged routes by identity.

Graceful restart: ``mark_stale(peer)`` keeps the peer's paths but flags them; a re-announce
clears the flag; ``sweep_stale(peer)`` (on End-of-RIB or when the restart time runs out)
removes the ones still flagged. A stale path stays in use while it is the only best path
(GR's case: the restarting peer still forwards), but leaves an ECMP set that has a fresh
equal path: GR cannot tell a restart from a dead router, and moving the flows to a live
equal path loses nothing either way, while keeping them on a dead one blackholes them for
the whole restart time (measured: tests/faults/test_ecmp_tor.py).

Review notes: this sits on the 100k-routes path. A path is ``(nexthop, Attributes)`` with the
Attributes object shared by all prefixes of one UPDATE. A prefix new to the RIB (the whole
initial table) is settled inside ``add``: its only path is its best route, so it never
enters the dirty set; only prefixes that already had paths are re-ranked in ``_refresh``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple

from bgpd.bgp.events import Attributes

Path = tuple[str, Attributes]  # (next hop, attributes)


class Route(NamedTuple):
    """The best route of a prefix (the prefix is the key it is stored under). Interned:
    equal routes are the same object (see ``Rib._intern``)."""

    nexthops: tuple[str, ...]  # sorted, unique
    peers: tuple[str, ...]  # sorted, unique


def _rank(attrs: Attributes) -> tuple[int, int, int, int]:
    return (-attrs.local_pref, attrs.as_path_len, attrs.origin, attrs.med)


class Rib:
    def __init__(self) -> None:
        # prefix -> its paths: a (peer, path) tuple while it has one (the 100k routes of a
        # ToR: one tuple shared by every prefix of an UPDATE, no per-prefix object), a
        # {peer: path} dict while it has several.
        self._table: dict[str, tuple[str, Path] | dict[str, Path]] = {}
        # How many prefixes each peer has a path for. Not a set of them per peer: that
        # was a second 100k-entry structure (4.2 MB, issue 17) for what the table already
        # says; the rare whole-peer operations (drop, stale marking) scan the table.
        self._counts: dict[str, int] = {}
        self._stale: dict[str, set[str]] = {}
        self._dirty: set[str] = set()
        self._best: dict[str, Route] = {}
        # routes() hands out a read-only view of _best itself (the node's status snapshot
        # keeps it): the next change copies it first (copy-on-write, issue 17), instead of
        # routes() copying 100k entries for every snapshot.
        self._best_shared = False
        self._changes: dict[str, Route | None] = {}  # since the last take_changes()
        self._routes: dict[Route, Route] = {}  # intern table

    def _intern(self, nexthops: tuple[str, ...], peers: tuple[str, ...]) -> Route:
        route = Route(nexthops, peers)
        got = self._routes.get(route)
        if got is None:
            if len(self._routes) > 65536:  # next-hop churn must not grow it forever
                self._routes = {}
            got = self._routes[route] = route
        return got

    # -- updates --------------------------------------------------------
    def add(self, peer: str, prefixes: Sequence[str], nexthop: str, attrs: Attributes) -> None:
        path = (nexthop, attrs)
        entry = (peer, path)
        table = self._table
        fresh = [p for p in prefixes if p not in table]
        gained = 0
        if len(fresh) != len(prefixes):
            dirty = self._dirty
            fresh_set = set(fresh)
            for prefix in prefixes:
                if prefix in fresh_set:
                    continue
                held = table[prefix]
                if type(held) is tuple:
                    if held[0] == peer:
                        table[prefix] = entry  # the peer replaces its own path
                    else:
                        table[prefix] = {held[0]: held[1], peer: path}
                        gained += 1
                else:
                    if peer not in held:
                        gained += 1
                    held[peer] = path
                dirty.add(prefix)
        stale = self._stale.get(peer)
        if stale:
            stale.difference_update(prefixes)
        if fresh:
            # A prefix with no path before has this one as its best route: settle it
            # here, in bulk (a dirty one -- removed earlier in this batch -- is ranked
            # by _refresh like any other).
            before = len(table)
            table.update(dict.fromkeys(fresh, entry))
            gained += len(table) - before  # (a prefix listed twice counts once)
            if self._dirty:
                fresh = [p for p in fresh if p not in self._dirty]
            settled = dict.fromkeys(fresh, self._intern((nexthop,), (peer,)))
            self._writable_best().update(settled)
            self._changes.update(settled)
        if gained:
            self._counts[peer] = self._counts.get(peer, 0) + gained

    def remove(self, peer: str, prefixes: Iterable[str]) -> int:
        """Remove the peer's paths for ``prefixes``; returns how many it had."""
        if not self._counts.get(peer):
            return 0
        removed = 0
        stale = self._stale.get(peer)
        table = self._table
        dirty = self._dirty
        for prefix in prefixes:
            held = table.get(prefix)
            if held is None:
                continue
            if type(held) is tuple:
                if held[0] != peer:
                    continue
                del table[prefix]
            else:
                if peer not in held:
                    continue
                del held[peer]
                if len(held) == 1:
                    table[prefix] = next(iter(held.items()))
            if stale:
                stale.discard(prefix)
            dirty.add(prefix)
            removed += 1
        self._counts[peer] -= removed
        return removed

    def drop_peer(self, peer: str) -> int:
        n = self.remove(peer, self.prefixes_of(peer))
        self._counts.pop(peer, None)
        self._stale.pop(peer, None)
        return n

    def mark_stale(self, peer: str) -> int:
        prefixes = self.prefixes_of(peer)
        self._stale[peer] = prefixes
        self._dirty.update(prefixes)  # a stale path may leave an ECMP set
        return len(prefixes)

    def sweep_stale(self, peer: str, family: int | None = None) -> int:
        """Remove the peer's stale paths; ``family`` 4 or 6: only those of that IP version
        (End-of-RIB is per family, RFC 4724 4.2; issue 15)."""
        if family is None:
            stale = self._stale.pop(peer, set())
            return self.remove(peer, list(stale))
        v6 = family == 6
        gone = [p for p in self._stale.get(peer, ()) if (":" in p) == v6]
        return self.remove(peer, gone)

    def stale_count(self, peer: str) -> int:
        return len(self._stale.get(peer, ()))

    # -- queries ----------------------------------------------------------
    def count(self, peer: str) -> int:
        return self._counts.get(peer, 0)

    def prefixes_of(self, peer: str) -> set[str]:
        """A new set (O(table size): drops, stale marking, policy re-evaluation)."""
        if not self._counts.get(peer):
            return set()
        return {prefix for prefix, held in self._table.items()
                if (held[0] == peer if type(held) is tuple else peer in held)}

    def paths(self, prefix: str) -> dict[str, Path]:
        held = self._table.get(prefix)
        if held is None:
            return {}
        return {held[0]: held[1]} if type(held) is tuple else dict(held)

    def path(self, prefix: str, peer: str) -> Path | None:
        held = self._table.get(prefix)
        if held is None:
            return None
        if type(held) is tuple:
            return held[1] if held[0] == peer else None
        return held.get(peer)

    def best(self, prefix: str) -> Route | None:
        held = self._table.get(prefix)
        if held is None:
            return None
        if type(held) is tuple:
            return self._intern((held[1][0],), (held[0],))
        paths = held
        top = min(_rank(a) for _, a in paths.values())
        chosen = [(peer, nh) for peer, (nh, a) in paths.items() if _rank(a) == top]
        if len(chosen) > 1 and self._stale:
            stale = self._stale
            fresh = [(peer, nh) for peer, nh in chosen if prefix not in stale.get(peer, ())]
            if fresh:
                chosen = fresh
        return self._intern(tuple(sorted({nh for _, nh in chosen})),
                            tuple(sorted(peer for peer, _ in chosen)))

    def routes(self) -> Mapping[str, Route]:
        """The current best routes: a read-only view that never changes afterwards (the
        RIB copies its map before the next change); change tracking is not affected."""
        self._refresh()
        self._best_shared = True
        return MappingProxyType(self._best)

    def _writable_best(self) -> dict[str, Route]:
        if self._best_shared:
            self._best = dict(self._best)
            self._best_shared = False
        return self._best

    def __len__(self) -> int:
        return len(self._table)

    def take_changes(self) -> dict[str, Route | None]:
        """Best-route changes since the last call: {prefix: Route, or None when gone}."""
        self._refresh()
        changes, self._changes = self._changes, {}
        return changes

    def _refresh(self) -> None:
        """Bring the best-route map up to date for dirty prefixes; record what changed."""
        if not self._dirty:
            return
        changes = self._changes
        best_map = self._writable_best()
        for prefix in self._dirty:
            new = self.best(prefix)
            old = best_map.get(prefix)
            if new is old:  # interned: equal routes are the same object
                continue
            if new is None:
                del best_map[prefix]
            else:
                best_map[prefix] = new
            changes[prefix] = new
        self._dirty = set()
