"""The route-table reconciler (Felix routetable style), IPv4 and IPv6.

Review notes / invariants:
- Ownership is the route protocol number (a constructor parameter). We read back
  only routes of that protocol, in the tables we manage, and every delete names
  that protocol, so the kernel itself refuses to delete anyone else's route.
- A route key nobody else occupies is added with NLM_F_EXCL; NLM_F_REPLACE is used
  only for a key the last dump/apply showed to be ours. An EEXIST therefore means
  a foreign route sits on our key: we leave it alone, keep the key dirty, and try
  again after the next resync.
- Routes of ours read back at start that nobody desires are deleted only after
  ``mark_in_sync()``: on restart the datastore may not have told us everything
  yet, and deleting a route that is about to be re-desired drops traffic
  (felix#1592, calico#6625). A route desired during this run and then given up
  (a peer's explicit withdraw, a deleted pod) goes at once, in sync or not.
- Full resync on start, on ``queue_resync()``, after any failed apply, and every
  ``resync_interval`` seconds; otherwise only dirty keys are looked at.
- One failed route stays dirty and does not block the others (errors are per
  request, matched by netlink sequence number in ``nlwire``).
- Decisions (``plan``) are pure; the driver does the I/O. Unit tests drive the
  same class against a fake kernel.
- Both families in one table: a key's ``dst`` is 4 bytes (IPv4) or 16 (IPv6), the
  read-back dumps both, and a gateway must be of its destination's family (no IPv4
  next hop for an IPv6 route: RFC 5549 is not supported). An IPv6 key's metric 1024
  is written 0 (the kernel stores 0 as 1024, ``nlwire.v6_metric``).
- ECMP: a ``Target`` with two or more ``nexthops`` is one multipath route
  (RTA_MULTIPATH). Its hops are compared as a sorted set, so the kernel's order
  in a dump never causes a replace. A single next hop is the plain form, the
  one the kernel would dump anyway. The single-gateway path pays nothing for
  multipath: one extra member in the validation-cache key.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

import structlog

from felix_like.errors import DataplaneError
from felix_like.nlwire import (
    MULTIPATH_OIF,
    OP_ADD,
    OP_DELETE,
    OP_REPLACE,
    RT_TABLE_MAIN,
    RTN_BLACKHOLE,
    RTN_PROHIBIT,
    RTN_UNICAST,
    RTN_UNREACHABLE,
    RouteForm,
    RouteKey,
    RouteOp,
    v6_metric,
)

# The route values live in the vocabulary module (no I/O there); re-exported here.
from felix_like.updates import NextHop, Target

__all__ = ["NextHop", "Target", "RouteTable", "KernelRouteDriver", "DesiredRoutes"]

log = structlog.get_logger("felix_like.routetable")

ROUTE_TYPES = {"unicast": RTN_UNICAST, "blackhole": RTN_BLACKHOLE,
               "unreachable": RTN_UNREACHABLE, "prohibit": RTN_PROHIBIT}
DEFAULT_RESYNC_INTERVAL = 90.0


class RouteTableError(DataplaneError, ValueError):
    """A route target that can never be programmed (bad CIDR, unmanaged table...)."""


@dataclass(frozen=True)
class DesiredRoutes:
    """A frozen copy of a ``RouteTable``'s desired routes (``desired_snapshot``)."""

    version: int
    class_order: tuple[str, ...]          # highest priority first
    by_class: Mapping[str, Mapping[RouteKey, tuple]]

    def counts(self) -> dict[str, int]:
        return {c: len(self.by_class.get(c, ())) for c in self.class_order}

    def winners(self) -> dict[str, tuple[str, Target]]:
        """dst -> (route class, target) of the class that wins each prefix."""
        out: dict[str, tuple[str, Target]] = {}
        for cls in reversed(self.class_order):  # lowest priority first: winners overwrite
            for key, want in self.by_class.get(cls, {}).items():
                t = _target_of(key, want)
                out[t.dst] = (cls, t)
        return out


