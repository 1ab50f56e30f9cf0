"""Import policy for learned routes (pure): default deny, one reason per rejection.

Accepted: a prefix inside one of our IP pools (other nodes' blocks and borrowed /32s), or a
prefix the config explicitly allows for that peer (e.g. a default route from the ToR).
Rejected, checked in this order (the first reason that applies is counted):

- ``as-loop``: our AS is in the AS path (ExaBGP does no loop check on receive; FRR reflected
  our own prefix back in the prototype);
- ``martian-nexthop``: next hop in 0/8, 127/8, 169.254/16, 224/4 (incl. 240/4, broadcast);
  IPv6: ::, ::1, IPv4-mapped ::ffff:0:0/96, link-local fe80::/10, multicast ff00::/8;
- ``own-nexthop``: the next hop is one of our addresses;
- ``own-block``: the prefix is one of our own blocks or more specific inside one (a peer must
  never take traffic for our pods);
- ``outside-pools``: neither inside a pool nor explicitly allowed for the peer.

Max-prefix is enforced by the core (it needs per-peer counts), with reason ``max-prefix``.

Both families (issue 15): an IPv6 prefix is checked against the IPv6 pools, our IPv6 blocks
and the peer's IPv6 filters, never against IPv4 ones (the two are kept apart, so no
128-bit value can fall inside a 32-bit range by accident); the same reasons are counted.

Review notes: the hot path runs once per learned prefix (100k at session start), so networks
are kept as (int address, int mask) pairs and prefixes parsed with ``str.partition`` instead
of ``ipaddress`` objects.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from bgpd.bgp.exabgp_config import PrefixFilter

_MASKS = tuple((0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF for n in range(33))

REASONS = ("as-loop", "martian-nexthop", "own-nexthop", "own-block", "outside-pools",
           "max-prefix", "malformed-prefix")



def _net(text: str) -> tuple[int, int, int]:
    """'a.b.c.d/len' -> (network int, mask int, len). Raises ValueError."""
    addr, _, plen = text.partition("/")
    length = int(plen) if plen else 32
    if not 0 <= length <= 32 or addr.count(".") != 3:
        raise ValueError(text)
    try:
        value = int.from_bytes(socket.inet_aton(addr), "big")
    except OSError:
        raise ValueError(text) from None
    mask = _MASKS[length]
    return value & mask, mask, length


_MAX_INDEX = 1 << 16


def _host_index(pools: tuple, own: tuple) -> tuple | None:
    """Sets to test many /32 addresses at once: inside a pool <=> ``v >> shift`` is in
    the pools' set (every pool expanded to the longest pool length); inside one of our
    blocks <=> for some block length, ``v >> (32 - length)`` is in that length's set.
    None when the pools' expansion would be too large (the per-prefix check then runs)."""
    if not pools:
        return None
    longest = max(length for _, _, length in pools)
    if sum(1 << (longest - length) for _, _, length in pools) > _MAX_INDEX:
        return None
    shift = 32 - longest
    keys = frozenset(k for net, _, length in pools
                     for k in range(net >> shift, (net >> shift) + (1 << (longest - length))))
    by_length: dict[int, set[int]] = {}
    for net, _, length in own:
        by_length.setdefault(length, set()).add(net >> (32 - length))
    owns = tuple((32 - length, frozenset(v)) for length, v in by_length.items())
    return (shift, keys), owns


def _host_bits(text: str, net: tuple[int, int, int]) -> bool:
    """True when ``text`` has bits set past its length (198.19.1.197/26). ExaBGP passes
    such NLRI on as the peer sent them; the RIB keys and the kernel need the network
    address, so the route is refused as malformed (and counted) rather than masked."""
    addr = text.partition("/")[0]
    return int.from_bytes(socket.inet_aton(addr), "big") != net[0]


def _within(net: tuple[int, int, int], outer: tuple[int, int, int]) -> bool:
    return net[2] >= outer[2] and (net[0] & outer[1]) == outer[0]


_MARTIANS = tuple(_net(n) for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16",
                                     "224.0.0.0/3"))

_ALL6 = (1 << 128) - 1


