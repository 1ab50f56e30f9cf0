"""ExaBGP 5.0.15 configuration and environment, generated from our typed peer config (pure).

Review notes:
- Every string that ends up in the file is validated here: ExaBGP's tokenizer splits on
  whitespace, ``;`` and braces, so a password with a quote, a brace or a newline could
  inject configuration. Addresses go through ``ipaddress``.
- ``manual-eor true``: ExaBGP would otherwise send End-of-RIB right after OPEN, i.e.
  before our routes are re-announced after a restart (exabgp #328); we send EoR ourselves.
- ``adj-rib-in false``: we keep our own RIB; ExaBGP's copy costs ~60 MB at 100k routes.
- ``receive { packets; update; open; notification; }`` + ``neighbor-changes`` +
  ``negotiated``: ``update`` alone delivers nothing in 5.0.15 (``packets`` or ``parsed``
  says in which form); ``open`` tells us whether the peer does graceful restart and its
  restart time. ``packets``, not ``parsed``: ExaBGP hands over each message's raw body
  in hex instead of JSON-encoding every prefix (a fifth of its CPU at 100k routes), and
  ``bgpd.bgp.wire`` decodes it. ``negotiated`` adds the session's asn4 (2- or 4-byte
  AS_PATH) and families to every packet line, plus one ``negotiated`` line per session.
- ExaBGP only listens (passive peers, collisions) when ``exabgp.tcp.bind`` names our
  address: that lives in the environment, not the file.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from bgpd.bgp.errors import BgpError

API_PROCESS = "noderouter-api"

# Linux TCP_MD5SIG_MAXKEYLEN is 80. Printable, no whitespace, quotes, ';', braces, '#', '\'.
_PASSWORD_RE = re.compile(r"[!$%&()*+,\-./0-9:<=>?@A-Z\[\]^_`a-z|~]{1,80}")
# argv words of the API process command line: paths and options only.
_ARGV_RE = re.compile(r"[A-Za-z0-9_./=:,+@%-]+")


class SpeakerConfigError(BgpError, ValueError):
    """A value cannot be put into ExaBGP's configuration safely."""