@dataclass(frozen=True)
class ApplyResult:
    resynced: bool
    added: int
    replaced: int
    deleted: int
    failed: dict[RouteKey, int]      # key -> errno
    waiting_for_interface: int
    stale_kept: int                  # ours, not desired, kept until mark_in_sync()

    def summary(self) -> dict[str, int | bool]:
        return {"resynced": self.resynced, "added": self.added, "replaced": self.replaced,
                "deleted": self.deleted, "failed": len(self.failed),
                "waiting_for_interface": self.waiting_for_interface,
                "stale_kept": self.stale_kept}


class RouteDriver(Protocol):
    """The kernel side: real netlink (``KernelRouteDriver``) or a fake in tests."""

    def dump_routes(self, protocol: int, tables: frozenset[int]) -> dict[RouteKey, RouteForm]: ...

    def link_indexes(self) -> dict[str, int]: ...

    def execute(self, ops: Sequence[RouteOp], protocol: int) -> list[int]: ...

    def dump_routes_via(self, protocol: int, tables: frozenset[int],
                        oif: int) -> dict[RouteKey, RouteForm]:
        """Routes of ``protocol`` whose output interface is ``oif`` (a small dump: the
        kernel filters by interface, so a pod's veth yields its one or two routes)."""
        ...


# At most this many interfaces are re-read after EEXISTs in one apply; beyond that the
# usual path (failed, full resync) is cheaper than many small dumps.
MAX_ADOPTION_DUMPS = 8


# A desired route before interface resolution: (rtn_type, gateway bytes, ifname, onlink).
# Multipath: (RTN_UNICAST, sorted ((gateway bytes, ifname, onlink), ...), MULTIPATH, False).
_Want = tuple
# The ifname slot of a multipath want: never a device name (names cannot hold NUL),
# so the single-path code (``ifindex.get(ifname)``) needs no type check.
MULTIPATH = "\0multipath"


def _parse_dst6(dst: str, addr: str, sep: str, plen_s: str) -> tuple[bytes, int]:
    try:
        plen = int(plen_s) if sep else 128
        raw = socket.inet_pton(socket.AF_INET6, addr)
    except (OSError, ValueError) as exc:
        raise RouteTableError(f"route destination {dst!r} is not an IPv6 CIDR: {exc}") from exc
    if not 0 <= plen <= 128:
        raise RouteTableError(f"route destination {dst!r} is not an IPv6 CIDR (prefix "
                              f"length 0..128)")
    if plen < 128 and int.from_bytes(raw, "big") & ((1 << (128 - plen)) - 1):
        raise RouteTableError(f"route destination {dst!r} has host bits set; "
                              f"use the network address")
    return raw, plen


def _ntop(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(raw) == 16 else socket.AF_INET, raw)


def _key_metric(dst: bytes, metric: int) -> int:
    return v6_metric(metric) if len(dst) == 16 else metric


def _gw_len(want: _Want) -> int:
    """The length of a want's gateway(s): 4 (IPv4), 16 (IPv6) or 0 (none)."""
    gw = want[1]
    if not gw:
        return 0
    return len(gw) if isinstance(gw, bytes) else len(gw[0][0])


def _key(table: int, dst: bytes, plen: int, metric: int, want: _Want, text: str) -> RouteKey:
    """The route key of ``dst`` (bytes of ``text``), checking the want's gateway family."""
    if len(dst) == 4:
        glen = _gw_len(want)
        if glen == 16:
            raise RouteTableError(f"route {text}: an IPv4 route cannot take an IPv6 next hop")
        return (table, dst, plen, metric)
    if _gw_len(want) == 4:
        raise RouteTableError(f"route {text}: an IPv6 route needs an IPv6 next hop, not IPv4 "
                              f"(RFC 5549 routes are not supported)")
    return (table, dst, plen, v6_metric(metric))


def _parse_dst(dst: str) -> tuple[bytes, int]:
    addr, sep, plen_s = dst.partition("/")
    if ":" in addr:
        return _parse_dst6(dst, addr, sep, plen_s)
    try:
        plen = int(plen_s) if sep else 32
        raw = socket.inet_aton(addr)
    except (OSError, ValueError) as exc:
        raise RouteTableError(f"route destination {dst!r} is not an IPv4 CIDR: {exc}") from exc
    if not 0 <= plen <= 32 or addr.count(".") != 3:
        raise RouteTableError(f"route destination {dst!r} is not an IPv4 CIDR")
    if plen < 32 and int.from_bytes(raw, "big") & ((1 << (32 - plen)) - 1):
        raise RouteTableError(f"route destination {dst!r} has host bits set; "
                              f"use the network address")
    return raw, plen