def _net6(text: str) -> tuple[int, int, int]:
    """'2001:2::/64' -> (network int, mask int, len), 128-bit. Raises ValueError, also for
    host bits set past the length (the RIB and the kernel need the network address)."""
    addr, _, plen = text.partition("/")
    length = int(plen) if plen else 128
    if not 0 <= length <= 128 or ":" not in addr:
        raise ValueError(text)
    try:
        value = int.from_bytes(socket.inet_pton(socket.AF_INET6, addr), "big")
    except OSError:
        raise ValueError(text) from None
    mask = (_ALL6 << (128 - length)) & _ALL6
    if value & ~mask:
        raise ValueError(text)
    return value, mask, length


_MARTIANS6 = tuple(_net6(n) for n in ("::/128", "::1/128", "::ffff:0:0/96", "fe80::/10",
                                      "ff00::/8"))


def _split(texts: Iterable[str]) -> tuple[list[str], list[str]]:
    """(IPv4, IPv6) networks, canonical; raises ValueError on one that is neither."""
    v4, v6 = [], []
    for t in texts:
        net = ipaddress.ip_network(t)
        (v6 if net.version == 6 else v4).append(str(net))
    return v4, v6


@dataclass(frozen=True)
class ImportPolicy:
    local_as: int
    pools: tuple[str, ...]
    own_blocks: frozenset[str] = frozenset()
    own_addresses: frozenset[str] = frozenset()
    allowed: Mapping[str, tuple[PrefixFilter, ...]] = field(default_factory=dict)
    _pools: tuple = field(default=(), init=False, repr=False, compare=False)
    _own: tuple = field(default=(), init=False, repr=False, compare=False)
    _allowed: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _own_ints: frozenset = field(default=frozenset(), init=False, repr=False, compare=False)
    _host_index: tuple | None = field(default=None, init=False, repr=False, compare=False)
    # The IPv6 side (issue 15): networks as 128-bit (net, mask, len).
    _pools6: tuple = field(default=(), init=False, repr=False, compare=False)
    _own6: tuple = field(default=(), init=False, repr=False, compare=False)
    _own_ints6: frozenset = field(default=frozenset(), init=False, repr=False, compare=False)
    _allowed6: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pools4, pools6 = _split(self.pools)
        own4, own6 = _split(self.own_blocks)
        addrs = [ipaddress.ip_address(a) for a in self.own_addresses]
        object.__setattr__(self, "_pools", tuple(_net(p) for p in pools4))
        object.__setattr__(self, "_own", tuple(_net(b) for b in own4))
        object.__setattr__(self, "_own_ints", frozenset(int(a) for a in addrs if a.version == 4))
        object.__setattr__(self, "_host_index", _host_index(self._pools, self._own))
        object.__setattr__(self, "_allowed", {
            peer: tuple((_net(f.network), f.le) for f in filters if ":" not in f.network)
            for peer, filters in self.allowed.items()})
        object.__setattr__(self, "_pools6", tuple(_net6(p) for p in pools6))
        object.__setattr__(self, "_own6", tuple(_net6(b) for b in own6))
        object.__setattr__(self, "_own_ints6", frozenset(int(a) for a in addrs if a.version == 6))
        object.__setattr__(self, "_allowed6", {
            peer: tuple((_net6(f.network), f.le) for f in filters if ":" in f.network)
            for peer, filters in self.allowed.items()})

    def with_own_blocks(self, blocks: Iterable[str]) -> ImportPolicy:
        return ImportPolicy(self.local_as, self.pools, frozenset(blocks), self.own_addresses,
                            self.allowed)

    def _allowed_for(self, peer: str, net: tuple[int, int, int], v6: bool = False) -> bool:
        for outer, le in (self._allowed6 if v6 else self._allowed).get(peer, ()):
            if le is None:
                if net == outer:
                    return True
            elif _within(net, outer) and net[2] <= le:
                return True
        return False

    def check_path(self, nexthop: str, as_path: tuple[int, ...]) -> str | None:
        """The per-path checks (once per next hop group of an UPDATE)."""
        if self.local_as in as_path:
            return "as-loop"
        if ":" in nexthop:
            try:
                nh6 = _net6(nexthop)
            except ValueError:
                return "martian-nexthop"
            if any(_within(nh6, m) for m in _MARTIANS6):
                return "martian-nexthop"
            return "own-nexthop" if nh6[0] in self._own_ints6 else None
        try:
            nh = _net(nexthop)
        except ValueError:
            return "martian-nexthop"
        if any(_within(nh, m) for m in _MARTIANS):
            return "martian-nexthop"
        if nh[0] in self._own_ints:
            return "own-nexthop"
        return None

    def check_prefix(self, peer: str, prefix: str) -> str | None:
        """The per-prefix checks."""
        if ":" in prefix:
            return self._check_prefix6(peer, prefix)
        try:
            net = _net(prefix)
            if _host_bits(prefix, net):
                raise ValueError(prefix)
        except ValueError:
            return "malformed-prefix"
        value, _, length = net
        for own_net, own_mask, own_len in self._own:
            if length >= own_len and value & own_mask == own_net:
                return "own-block"
        if self._allowed and self._allowed_for(peer, net):
            return None
        for pool_net, pool_mask, pool_len in self._pools:
            if length >= pool_len and value & pool_mask == pool_net:
                return None
        return "outside-pools"

    def _check_prefix6(self, peer: str, prefix: str) -> str | None:
        try:
            net = _net6(prefix)
        except ValueError:
            return "malformed-prefix"
        if any(_within(net, own) for own in self._own6):
            return "own-block"
        if self._allowed6 and self._allowed_for(peer, net, v6=True):
            return None
        if any(_within(net, pool) for pool in self._pools6):
            return None
        return "outside-pools"

    def split_prefixes(self, peer: str, prefixes: Sequence[str],
                       host_values: Sequence[int] | None = None
                       ) -> tuple[list[str], list[tuple[str, str]]]:
        """``check_prefix`` over many prefixes: (accepted, [(prefix, reason), ...]).

        The 100k-routes path: the parse and the pool/own-block tests are inlined (one
        call per UPDATE instead of three per prefix); ``check_prefix`` is the reference
        it must agree with (tests/bgp/test_learned_fastpath.py compares them).

        ``host_values``: when every prefix is a /32, their addresses as ints
        (``RouteUpdate.host_values``). If all lie inside the pools and none inside our
        blocks -- two set operations on the addresses' leading bits (``_host_index``) --
        the whole UPDATE (a ToR's ~300 host routes) is accepted without parsing each
        prefix; otherwise each is checked.
        """
        index = self._host_index
        if host_values and index is not None and len(host_values) == len(prefixes):
            (pool_shift, pool_keys), owns = index
            if pool_keys.issuperset({v >> pool_shift for v in host_values}) and all(
                    keys.isdisjoint({v >> shift for v in host_values}) for shift, keys in owns):
                return list(prefixes), []
        ok: list[str] = []
        bad: list[tuple[str, str]] = []
        own = self._own
        pools = self._pools
        allowed = bool(self._allowed)
        masks = _MASKS
        aton = socket.inet_aton
        from_bytes = int.from_bytes
        for prefix in prefixes:
            addr, _, plen = prefix.partition("/")
            try:
                length = int(plen) if plen else 32
                if not 0 <= length <= 32 or addr.count(".") != 3:
                    raise ValueError(prefix)
                value = from_bytes(aton(addr), "big")
                if value & ~masks[length] & 0xFFFFFFFF:  # host bits set (see _host_bits)
                    raise ValueError(prefix)
            except (OSError, ValueError):
                # Not IPv4: an IPv6 prefix takes the IPv6 checks (issue 15).
                why = self._check_prefix6(peer, prefix) if ":" in addr else "malformed-prefix"
                if why:
                    bad.append((prefix, why))
                else:
                    ok.append(prefix)
                continue
            reason = "outside-pools"
            for own_net, own_mask, own_len in own:
                if length >= own_len and value & own_mask == own_net:
                    reason = "own-block"
                    break
            else:
                if allowed and self._allowed_for(peer, (value, masks[length], length)):
                    reason = ""
                else:
                    for pool_net, pool_mask, pool_len in pools:
                        if length >= pool_len and value & pool_mask == pool_net:
                            reason = ""
                            break
            if reason:
                bad.append((prefix, reason))
            else:
                ok.append(prefix)
        return ok, bad

    def check(self, peer: str, prefix: str, nexthop: str, as_path: tuple[int, ...]) -> str | None:
        """None when accepted, else the rejection reason."""
        return self.check_path(nexthop, as_path) or self.check_prefix(peer, prefix)
