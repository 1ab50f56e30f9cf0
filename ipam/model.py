"""Pure IPAM values and arithmetic: pools, blocks, allocation order, selectors.

Nothing here does I/O or reads the clock: time is always a ``now`` argument.
Values are frozen; "changing" a block returns a new one, so the allocator can
build the next version, try to write it, and keep the old one if the write
loses the compare-and-swap race.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import itertools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ipam.errors import IpamInvalid

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_BLOCK_SIZE = {4: 26, 6: 122}
# IPv6 block sizes Calico accepts (api/pkg/apis/projectcalico/v3/ippool.go): a /116 holds
# 4096 addresses (the most a block's ordinal walk should scan), a /128 one.
IPV6_BLOCK_SIZES = range(116, 129)
ENCAP_MODES = ("Never", "Always", "CrossSubnet")
POD_HANDLE_PREFIX = "k8s-pod-network."
TUNNEL_HANDLE_PREFIX = "ipip-tunnel-addr-"
# The VXLAN device's address (VTEP) of a node: live exactly as long as its node.
VXLAN_TUNNEL_HANDLE_PREFIX = "vxlan-tunnel-addr-"
_HANDLE_RE = re.compile(r"^[A-Za-z0-9._:@-]{1,253}$")
_NODE_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")

PENDING = "pending"
CONFIRMED = "confirmed"


# ---------------------------------------------------------------- parsing

def parse_network(text: str, what: str = "CIDR") -> IPNetwork:
    try:
        return ipaddress.ip_network(str(text), strict=True)
    except ValueError as exc:
        raise IpamInvalid(f"{what} {text!r} is not a valid network ({exc}); "
                          f"write it as address/prefix with no host bits, e.g. 198.19.0.0/16") from None


def parse_ip(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(str(text))
    except ValueError:
        raise IpamInvalid(f"address {text!r} is not a valid IP address; "
                          f"pass a bare address such as 198.19.0.5") from None


def check_handle(handle: str) -> str:
    if not isinstance(handle, str) or not _HANDLE_RE.match(handle):
        raise IpamInvalid(f"handle {handle!r} is invalid: use 1-253 characters from "
                          f"[A-Za-z0-9._:@-], e.g. {POD_HANDLE_PREFIX}<containerID>")
    return handle


def check_node(node: str) -> str:
    if not isinstance(node, str) or not _NODE_RE.match(node):
        raise IpamInvalid(f"node name {node!r} is invalid: use a DNS-like name "
                          f"(letters, digits, '.', '-', '_')")
    return node


def pod_handle(container_id: str) -> str:
    """The handle of a pod's address: ``k8s-pod-network.<containerID>``."""
    return check_handle(POD_HANDLE_PREFIX + container_id)


def tunnel_handle(node: str) -> str:
    """The handle of a node's tunnel address: ``ipip-tunnel-addr-<node>``."""
    return check_handle(TUNNEL_HANDLE_PREFIX + check_node(node))


def net_sort_key(net: IPNetwork | IPAddress | str) -> tuple[int, int, int]:
    """Sort key for networks/addresses of both IP versions (v4 first, then by address)."""
    n = ipaddress.ip_network(net, strict=False) if not isinstance(
        net, ipaddress.IPv4Network | ipaddress.IPv6Network) else net
    return (n.version, int(n.network_address), n.prefixlen)


@functools.lru_cache(maxsize=65536)
def cidr_key(net: IPNetwork | str) -> str:
    """A CIDR as one etcd key segment: '/' becomes '-' (198.19.0.0/26 -> 198.19.0.0-26)."""
    return str(net).replace("/", "-")


def key_cidr(segment: str) -> IPNetwork:
    """The inverse of :func:`cidr_key` for one key segment (198.19.0.0-26 -> 198.19.0.0/26)."""
    head, _, plen = segment.rpartition("-")
    return ipaddress.ip_network(f"{head}/{plen}")


def cidr_from_key(key: str) -> IPNetwork:
    """The CIDR a pool or block key ends in (``P/pools/<pool>``, ``P/blocks/<pool>/<block>``).

    A watch reports a deletion by key only, so this is how a reader learns which
    pool or block went away. Raises :class:`IpamInvalid` naming the key.
    """
    segment = key.rsplit("/", 1)[-1]
    try:
        return key_cidr(segment)
    except ValueError as exc:
        raise IpamInvalid(f"etcd key {key!r} does not end in a CIDR written as "
                          f"address-prefixlen, e.g. 198.19.0.0-26 ({exc})") from None