def _gateway(dst: str, addr: str) -> bytes:
    """A gateway of ``dst``'s family (4 or 16 bytes)."""
    if ":" in dst.partition("/")[0]:
        try:
            if ":" not in addr:
                raise ValueError("not IPv6")
            return socket.inet_pton(socket.AF_INET6, addr)
        except (OSError, ValueError) as exc:
            raise RouteTableError(f"route target {dst!r}: gateway {addr!r} is not IPv6 (an "
                                  f"IPv6 route needs an IPv6 next hop)") from exc
    try:
        if addr.count(".") != 3:
            raise ValueError("not dotted quad")
        return socket.inet_aton(addr)
    except (OSError, ValueError) as exc:
        raise RouteTableError(f"route target {dst!r}: gateway {addr!r} is not IPv4") from exc


def _parse_multipath(t: Target) -> _Want:
    if t.gateway or t.ifname or t.onlink:
        raise RouteTableError(f"route target {t.dst!r}: give either gateway/ifname/onlink "
                              f"or nexthops, not both")
    if t.type != "unicast":
        raise RouteTableError(f"route target {t.dst!r}: a {t.type} route takes no next hops")
    hops = set()
    for nh in t.nexthops:
        if not isinstance(nh, NextHop) or not nh.gateway:
            raise RouteTableError(f"route target {t.dst!r}: next hop {nh!r} needs a gateway")
        hops.add((_gateway(t.dst, nh.gateway), nh.ifname, bool(nh.onlink)))
    if len(hops) == 1:
        # One hop is a plain route: that is also what the kernel would dump.
        return (RTN_UNICAST, *hops.pop())
    return (RTN_UNICAST, tuple(sorted(hops, key=lambda h: (h[0], h[1] or "", h[2]))),
            MULTIPATH, False)


def _want_ifnames(want: _Want) -> tuple[str, ...]:
    """The devices a want routes through (for link changes)."""
    if want[2] is MULTIPATH:
        return tuple(h[1] for h in want[1] if h[1] is not None)
    return () if want[2] is None else (want[2],)


def _parse_want(t: Target) -> _Want:
    if t.nexthops:
        return _parse_multipath(t)
    try:
        rtype = ROUTE_TYPES[t.type]
    except KeyError as exc:
        raise RouteTableError(f"route target {t!r} is invalid: {exc}") from exc
    gw = _gateway(t.dst, t.gateway) if t.gateway else b""
    if rtype != RTN_UNICAST and (gw or t.ifname):
        raise RouteTableError(f"route target {t.dst!r}: a {t.type} route takes no gateway or device")
    if rtype == RTN_UNICAST and not (gw or t.ifname):
        raise RouteTableError(f"route target {t.dst!r}: a unicast route needs a gateway or a device")
    return (rtype, gw, t.ifname, t.onlink)


def parse_target(t: Target) -> tuple[RouteKey, _Want]:
    """Validate and convert a Target to its key and unresolved form."""
    dst, plen = _parse_dst(t.dst)
    want = _parse_want(t)
    return _key(t.table, dst, plen, t.metric, want, t.dst), want


def _target_of(key: RouteKey, want: _Want) -> Target:
    """The Target a (key, want) pair was parsed from (for display: desired_targets)."""
    table, dst, plen, metric = key
    rtype, gw, ifname, onlink = want
    base = {"dst": f"{_ntop(dst)}/{plen}", "table": table, "metric": metric}
    if ifname is MULTIPATH:
        return Target(**base, nexthops=tuple(
            NextHop(_ntop(g), i, o) for g, i, o in gw))
    rtype_name = next(n for n, v in ROUTE_TYPES.items() if v == rtype)
    return Target(**base, gateway=_ntop(gw) if gw else None, ifname=ifname,
                  type=rtype_name, onlink=onlink)