def _ipv4(value: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise SpeakerConfigError(f"{what}: {value!r} is not an IPv4 address") from None


def _address(value: str, what: str) -> str:
    """An IPv4 or IPv6 address, canonical (RFC 5952 for IPv6, as ExaBGP prints it)."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise SpeakerConfigError(f"{what}: {value!r} is not an IPv4 or IPv6 address") from None


def _ipv6_global(value: str, what: str) -> str:
    try:
        addr = ipaddress.IPv6Address(value)
    except ValueError:
        raise SpeakerConfigError(f"{what}: {value!r} is not an IPv6 address") from None
    # A next hop other nodes install and the source of sessions: link-local, multicast,
    # loopback or :: would be resolved per link or not at all (calico#10321, #5971).
    if addr.is_link_local or addr.is_multicast or addr.is_loopback or addr.is_unspecified:
        raise SpeakerConfigError(f"{what}: {value} is not a global unicast IPv6 address")
    return str(addr)


# The families a session may carry (issue 15), as ExaBGP names them.
FAMILIES = ("ipv4 unicast", "ipv6 unicast")


def _asn(value: int, what: str) -> int:
    if not isinstance(value, int) or not 1 <= value <= 4294967295:
        raise SpeakerConfigError(f"{what}: AS number {value!r} must be an integer in 1..4294967295")
    return value


def check_password(password: str, what: str = "password") -> str:
    if not _PASSWORD_RE.fullmatch(password):
        raise SpeakerConfigError(f"{what}: TCP MD5 password must be 1-80 printable characters without "
                          "whitespace, quotes, ';', '#', '\\' or braces")
    return password


@dataclass(frozen=True)
class PrefixFilter:
    """An explicitly allowed prefix: ``network`` exactly, or up to ``le`` when given."""

    network: str
    le: int | None = None

    def __post_init__(self) -> None:
        try:
            net = ipaddress.ip_network(self.network)
        except ValueError as exc:
            raise SpeakerConfigError(f"allowed prefix {self.network!r}: {exc}") from None
        object.__setattr__(self, "network", str(net))
        if self.le is not None and not net.prefixlen <= self.le <= net.max_prefixlen:
            raise SpeakerConfigError(f"allowed prefix {self.network} le {self.le}: le must be "
                              f"between {net.prefixlen} and {net.max_prefixlen}")

    @classmethod
    def parse(cls, text: str) -> PrefixFilter:
        """``"0.0.0.0/0"`` or ``"198.51.100.0/24 le 32"``."""
        parts = text.split()
        if len(parts) == 1:
            return cls(parts[0])
        if len(parts) == 3 and parts[1] == "le" and parts[2].isdigit():
            return cls(parts[0], int(parts[2]))
        raise SpeakerConfigError(f"allowed prefix {text!r}: expected 'NET' or 'NET le N'")


@dataclass(frozen=True)
class SpeakerPeer:
    address: str
    asn: int
    hold_time: int = 90
    password: str | None = None
    passive: bool = False
    multihop: int | None = None  # outgoing TTL for eBGP multihop; None = direct
    graceful_restart: int | None = 120  # our advertised restart time; None = no GR
    max_prefix: int | None = None
    max_prefix_teardown: bool = False
    allowed: tuple[PrefixFilter, ...] = ()
    description: str = ""
    # What the session carries (issue 15): None = the family of the peer's address. IPv6
    # unicast over an IPv4 session needs SpeakerConfig.next_hop6 (ExaBGP's "next-hop self"
    # fails when the session's family differs from the route's); IPv4 unicast over an IPv6
    # session is refused (no IPv4 next hop to give).
    families: tuple[str, ...] | None = None

    @property
    def version(self) -> int:
        return 6 if ":" in self.address else 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", _address(self.address, "peer address"))
        fams = self.families
        if fams is None:
            fams = (FAMILIES[0],) if self.version == 4 else (FAMILIES[1],)
        fams = tuple(f for f in FAMILIES if f in fams)  # ordered, unique
        unknown = set(self.families or ()) - set(FAMILIES)
        if unknown or not fams:
            raise SpeakerConfigError(f"peer {self.address}: families {self.families!r}: expected "
                                     f"one or both of {', '.join(FAMILIES)}")
        if self.version == 6 and FAMILIES[0] in fams:
            raise SpeakerConfigError(f"peer {self.address}: ipv4 unicast over an IPv6 session "
                                     f"is not supported (no IPv4 next hop); peer over IPv4")
        object.__setattr__(self, "families", fams)
        _asn(self.asn, f"peer {self.address}")
        if not (self.hold_time == 0 or 3 <= self.hold_time <= 65535):
            raise SpeakerConfigError(f"peer {self.address}: hold time must be 0 or 3..65535")
        if self.password is not None:
            check_password(self.password, f"peer {self.address}")
        if self.multihop is not None and not 1 <= self.multihop <= 255:
            raise SpeakerConfigError(f"peer {self.address}: multihop TTL must be 1..255")
        if self.graceful_restart is not None and not 0 <= self.graceful_restart <= 4095:
            raise SpeakerConfigError(f"peer {self.address}: graceful restart time must be 0..4095")
        if self.max_prefix is not None and self.max_prefix < 0:
            raise SpeakerConfigError(f"peer {self.address}: max prefix must be >= 0")
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{0,64}", self.description):
            raise SpeakerConfigError(f"peer {self.address}: description may use [A-Za-z0-9_.:-] only")


@dataclass(frozen=True)
class SpeakerConfig:
    local_as: int
    router_id: str
    local_address: str
    peers: tuple[SpeakerPeer, ...] = ()
    api_argv: tuple[str, ...] = ()  # the API process command line (see speaker.py)
    adj_rib_in: bool = False
    extra_env: tuple[tuple[str, str], ...] = field(default=())
    # Not ExaBGP's: how long a peer over its max-prefix stays refused (bgpd/bgp/core.py).
    max_prefix_hold_down: float = 300.0
    # The forms ExaBGP sends received messages in: "packets" (what the daemon uses) and/or
    # "parsed" (its JSON; with both, each message comes as a packet line then a parsed
    # line: tests/bgp/capture_samples.py --pairs records them for the contract test).
    api_receive: tuple[str, ...] = ("packets",)
    # Dual stack (issue 15): the node's global IPv6 address, the local end of IPv6 sessions
    # and the next hop of the IPv6 prefixes we announce (on IPv4 sessions too). None: no
    # IPv6 peer and no ipv6 unicast family may be configured.
    local_address6: str | None = None

    def __post_init__(self) -> None:
        _asn(self.local_as, "local AS")
        object.__setattr__(self, "router_id", _ipv4(self.router_id, "router id"))
        object.__setattr__(self, "local_address", _ipv4(self.local_address, "local address"))
        if self.local_address6 is not None:
            object.__setattr__(self, "local_address6",
                               _ipv6_global(self.local_address6, "local IPv6 address"))
        object.__setattr__(self, "peers", tuple(self.peers))
        seen = set()
        for p in self.peers:
            if p.address in seen:
                raise SpeakerConfigError(f"peer {p.address} is configured twice")
            if p.address in (self.local_address, self.local_address6):
                raise SpeakerConfigError(f"peer {p.address} is our own local address")
            if self.local_address6 is None and "ipv6 unicast" in p.families:
                what = "an IPv6 peer" if p.version == 6 else "ipv6 unicast"
                raise SpeakerConfigError(f"peer {p.address}: {what} needs local_address6 (our "
                                         f"global IPv6 address: session source and next hop)")
            seen.add(p.address)
        if not self.api_receive or not set(self.api_receive) <= {"packets", "parsed"}:
            raise SpeakerConfigError(f"api_receive {self.api_receive!r}: 'packets' and/or 'parsed'")
        for word in self.api_argv:
            if not _ARGV_RE.fullmatch(word):
                raise SpeakerConfigError(f"API process argument {word!r} has characters ExaBGP's "
                                  "config cannot carry safely")

    def peer(self, address: str) -> SpeakerPeer | None:
        for p in self.peers:
            if p.address == address:
                return p
        return None


def render(cfg: SpeakerConfig) -> str:
    """The ExaBGP configuration file text."""
    out = [f"process {API_PROCESS} {{",
           f"    run {' '.join(cfg.api_argv)};",
           "    encoder json;",
           "}", ""]
    for p in sorted(cfg.peers, key=lambda p: (p.version, int(ipaddress.ip_address(p.address)))):
        out.append(f"neighbor {p.address} {{")
        if p.description:
            out.append(f"    description \"{p.description}\";")
        out += [f"    router-id {cfg.router_id};",
                f"    local-address {cfg.local_address if p.version == 4 else cfg.local_address6};",
                f"    local-as {cfg.local_as};",
                f"    peer-as {p.asn};",
                f"    hold-time {p.hold_time};",
                f"    passive {'true' if p.passive else 'false'};",
                "    manual-eor true;",
                f"    adj-rib-in {'true' if cfg.adj_rib_in else 'false'};",
                "    adj-rib-out true;",
                "    group-updates true;"]
        if p.password is not None:
            out.append(f"    md5-password \"{p.password}\";")
        if p.multihop is not None:
            out.append(f"    outgoing-ttl {p.multihop};")
        out.append("    family {\n" + "".join(f"        {f};\n" for f in p.families) + "    }")
        cap = ["        route-refresh enable;", "        asn4 enable;"]
        if p.graceful_restart is not None:
            cap.append(f"        graceful-restart {p.graceful_restart};")
        out.append("    capability {\n" + "\n".join(cap) + "\n    }")
        out += ["    api {",
                f"        processes [ {API_PROCESS} ];",
                "        neighbor-changes;",
                "        negotiated;",
                "        receive {",
                *(f"            {form};" for form in sorted(set(cfg.api_receive))),
                "            update;\n            open;\n            notification;\n        }",
                "    }",
                "}", ""]
    return "\n".join(out)


def environment(cfg: SpeakerConfig, run_dir: str, listen: bool = True) -> dict[str, str]:
    """ExaBGP settings passed as environment variables (``exabgp env`` lists them)."""
    env = {
        "exabgp.daemon.daemonize": "false",
        "exabgp.daemon.user": "root",  # else it drops to nobody and loses CAP_NET_ADMIN (MD5)
        "exabgp.daemon.pid": "",
        "exabgp.log.destination": "stdout",
        "exabgp.log.level": "INFO",
        "exabgp.log.short": "true",
        "exabgp.log.packets": "false",
        "exabgp.log.routes": "false",
        # Its reactor logs one INFO line per message received ("statistics for receive-update
        # counter N"): a LogRecord and a write per UPDATE (issue 18 point 5).
        "exabgp.log.statistics": "false",
        "exabgp.api.ack": "true",
        "exabgp.api.encoder": "json",
        "exabgp.api.respawn": "false",  # a dead relay means resync: the supervisor restarts all
        "exabgp.api.cli": "false",  # no named pipes in /run/exabgp
        # Our relay dying should end ExaBGP; it did not reliably in 5.0.15, so the supervisor
        # also restarts ExaBGP when the relay connection drops (speaker.py).
        "exabgp.api.terminate": "true",
        "exabgp.cache.attributes": "false",
        # Its reactor's idle poll() timeout is speed/100 s (reactor/loop.py); sockets and
        # our API pipe wake it at once, so this only paces timers and accept(). 0.5 (a 5 ms
        # poll, 200 wake-ups/s) cost ExaBGP 3.7 % of a core at idle; 5.0 (50 ms): 0.5 %
        # (bench.bench_footprint --routes 0; issue 17: idle <= 2 % for all three processes),
        # with no change in time to 100k routes (bench.bench_bgp --reactor-speed).
        "exabgp.reactor.speed": "5.0",
        "exabgp.tcp.bind": cfg.local_address if listen else "",
        "exabgp.tcp.port": "179",
    }
    if listen and cfg.local_address6 is not None:
        # Space separated (ExaBGP's ip_list): IPv6 peers connect to the IPv6 address.
        env["exabgp.tcp.bind"] += " " + cfg.local_address6
    env.update(dict(cfg.extra_env))
    return env


def changed_peers(old: SpeakerConfig, new: SpeakerConfig) -> tuple[set[str], set[str], set[str]]:
    """(added, removed, modified) peer addresses between two configs."""
    a = {p.address: p for p in old.peers}
    b = {p.address: p for p in new.peers}
    modified = {k for k in a.keys() & b.keys() if _session_key(a[k], old) != _session_key(b[k], new)}
    return set(b) - set(a), set(a) - set(b), modified


def _session_key(p: SpeakerPeer, cfg: SpeakerConfig) -> tuple:
    # What ExaBGP compares to decide a neighbour changed (its session is re-established).
    return (p.asn, p.hold_time, p.password, p.passive, p.multihop, p.graceful_restart,
            p.families, cfg.local_as, cfg.router_id, cfg.local_address, cfg.local_address6)


def peer_filters(peers: Sequence[SpeakerPeer]) -> dict[str, tuple[PrefixFilter, ...]]:
    return {p.address: p.allowed for p in peers}