# ---------------------------------------------------------------- selectors

_SEL_TERM = re.compile(
    r"""^\s*(?:
        (?P<all>all\(\))
      | has\((?P<has>[\w./-]+)\)
      | !has\((?P<nothas>[\w./-]+)\)
      | (?P<key>[\w./-]+)\s*(?P<op>==|!=)\s*(?P<q>["'])(?P<val>[^"']*)(?P=q)
    )\s*$""", re.X)


@functools.lru_cache(maxsize=1024)
def parse_selector(text: str) -> tuple[tuple[str, str, str], ...]:
    """A small subset of Calico's selector syntax, terms joined by ``&&``.

    ``all()``, ``has(k)``, ``!has(k)``, ``k == "v"``, ``k != "v"``. The node's
    name is available as the label ``name`` (``noderouter/name`` too).
    """
    terms = []
    for part in (text or "all()").split("&&"):
        m = _SEL_TERM.match(part)
        if not m:
            raise IpamInvalid(f"node selector {text!r}: cannot parse {part.strip()!r}; "
                              f"use all(), has(k), !has(k), k == \"v\", k != \"v\" joined by &&")
        if m["all"]:
            terms.append(("all", "", ""))
        elif m["has"]:
            terms.append(("has", m["has"], ""))
        elif m["nothas"]:
            terms.append(("!has", m["nothas"], ""))
        else:
            terms.append((m["op"], m["key"], m["val"]))
    return tuple(terms)


def selector_matches(text: str, node: str, labels: Mapping[str, str] | None = None) -> bool:
    labels = {**(labels or {}), "name": node, "noderouter/name": node}
    for op, key, val in parse_selector(text):
        if op == "all":
            continue
        if op == "has" and key not in labels:
            return False
        if op == "!has" and key in labels:
            return False
        if op == "==" and labels.get(key) != val:
            return False
        if op == "!=" and labels.get(key) == val:
            return False
    return True


# ---------------------------------------------------------------- pools

@dataclass(frozen=True)
class Pool:
    cidr: IPNetwork
    block_size: int
    disabled: bool = False
    node_selector: str = "all()"
    ipip_mode: str = "Never"
    vxlan_mode: str = "Never"
    nat_outgoing: bool = False
    strict_affinity: bool = False
    deleting: bool = False

    @classmethod
    def new(cls, cidr: str, block_size: int | None = None, **kw: Any) -> Pool:
        net = parse_network(cidr, "pool CIDR")
        size = DEFAULT_BLOCK_SIZE[net.version] if block_size is None else int(block_size)
        maxlen = net.max_prefixlen
        if not (net.prefixlen <= size <= maxlen):
            raise IpamInvalid(f"pool {net}: block size /{size} must lie between the pool's "
                              f"prefix /{net.prefixlen} and /{maxlen}; pick e.g. "
                              f"/{DEFAULT_BLOCK_SIZE[net.version]}")
        if net.version == 6 and size not in IPV6_BLOCK_SIZES:
            raise IpamInvalid(f"pool {net}: IPv6 block size /{size} must lie between "
                              f"/{IPV6_BLOCK_SIZES[0]} and /{IPV6_BLOCK_SIZES[-1]}; the default "
                              f"is /{DEFAULT_BLOCK_SIZE[6]}")
        if net.version == 6 and kw.get("ipip_mode", "Never") != "Never":
            # IPIP (protocol 4) carries only IPv4 inside IPv4: IPv6 pods across subnets go
            # through VXLAN or are routed plainly (Calico refuses the same, ippool.go).
            raise IpamInvalid(f"pool {net}: ipip_mode {kw['ipip_mode']!r} is not possible for an "
                              f"IPv6 pool (IPIP carries IPv4 only); set ipip_mode Never and use "
                              f"vxlan_mode, or plain routing")
        for mode_key in ("ipip_mode", "vxlan_mode"):
            if kw.get(mode_key, "Never") not in ENCAP_MODES:
                raise IpamInvalid(f"pool {net}: {mode_key} {kw[mode_key]!r} must be one of "
                                  f"{', '.join(ENCAP_MODES)}")
        if kw.get("ipip_mode", "Never") != "Never" and kw.get("vxlan_mode", "Never") != "Never":
            raise IpamInvalid(f"pool {net}: choose IPIP or VXLAN, not both; set one mode to Never")
        parse_selector(kw.get("node_selector", "all()"))
        return cls(cidr=net, block_size=size, **kw)

    @property
    def key(self) -> str:
        return cidr_key(self.cidr)

    @property
    def n_blocks(self) -> int:
        return 1 << (self.block_size - self.cidr.prefixlen)

    @property
    def block_len(self) -> int:
        return 1 << (self.cidr.max_prefixlen - self.block_size)

    def block_at(self, index: int) -> IPNetwork:
        base = int(self.cidr.network_address) + index * self.block_len
        return ipaddress.ip_network((base, self.block_size))

    def block_index(self, block: IPNetwork) -> int:
        return (int(block.network_address) - int(self.cidr.network_address)) // self.block_len

    def block_for(self, ip: IPAddress) -> IPNetwork:
        if ip not in self.cidr:
            raise IpamInvalid(f"address {ip} is not in pool {self.cidr}")
        return ipaddress.ip_network((ip, self.block_size), strict=False)

    def to_dict(self) -> dict:
        return {"cidr": str(self.cidr), "block_size": self.block_size, "disabled": self.disabled,
                "node_selector": self.node_selector, "ipip_mode": self.ipip_mode,
                "vxlan_mode": self.vxlan_mode, "nat_outgoing": self.nat_outgoing,
                "strict_affinity": self.strict_affinity, "deleting": self.deleting}

    @classmethod
    def from_dict(cls, d: Mapping) -> Pool:
        return cls(cidr=ipaddress.ip_network(d["cidr"]), block_size=int(d["block_size"]),
                   disabled=bool(d.get("disabled", False)),
                   node_selector=d.get("node_selector", "all()"),
                   ipip_mode=d.get("ipip_mode", "Never"), vxlan_mode=d.get("vxlan_mode", "Never"),
                   nat_outgoing=bool(d.get("nat_outgoing", False)),
                   strict_affinity=bool(d.get("strict_affinity", False)),
                   deleting=bool(d.get("deleting", False)))