def _resolve_multipath(hops, get_index) -> RouteForm | None:
    """The kernel form of a multipath want, or None while one of its devices is missing.

    All hops or none: installing a subset would move traffic for a moment and
    then again when the device appears.
    """
    out = []
    for gw, ifname, onlink in hops:
        if ifname is None:
            out.append((gw, 0, onlink))
            continue
        idx = get_index(ifname)
        if idx is None:
            return None
        out.append((gw, idx, onlink))
    out.sort()
    return (RTN_UNICAST, tuple(out), MULTIPATH_OIF, False)  # type: ignore[return-value]


def _form_of(want: _Want, get_index) -> RouteForm | None:
    """The kernel form of a want, or None while a device it needs is missing."""
    rtype, gw, ifname, onlink = want
    if ifname is None:
        return (rtype, gw, 0, onlink)
    if ifname is MULTIPATH:
        return _resolve_multipath(gw, get_index)
    idx = get_index(ifname)
    return None if idx is None else (rtype, gw, idx, onlink)


_UNSET = object()


class _Lookup(Mapping):
    """``{key: want_of(key) for key in keys}`` without building it: the incremental
    apply looks at the dirty keys once (100k at session start)."""

    def __init__(self, keys, want_of) -> None:
        self._keys = keys
        self._want_of = want_of

    def __getitem__(self, key):
        if key not in self._keys:
            raise KeyError(key)
        return self._want_of(key)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def items(self):
        want_of = self._want_of
        return ((k, want_of(k)) for k in self._keys)

    def values(self):
        return map(self._want_of, self._keys)


def plan(wants: Mapping[RouteKey, _Want | None], actual: Mapping[RouteKey, RouteForm],
         ifindex: Mapping[str, int], in_sync: bool, full: bool,
         withdrawn: Set[RouteKey] = frozenset(),
         ) -> tuple[list[RouteOp], set[RouteKey], set[RouteKey]]:
    """Pure decision.

    ``wants`` maps each key to look at to its winning desired route (None: not
    desired). With ``full`` every key of ``actual`` is looked at too (a resync).
    Before ``in_sync`` a route of ours that nobody desires is kept (stale), unless its
    key is in ``withdrawn``: desired during this run and then given up explicitly.
    Returns (ops, waiting_for_interface, stale_kept); keys in neither and not in
    ops need nothing. Only ops, waiting and stale keys stay dirty.

    Wants are shared tuples (100k learned routes via one ToR have one), so each
    distinct want is resolved to its kernel form once (keyed by identity) and the
    ops of those routes share
    one form object -- which ``nlwire.pack_route_ops`` packs once as a template.
    (The wants are the route table's own shared tuples: alive for the whole call.)
    """
    ops: list[RouteOp] = []
    waiting: set[RouteKey] = set()
    stale: set[RouteKey] = set()
    get_actual = actual.get
    get_index = ifindex.get
    append = ops.append
    forms: dict[int, RouteForm | None] = {}
    get_form = forms.get
    last_want: object = _UNSET
    form: RouteForm | None = None
    for key, want in wants.items():
        have = get_actual(key)
        if want is None:
            if have is not None:
                if in_sync or key in withdrawn:
                    append((OP_DELETE, key, None))
                else:
                    stale.add(key)
            continue
        if want is not last_want:  # runs of one want are the rule
            last_want = want
            form = get_form(id(want), _UNSET)
            if form is _UNSET:
                form = forms[id(want)] = _form_of(want, get_index)
        if form is None:
            # The device is not there (yet): leave any current route alone
            # and wait for it rather than error-looping.
            waiting.add(key)
        elif have is None:
            append((OP_ADD, key, form))
        elif have != form:
            append((OP_REPLACE, key, form))
    if full:
        for key in actual.keys() - wants.keys():
            if in_sync or key in withdrawn:
                append((OP_DELETE, key, None))
            else:
                stale.add(key)
    return ops, waiting, stale


@dataclass
class RouteTable:
    """Desired routes per route class vs the kernel's routes of our protocol.

    ``class_order`` lists route classes highest priority first: when two classes
    want the same key the earlier one wins (e.g. a local workload /32 beats a
    borrowed /32 learned over BGP). Unknown classes rank after the listed ones.
    """

    driver: RouteDriver
    protocol: int
    tables: frozenset[int] = frozenset({RT_TABLE_MAIN})
    class_order: Sequence[str] = ()
    resync_interval: float = DEFAULT_RESYNC_INTERVAL
    clock: Callable[[], float] = time.monotonic
    _desired: dict[str, dict[RouteKey, _Want]] = field(default_factory=dict, init=False)
    _want_cache: dict[tuple, _Want] = field(default_factory=dict, init=False)
    _actual: dict[RouteKey, RouteForm] = field(default_factory=dict, init=False)
    _dirty: set[RouteKey] = field(default_factory=set, init=False)
    # Keys desired during this run and then no longer desired, while not yet in sync:
    # an explicit withdrawal (a peer's withdraw, a deleted pod) applies at once; only
    # routes read back at start that nobody desired yet wait for mark_in_sync (issue 18).
    _withdrawn: set[RouteKey] = field(default_factory=set, init=False)
    _resync_pending: bool = field(default=True, init=False)
    _in_sync: bool = field(default=False, init=False)
    _last_resync: float | None = field(default=None, init=False)
    _ifindex: dict[str, int] = field(default_factory=dict, init=False)
    _order: list[str] = field(default_factory=list, init=False)
    # Bumped by every change to the desired routes, so a copy for other threads
    # (``desired_snapshot``) is made only when something changed.
    _version: int = field(default=0, init=False)
    _snapshot: DesiredRoutes | None = field(default=None, init=False)
    # Classes whose dict the last snapshot holds (copy-on-write, issue 17): the snapshot
    # shares the live dict instead of copying 100k routes; the next change to that class
    # copies it first, so a published snapshot never changes.
    _shared: set[str] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.protocol <= 255:
            raise RouteTableError(f"route protocol {self.protocol} out of range 1..255")
        self._log = log.bind(protocol=self.protocol)
        self._order = list(self.class_order)

    # --- desired state -------------------------------------------------------------
    def set_routes(self, route_class: str, targets: Iterable[Target]) -> None:
        """Replace the whole desired set of ``route_class``."""
        new: dict[RouteKey, _Want] = {}
        tables = self.tables
        parse_dst = _parse_dst
        want_for = self._want_for
        for t in targets:
            want = want_for(t)
            dst, plen = parse_dst(t.dst)
            if t.table not in tables:
                raise RouteTableError(f"route {t.dst}: table {t.table} is not managed "
                                      f"(managed: {sorted(tables)})")
            if len(dst) == 4 and len(want[1]) != 16:    # IPv4 with no IPv6 gateway: as ever
                new[(t.table, dst, plen, t.metric)] = want
            else:
                new[_key(t.table, dst, plen, t.metric, want, t.dst)] = want
        self._replace_class(route_class, new)

    def set_routes_grouped(self, route_class: str,
                           groups: Iterable[tuple[Iterable[str], Target]]) -> None:
        """``set_routes`` for routes that come in groups sharing everything but ``dst``:
        each ``(dsts, template)`` makes one route per dst like ``template`` (whose own
        ``dst`` is ignored). No per-route ``Target`` is built (100k learned routes)."""
        new: dict[RouteKey, _Want] = {}
        for dsts, template in groups:
            table, metric, want = self._template(template)
            for dst in dsts:
                d, plen = _parse_dst(dst)
                new[_key(table, d, plen, metric, want, dst)] = want
        self._replace_class(route_class, new)

    def _replace_class(self, route_class: str, new: dict[RouteKey, _Want]) -> None:
        old = self._desired.get(route_class, {})
        if route_class not in self._order:
            self._order.append(route_class)
        # Dirty = keys whose want changed in this class (added, removed, altered).
        dirty = self._dirty
        if not old:
            dirty.update(new)
        else:
            for k, w in new.items():
                if old.get(k) != w:
                    dirty.add(k)
            removed = old.keys() - new.keys()
            dirty.update(removed)
            if not self._in_sync:
                self._withdrawn.update(removed)
        self._desired[route_class] = new
        self._shared.discard(route_class)
        self._version += 1

    def _want_for(self, t: Target) -> _Want:
        # Many targets share gateway/device/type: validate and build that part once and
        # share the tuple (100k targets: ~2x faster, less memory, identity compares).
        wk = (t.gateway, t.ifname, t.type, t.onlink, t.nexthops)
        want = self._want_cache.get(wk)
        if want is None:
            if len(self._want_cache) > 4096:  # next-hop churn must not grow it forever
                self._want_cache = {}
            want = self._want_cache[wk] = _parse_want(t)
        return want

    def _template(self, template: Target) -> tuple[int, int, _Want]:
        if template.table not in self.tables:
            raise RouteTableError(f"route template {template!r}: table {template.table} "
                                  f"is not managed")
        return template.table, template.metric, self._want_for(template)

    def route_update(self, route_class: str, target: Target) -> None:
        """Add or change one route of a class (incremental form of set_routes)."""
        self.update_many(route_class, (target.dst,), target)

    def update_many(self, route_class: str, dsts: Iterable[str], template: Target) -> None:
        """Add or change one route per dst, each like ``template`` (its ``dst`` ignored)."""
        table, metric, want = self._template(template)
        if route_class not in self._order:
            self._order.append(route_class)
        self._version += 1
        cls = self._writable(route_class)
        get = cls.get
        dirty = self._dirty
        parse_dst = _parse_dst
        aton = socket.inet_aton
        # The IPv4 host-route fast path only for wants that can carry IPv4 (not an IPv6
        # gateway); everything else goes through _key, which checks the family.
        v4_fast = _gw_len(want) != 16
        for dst in dsts:
            addr, _, plen_s = dst.partition("/")
            if v4_fast and plen_s == "32" and addr.count(".") == 3:
                # A host route (most of a ToR's table): no length to convert, no host bits.
                try:
                    key = (table, aton(addr), 32, metric)
                except OSError:
                    parse_dst(dst)  # raises the RouteTableError naming the dst
                    raise
            else:
                d, plen = parse_dst(dst)
                key = _key(table, d, plen, metric, want, dst)
            have = get(key)
            if have is not want and have != want:
                cls[key] = want
                dirty.add(key)

    def route_remove(self, route_class: str, dst: str, table: int = RT_TABLE_MAIN,
                     metric: int = 0) -> None:
        self.remove_many(route_class, (dst,), table, metric)

    def remove_many(self, route_class: str, dsts: Iterable[str], table: int = RT_TABLE_MAIN,
                    metric: int = 0) -> None:
        if not self._desired.get(route_class):
            return
        cls = self._writable(route_class)
        self._version += 1
        dirty = self._dirty
        for dst in dsts:
            d, plen = _parse_dst(dst)
            key = (table, d, plen, metric if len(d) == 4 else v6_metric(metric))
            if cls.pop(key, None) is not None:
                dirty.add(key)
                if not self._in_sync:
                    self._withdrawn.add(key)

    def _writable(self, route_class: str) -> dict[RouteKey, _Want]:
        """The class's dict, ready to change in place: a copy if a snapshot shares it."""
        cls = self._desired.get(route_class)
        if cls is None:
            cls = self._desired[route_class] = {}
        elif route_class in self._shared:
            cls = self._desired[route_class] = dict(cls)
            self._shared.discard(route_class)
        return cls

    def desired_targets(self, route_class: str) -> list[Target]:
        return [_target_of(key, want) for key, want in self._desired.get(route_class, {}).items()]

    def desired_count(self, route_class: str) -> int:
        return len(self._desired.get(route_class, ()))

    def desired_snapshot(self) -> DesiredRoutes:
        """An immutable copy of the desired routes, safe to read from another thread
        (the status API) while this table keeps changing. Copied only when the desired
        routes changed since the last call. No copy: the snapshot shares each class's dict
        and the table copies a class before it next changes it (``_writable``), so at rest
        100k routes are held once, not twice (issue 17)."""
        snap = self._snapshot
        if snap is None or snap.version != self._version:
            order = tuple(self._order) + tuple(c for c in self._desired if c not in self._order)
            snap = self._snapshot = DesiredRoutes(
                self._version, order,
                MappingProxyType({c: MappingProxyType(d) for c, d in self._desired.items()}))
            self._shared = set(self._desired)
        return snap

    # --- sync control --------------------------------------------------------------
    def queue_resync(self) -> None:
        self._resync_pending = True

    def mark_in_sync(self) -> None:
        """The sources are complete: stale routes of ours may now be deleted."""
        if not self._in_sync:
            self._in_sync = True
            self._withdrawn = set()
            self._log.info("route_sources_in_sync")
            # Stale keys were left dirty-but-kept; look at them again.
            self._dirty.update(k for k in self._actual if self._winner(k) is None)

    def on_links_changed(self, names: Iterable[str] | None = None) -> None:
        """Devices appeared, vanished or were renumbered: re-resolve their routes.

        ``names`` limits the work to routes through those devices (a new pod
        veth must not make 100k BGP routes via the uplink dirty); None = all.
        """
        if names is None:
            self._ifindex = {}
            wanted = None
        else:
            wanted = set(names)
            for n in wanted:
                self._ifindex.pop(n, None)  # forces a link re-read at the next apply
        self._dirty.update(k for cls in self._desired.values() for k, w in cls.items()
                           if w[2] is not None and (wanted is None or w[2] in wanted or (
                               w[2] is MULTIPATH and not wanted.isdisjoint(_want_ifnames(w)))))

    def seconds_until_resync(self) -> float:
        """For the daemon loop's sleep: 0 when a resync is due or queued."""
        if self._resync_pending or self._last_resync is None:
            return 0.0
        return max(0.0, self._last_resync + self.resync_interval - self.clock())

    @property
    def in_sync(self) -> bool:
        return self._in_sync

    def pending(self) -> int:
        return len(self._dirty)

    # --- reconcile -----------------------------------------------------------------
    def _winner(self, key: RouteKey) -> _Want | None:
        for cls in self._order:
            want = self._desired.get(cls, {}).get(key)
            if want is not None:
                return want
        return None

    def _all_wants(self) -> Mapping[RouteKey, _Want]:
        classes = [self._desired[c] for c in self._order if self._desired.get(c)]
        if len(classes) == 1:
            return classes[0]  # the common case: no merge at all
        merged: dict[RouteKey, _Want] = {}
        for cls in reversed(classes):  # higher priority classes overwrite
            merged.update(cls)
        return merged

    def apply(self) -> ApplyResult:
        """Bring the kernel to the desired state for dirty keys (all keys on resync)."""
        now = self.clock()
        resync = self._resync_pending or (
            self._last_resync is None or now - self._last_resync >= self.resync_interval)
        wants: Mapping[RouteKey, _Want | None]
        if resync:
            self._actual = self.driver.dump_routes(self.protocol, self.tables)
            self._ifindex = self.driver.link_indexes()
            self._last_resync = now
            self._resync_pending = False
            wants = self._all_wants()
            ops, waiting, stale = plan(wants, self._actual, self._ifindex, self._in_sync, True,
                                       self._withdrawn)
        else:
            classes = [self._desired[c] for c in self._order if self._desired.get(c)]
            want_of = classes[0].get if len(classes) == 1 else self._winner
            ops, waiting, stale = plan(_Lookup(self._dirty, want_of), self._actual,
                                       self._ifindex, self._in_sync, False, self._withdrawn)
            if waiting:
                # A device we route through was missing from the last link read: it may
                # have appeared since (a pod's veth, the VXLAN device). Re-read the links
                # and look at just those routes again.
                self._ifindex = self.driver.link_indexes()
                more, waiting, _ = plan(_Lookup(waiting, want_of), self._actual,
                                        self._ifindex, self._in_sync, False, self._withdrawn)
                ops += more
        try:
            results = self.driver.execute(ops, self.protocol) if ops else []
        except Exception:
            # Part of the batch may have reached the kernel: re-read it next time.
            self._resync_pending = True
            raise
        failed: dict[RouteKey, int] = {}
        counts = {OP_ADD: 0, OP_REPLACE: 0, OP_DELETE: 0}
        actual = self._actual
        if not any(results):
            # Every op succeeded (the common case, e.g. 100k routes at session start).
            for op, key, form in ops:
                counts[op] += 1
                if op == OP_DELETE:
                    actual.pop(key, None)
                else:
                    actual[key] = form  # type: ignore[assignment]
        else:
            # ESRCH on a delete means the route is already gone (or was never ours):
            # nothing of ours remains.
            for (op, key, form), err in zip(ops, results, strict=True):
                if err and not (op == OP_DELETE and err == errno.ESRCH):
                    failed[key] = err
                    continue
                counts[op] += 1
                if op == OP_DELETE:
                    actual.pop(key, None)
                else:
                    actual[key] = form  # type: ignore[assignment]
        if failed:
            adopted = self._adopt_own_routes(ops, failed)
            counts[OP_ADD] += adopted
        # Every examined key is settled except these; a resync examined all keys
        # and an incremental apply examined exactly the dirty ones.
        self._dirty = set(failed) | waiting | stale
        if failed:
            # After any error the kernel may differ from our picture (a foreign
            # route on our key, a vanished device): re-read it next time.
            self._resync_pending = True
            sample = {f"{_ntop(k[1])}/{k[2]}": errno.errorcode.get(e, str(e))
                      for k, e in list(failed.items())[:5]}
            self._log.warning("routes_failed", count=len(failed), sample=sample)
        result = ApplyResult(resync, counts[OP_ADD], counts[OP_REPLACE], counts[OP_DELETE],
                             failed, len(waiting), len(stale))
        if ops or resync:
            self._log.debug("routes_applied", **result.summary())
        return result

    def _adopt_own_routes(self, ops: Sequence[RouteOp], failed: dict[RouteKey, int]) -> int:
        """Settle EEXISTs where the route on the key is already ours and exactly as desired.

        Why: another writer of our protocol may add a route before we do -- the CNI
        plugin adds a pod's /32 through its veth the moment the pod starts, and only then
        does the daemon desire it. Our EXCL add then meets our own route. Treating that
        as a failure logged ``routes_failed EEXIST`` and cost a full resync per pod start
        (issue 18). Only routes of our protocol with the identical form are adopted; a
        foreign route on our key stays a failure and is never touched. Removes the
        adopted keys from ``failed``; returns how many.
        """
        by_oif: dict[int, list[tuple[RouteKey, RouteForm]]] = {}
        for op, key, form in ops:
            # Routes through one device only: a blackhole or multipath form has no single
            # interface to filter a small dump by (those keep the failure + resync path).
            if (op == OP_ADD and failed.get(key) == errno.EEXIST and form is not None
                    and form[2] > 0):
                by_oif.setdefault(form[2], []).append((key, form))
        if not by_oif or len(by_oif) > MAX_ADOPTION_DUMPS:
            return 0
        adopted = 0
        for oif, wanted in by_oif.items():
            ours = self.driver.dump_routes_via(self.protocol, self.tables, oif)
            for key, form in wanted:
                if ours.get(key) == form:
                    del failed[key]
                    self._actual[key] = form
                    adopted += 1
        if adopted:
            self._log.debug("routes_adopted", count=adopted)
        return adopted