def request_family(want: IPNetwork | None, family: int | None) -> int:
    """The IP version an allocation asks for: the named pool's, else ``family``, else 4.

    IPv4 unless asked otherwise, so a caller that never heard of IPv6 keeps getting
    IPv4 addresses when IPv6 pools are added (dual stack asks once per family)."""
    if family not in (None, 4, 6):
        raise IpamInvalid(f"family {family!r} must be 4 or 6")
    if want is not None:
        if family is not None and family != want.version:
            raise IpamInvalid(f"pool {want} is IPv{want.version}, but family {family} was asked "
                              f"for; name a pool of that family or drop one of the two")
        return want.version
    return family or 4


def eligible_pools(pools: Iterable[tuple[Pool, int]], want: IPNetwork | None, node: str,
                   labels: Mapping[str, str], family: int | None = None,
                   ) -> tuple[list[tuple[Pool, int]], list[str]]:
    """The (pool, mod revision) pairs ``node`` may allocate from, by CIDR, and for
    every other pool (restricted to ``want`` when given, and to IP version
    ``family`` when given) the reason it may not: being deleted, disabled, or
    excluded by its node selector."""
    reasons: list[str] = []
    out = []
    for p, mod in sorted(pools, key=lambda pm: net_sort_key(pm[0].cidr)):
        if want is not None and p.cidr != want:
            continue
        if family is not None and p.cidr.version != family:
            continue
        if p.deleting:
            reasons.append(f"pool {p.cidr}: being deleted")
        elif p.disabled:
            reasons.append(f"pool {p.cidr}: disabled")
        elif not selector_matches(p.node_selector, node, labels):
            reasons.append(f"pool {p.cidr}: node selector {p.node_selector!r} excludes "
                           f"node {node}")
        else:
            out.append((p, mod))
    if want is not None and not out and not reasons:
        reasons.append(f"pool {want}: does not exist")
    return out, reasons


def overlapping(new: IPNetwork, existing: Iterable[IPNetwork]) -> list[IPNetwork]:
    return [e for e in existing if e.version == new.version and e.overlaps(new)]


@dataclass(frozen=True)
class ClaimWalk:
    """The block indexes ``0..n-1`` starting at ``start`` and wrapping, computed on demand.

    Lazy because an IPv6 pool has astronomically many blocks (2001:2::/48 in /122
    blocks: 2**74), which no list can hold; the claim walk stops at the first free one.
    """

    start: int
    n: int

    def __iter__(self):
        for i in itertools.count():
            if i >= self.n:
                return
            yield (self.start + i) % self.n

    def __getitem__(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return (self.start + i) % self.n


def claim_order(pool: Pool, node: str) -> ClaimWalk:
    """Block indexes in the order ``node`` tries to claim them.

    The walk starts at an index seeded by the node name (a stable hash, not
    Python's randomized ``hash()``), so nodes start in different places and
    rarely race for the same block; it wraps around to cover every block.
    """
    n = pool.n_blocks
    # 16 bytes of seed for pools of more than 2**64 blocks (IPv6): a 64-bit seed would only
    # ever start in their first 2**64 blocks. Smaller pools keep the 8 bytes they always
    # used, so existing nodes keep their start.
    width = 8 if n <= 1 << 64 else 16
    start = int.from_bytes(hashlib.sha256(node.encode()).digest()[:width], "big") % n
    return ClaimWalk(start, n)


# ---------------------------------------------------------------- blocks

@dataclass(frozen=True)
class Allocation:
    handle: str
    seq: int
    node: str            # the node that allocated it (borrowing is visible through this)
    attrs: Mapping[str, str] = field(default_factory=dict)
    at: float = 0.0

    def to_dict(self) -> dict:
        return {"h": self.handle, "s": self.seq, "n": self.node, "a": dict(self.attrs), "t": self.at}

    @functools.cached_property
    def json_fragment(self) -> str:
        # An allocation never changes, so its JSON is built once: a block of 64
        # is re-encoded on every allocation and this was most of that cost.
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Mapping) -> Allocation:
        return cls(handle=d["h"], seq=int(d["s"]), node=d.get("n", ""), attrs=d.get("a", {}),
                   at=float(d.get("t", 0.0)))


@dataclass(frozen=True)
class Block:
    """One block of a pool.

    ``allocations`` maps ordinal (offset in the block) to its allocation.
    ``seq`` is the block's counter: every allocation takes the next value, so
    (address, seq) names one lease of an address and a stale release — one
    that names an older seq — cannot free a reused address.
    ``cooldown`` maps ordinal to the time before which a released address is
    not handed out again.
    """

    cidr: IPNetwork
    pool: IPNetwork
    affinity: str | None
    state: str = PENDING
    claimed_at: float = 0.0
    seq: int = 0
    allocations: Mapping[int, Allocation] = field(default_factory=dict)
    cooldown: Mapping[int, float] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.cidr.num_addresses

    @property
    def confirmed(self) -> bool:
        return self.state == CONFIRMED

    def ip(self, ordinal: int) -> IPAddress:
        return self.cidr.network_address + ordinal

    def ordinal(self, ip: IPAddress) -> int:
        if ip not in self.cidr:
            raise IpamInvalid(f"address {ip} is not in block {self.cidr}")
        return int(ip) - int(self.cidr.network_address)

    def holder(self, ip: IPAddress) -> Allocation | None:
        return self.allocations.get(self.ordinal(ip))

    def in_cooldown(self, ordinal: int, now: float) -> bool:
        return self.cooldown.get(ordinal, 0.0) > now

    def free_ordinals(self, reserved: frozenset[int] = frozenset(), now: float = 0.0) -> list[int]:
        """Free ordinals in allocation order (lowest first), skipping reserved and cooling."""
        return [o for o in range(self.size)
                if o not in self.allocations and o not in reserved and not self.in_cooldown(o, now)]

    def pick(self, reserved: frozenset[int] = frozenset(), now: float = 0.0) -> int | None:
        """The next ordinal to hand out: the lowest free one, or None."""
        if len(self.allocations) >= self.size:
            return None
        for o in range(self.size):
            if o not in self.allocations and o not in reserved and not self.in_cooldown(o, now):
                return o
        return None

    def cooling(self, now: float) -> int:
        return sum(1 for o, t in self.cooldown.items() if t > now and o not in self.allocations)

    def allocate(self, ordinal: int, handle: str, node: str, attrs: Mapping[str, str],
                 now: float) -> Block:
        if ordinal in self.allocations:
            raise IpamInvalid(f"ordinal {ordinal} of block {self.cidr} is already allocated")
        alloc = Allocation(handle=handle, seq=self.seq + 1, node=node, attrs=dict(attrs), at=now)
        cooldown = {o: t for o, t in self.cooldown.items() if t > now and o != ordinal}
        return replace(self, seq=self.seq + 1, allocations={**self.allocations, ordinal: alloc},
                       cooldown=cooldown)

    def release(self, ordinal: int, now: float, cooldown: float) -> Block:
        allocs = dict(self.allocations)
        allocs.pop(ordinal, None)
        cool = {o: t for o, t in self.cooldown.items() if t > now}
        if cooldown > 0:
            cool[ordinal] = now + cooldown
        return replace(self, allocations=allocs, cooldown=cool)

    def confirm(self) -> Block:
        return replace(self, state=CONFIRMED)

    def to_dict(self) -> dict:
        return {"cidr": str(self.cidr), "pool": str(self.pool), "affinity": self.affinity,
                "state": self.state, "claimed_at": self.claimed_at, "seq": self.seq,
                "allocations": {str(o): a.to_dict() for o, a in sorted(self.allocations.items())},
                "cooldown": {str(o): t for o, t in sorted(self.cooldown.items())}}

    def to_json(self) -> bytes:
        """Same document as ``json.dumps(self.to_dict())``, built from cached fragments."""
        head = json.dumps({"cidr": str(self.cidr), "pool": str(self.pool), "affinity": self.affinity,
                           "state": self.state, "claimed_at": self.claimed_at, "seq": self.seq,
                           "cooldown": {str(o): t for o, t in sorted(self.cooldown.items())}},
                          separators=(",", ":"))
        allocs = ",".join(f'"{o}":{self.allocations[o].json_fragment}'
                          for o in sorted(self.allocations))
        return (head[:-1] + ',"allocations":{' + allocs + "}}").encode()

    @classmethod
    def from_dict(cls, d: Mapping) -> Block:
        return cls(cidr=ipaddress.ip_network(d["cidr"]), pool=ipaddress.ip_network(d["pool"]),
                   affinity=d.get("affinity"), state=d.get("state", PENDING),
                   claimed_at=float(d.get("claimed_at", 0.0)), seq=int(d.get("seq", 0)),
                   allocations={int(o): Allocation.from_dict(a)
                                for o, a in d.get("allocations", {}).items()},
                   cooldown={int(o): float(t) for o, t in d.get("cooldown", {}).items()})

    @classmethod
    def from_json(cls, raw: bytes) -> Block:
        return cls.from_dict(json.loads(raw))