class KernelRouteDriver:
    """RouteDriver over real netlink: raw bulk socket for routes, pyroute2 for links."""

    def __init__(self, netns: str | None = None, ipr=None, route_socket=None) -> None:
        from felix_like.nlwire import RouteSocket

        self.netns = netns
        self._own_ipr = ipr is None
        if ipr is None:
            from pyroute2 import IPRoute

            ipr = IPRoute(netns=netns, flags=0, groups=0) if netns else IPRoute(groups=0)
        self.ipr = ipr
        self.rsock = route_socket or RouteSocket.open(netns)

    def dump_routes(self, protocol: int, tables: frozenset[int]) -> dict[RouteKey, RouteForm]:
        # Both families: keys cannot collide (4- vs 16-byte dst), and a restart's
        # read-back must see our IPv6 routes too or they would never be swept.
        out = self.rsock.dump(protocol, tables)
        out.update(self.rsock.dump(protocol, tables, family=socket.AF_INET6))
        return out

    def dump_routes_via(self, protocol: int, tables: frozenset[int],
                        oif: int) -> dict[RouteKey, RouteForm]:
        out = self.rsock.dump(protocol, tables, oif=oif)
        out.update(self.rsock.dump(protocol, tables, oif=oif, family=socket.AF_INET6))
        return out

    def link_indexes(self) -> dict[str, int]:
        return {link.get("ifname"): link["index"] for link in self.ipr.get_links()}

    def execute(self, ops: Sequence[RouteOp], protocol: int) -> list[int]:
        return self.rsock.execute(ops, protocol)

    def close(self) -> None:
        self.rsock.close()
        if self._own_ipr:
            self.ipr.close()