def reserved_ordinals(block: IPNetwork, reservations: Iterable[IPNetwork]) -> frozenset[int]:
    """Ordinals of ``block`` covered by any reserved CIDR."""
    base = int(block.network_address)
    last = int(block.broadcast_address)
    out: set[int] = set()
    for r in reservations:
        if r.version != block.version or not r.overlaps(block):
            continue
        lo = max(base, int(r.network_address))
        hi = min(last, int(r.broadcast_address))
        out.update(range(lo - base, hi - base + 1))
    return frozenset(out)


# ---------------------------------------------------------------- handles and affinities

@dataclass(frozen=True)
class HandleRecord:
    """The addresses held under one handle: ip -> (block cidr, seq)."""

    handle: str
    attrs: Mapping[str, str] = field(default_factory=dict)
    ips: Mapping[str, tuple[str, int]] = field(default_factory=dict)

    def with_ip(self, ip: str, block: str, seq: int, attrs: Mapping[str, str]) -> HandleRecord:
        return replace(self, attrs={**self.attrs, **attrs}, ips={**self.ips, ip: (block, seq)})

    def without_ip(self, ip: str) -> HandleRecord:
        ips = dict(self.ips)
        ips.pop(ip, None)
        return replace(self, ips=ips)

    def to_json(self) -> bytes:
        return json.dumps({"handle": self.handle, "attrs": dict(self.attrs),
                           "ips": {ip: {"block": b, "seq": s} for ip, (b, s) in self.ips.items()}},
                          separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> HandleRecord:
        d = json.loads(raw)
        return cls(handle=d["handle"], attrs=d.get("attrs", {}),
                   ips={ip: (v["block"], int(v["seq"])) for ip, v in d.get("ips", {}).items()})


@dataclass(frozen=True)
class AffinityIndex:
    """The blocks one node claimed: block cidr -> state. One key per node.

    Every claim or release of a block rewrites this key in the same
    transaction as the block, so the per-node block limit is exact even when
    several processes of one node (parallel CNI ADDs) claim at once.
    """

    node: str
    blocks: Mapping[str, str] = field(default_factory=dict)

    def with_block(self, cidr: str, state: str) -> AffinityIndex:
        return replace(self, blocks={**self.blocks, cidr: state})

    def without_block(self, cidr: str) -> AffinityIndex:
        b = dict(self.blocks)
        b.pop(cidr, None)
        return replace(self, blocks=b)

    def to_json(self) -> bytes:
        return json.dumps({"node": self.node, "blocks": dict(sorted(self.blocks.items()))},
                          separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> AffinityIndex:
        d = json.loads(raw)
        return cls(node=d["node"], blocks=d.get("blocks", {}))
