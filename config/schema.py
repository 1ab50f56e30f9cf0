"""The typed configuration of one noderouter node.

Every parameter is a frozen dataclass field declared with ``param()``: its type
(the annotation), its default and its help text. ``config.loader`` turns YAML
into these objects and refuses anything that does not fit; nothing else in
noderouter reads YAML.

Conventions: YAML keys are the field names (snake_case); durations are seconds;
an absent optional value is ``None``.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import MISSING, dataclass, field
from typing import Literal

IPv4Address = ipaddress.IPv4Address
IPv4Network = ipaddress.IPv4Network
IPv6Address = ipaddress.IPv6Address
IPv6Network = ipaddress.IPv6Network
# Either family (peers, import filters, pools): the loader parses these with
# ipaddress.ip_address / ip_network.
IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# Block sizes a pool may use, per IP version (the IPv6 range is Calico's, ipam/model.py).
BLOCK_SIZES = {4: range(20, 33), 6: range(116, 129)}
DEFAULT_BLOCK_SIZES = {4: 26, 6: 122}

EncapMode = Literal["Never", "CrossSubnet", "Always"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "json", "console"]

REQUIRED = MISSING

# Route protocol numbers other software owns (from iproute2's rt_protos and the
# projects' sources): ours must differ so we never sweep their routes.
FOREIGN_ROUTE_PROTOCOLS = {
    0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 8: "gated", 9: "ra",
    10: "mrt", 11: "zebra", 12: "bird", 13: "dnrouted", 14: "xorp", 15: "ntk", 16: "dhcp",
    17: "kube-router", 18: "keepalived", 42: "babel", 80: "calico", 99: "openr",
    186: "frr-bgp", 187: "frr-isis", 188: "frr-ospf", 189: "frr-rip", 192: "frr-eigrp",
}
DEFAULT_ROUTE_PROTOCOL = 73


class Secret(str):
    """A string that never shows itself in reprs, logs or status output."""

    def __repr__(self) -> str:
        return "Secret('***')"

    def redacted(self) -> str:
        return "***"


def param(default=REQUIRED, help: str = "", *, check=None, item_check=None, factory=None,
          env: bool = True):
    """Declare a config parameter.

    ``check(value) -> str | None`` returns a description of what is expected
    when the value is wrong; ``item_check`` does the same for each item of a
    list. ``env=False`` excludes it from environment overrides.
    """
    meta = {"help": help, "check": check, "item_check": item_check, "env": env}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def in_range(lo: int | float, hi: int | float):
    def check(v):
        return None if lo <= v <= hi else f"a number from {lo} to {hi}"
    return check


def _hold_time(v: int):
    return None if v == 0 or 3 <= v <= 65535 else "0 (no keepalives) or 3..65535 seconds"


def _route_protocol(v: int):
    if not 1 <= v <= 254:
        return "a route protocol number from 5 to 254"
    owner = FOREIGN_ROUTE_PROTOCOLS.get(v)
    if owner:
        return f"a route protocol number nobody else uses ({v} belongs to {owner})"
    return None


def _ifname(v: str):
    if not 1 <= len(v) <= 15 or "/" in v or " " in v:
        return "an interface name of 1..15 characters without '/' or spaces"
    return None


def _bgp_identifier(v: IPv4Address):
    # RFC 6286 2.1 (and RFC 4271 6.2): a BGP Identifier of 0 is an error; peers refuse
    # the OPEN (Bad BGP Identifier), after the node has started and registered (issue 18).
    return None if int(v) != 0 else "a non-zero BGP identifier (RFC 6286)"


def _node_name(v: str):
    import re
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", v):
        return "a DNS-1123 name: lowercase letters, digits, '-' and '.', at most 253 characters"
    return None


def _endpoint(v: str):
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return "host:port, e.g. 198.18.0.10:2379"
    return None


def _listen(v: str):
    return _endpoint(v)


def _md5_password(v: str):
    # What ExaBGP's config tokenizer and Linux TCP MD5 (80-byte keys) take; the same rule as
    # bgpd.bgp.exabgp_config.check_password, checked here so a bad password is refused with the
    # rest of the config instead of when the speaker starts.
    import re
    if not re.fullmatch(r"[!$%&()*+,\-./0-9:<=>?@A-Z\[\]^_`a-z|~]{1,80}", v):
        return ("1-80 printable characters without whitespace, quotes, ';', '#', '\\' "
                "or braces")
    return None


def _executable(v: str):
    import os
    if not os.path.isabs(v):
        return "the absolute path of an executable file"
    if not os.path.isfile(v):
        return "an existing executable file (there is no file at that path)"
    if not os.access(v, os.X_OK):
        return "an executable file (that file is not executable)"
    return None


def _mode(v: int):
    return None if 0 <= v <= 0o777 else "a file mode such as 0660"


@dataclass(frozen=True)
class NodeSection:
    name: str = param(factory=socket.gethostname, check=_node_name,
                      help="This node's name in the cluster (default: the host name).")
    as_number: int = param(64512, check=in_range(1, 4294967295),
                           help="The node's BGP AS number (per node or per rack).")
    router_id: IPv4Address | None = param(
        None, check=_bgp_identifier,
        help="BGP router id, non-zero (default: the underlay address).")


@dataclass(frozen=True)
class UnderlaySection:
    interface: str = param(check=_ifname, help="The uplink interface that carries node traffic.")
    address: IPv4Address = param(help="This node's address on the underlay.")
    subnet: IPv4Network = param(
        help="The underlay subnet of this node; peers inside it are reached directly "
             "(CrossSubnet encapsulation only leaves it).")
    ipv6_address: IPv6Address | None = param(
        None, help="This node's global IPv6 address on the underlay (dual stack; with "
                   "ipv6_subnet). The next hop of its IPv6 blocks and the local end of IPv6 "
                   "BGP sessions.")
    ipv6_subnet: IPv6Network | None = param(
        None, help="The node's IPv6 underlay subnet (with ipv6_address); IPv6 peers inside it "
                   "are reached directly.")


@dataclass(frozen=True)
class PeerConfig:
    address: IPAddress = param(help="The peer's address (IPv4, or IPv6 with underlay.ipv6_address).")
    as_number: int = param(check=in_range(1, 4294967295), help="The peer's AS number.")
    description: str = param("", help="A name for the peer shown in status output.")
    password: Secret | None = param(None, check=_md5_password,
                                    help="TCP MD5 password (never logged or shown).")
    hold_time: int | None = param(None, check=_hold_time,
                                  help="Hold time in seconds (default: bgp.hold_time).")
    graceful_restart: bool | None = param(
        None, help="Offer graceful restart to this peer (default: bgp.graceful_restart).")
    max_prefix: int | None = param(None, check=in_range(1, 10_000_000),
                                   help="Most prefixes accepted (default: bgp.max_prefix).")
    max_prefix_teardown: bool = param(
        False, help="Tear the session down when max_prefix is exceeded (else drop its routes).")
    import_allow: tuple[IPNetwork, ...] = param(
        factory=tuple, help="Prefixes accepted from this peer besides pool prefixes "
                            "(e.g. 0.0.0.0/0 or ::/0 for a default route from the ToR).")
    passive: bool = param(False, help="Only accept the session, never dial.")
    multihop: int | None = param(None, check=in_range(1, 255),
                                 help="eBGP multihop TTL (default: directly connected).")
    route_reflector: bool = param(False, help="The peer is a route reflector we are a client of.")


@dataclass(frozen=True)
class BgpSection:
    mesh: bool = param(True, help="Full mesh with every node in the registry "
                                  "(the higher address is passive).")
    mesh_password: Secret | None = param(None, check=_md5_password,
                                         help="TCP MD5 password for mesh sessions.")
    listen_port: int = param(179, check=in_range(1, 65535), help="BGP listen port.")
    hold_time: int = param(90, check=_hold_time, help="Default hold time in seconds.")
    graceful_restart: bool = param(True, help="Offer graceful restart by default.")
    restart_time: int = param(120, check=in_range(1, 4095),
                              help="Graceful-restart time announced to peers (seconds).")
    max_prefix: int = param(100_000, check=in_range(1, 10_000_000),
                            help="Default most prefixes accepted per peer.")
    max_prefix_hold_down: int = param(
        300, check=in_range(0, 86_400),
        help="Seconds a peer that exceeded max_prefix stays refused: its routes are rejected "
             "until a session comes up after this long (0: at the next session).")
    exabgp_path: str | None = param(
        None, check=_executable,
        help="The ExaBGP executable the speaker runs (absolute path). Default: ExaBGP under "
             "PyPy in the daemon's venv (<venv>/exabgp-pypy/bin/exabgp, made by "
             "scripts/setup), else the CPython exabgp next to the daemon's Python, else "
             "exabgp on $PATH. Read at daemon start (SIGHUP does not change it).")
    peers: tuple[PeerConfig, ...] = param(
        factory=tuple, help="Explicit peers: top-of-rack routers, route reflectors.")


@dataclass(frozen=True)
class PoolConfig:
    cidr: IPNetwork = param(help="The pool's CIDR (IPv4 or IPv6).")
    block_size: int | None = param(
        None, help="Prefix length of the blocks nodes claim (fixed once created): 20..32 for "
                   "IPv4 (default 26), 116..128 for IPv6 (default 122).")
    ipip_mode: EncapMode = param("Never", help="IPIP encapsulation: Never, CrossSubnet, Always.")
    vxlan_mode: EncapMode = param("Never", help="VXLAN encapsulation: Never, CrossSubnet, Always.")
    nat_outgoing: bool = param(False, help="Masquerade traffic from the pool to outside all pools.")
    disabled: bool = param(False, help="No new blocks are claimed from a disabled pool.")
    strict_affinity: bool = param(False, help="Never borrow addresses from other nodes' blocks.")

    def __post_init__(self) -> None:
        # The default depends on the family, known only once the CIDR is: resolved here so
        # every reader sees a number.
        if self.block_size is None and isinstance(self.cidr, IPv4Network | IPv6Network):
            object.__setattr__(self, "block_size", DEFAULT_BLOCK_SIZES[self.cidr.version])


@dataclass(frozen=True)
class EtcdSection:
    endpoints: tuple[str, ...] = param(check=lambda v: None if v else "at least one endpoint",
                                       item_check=_endpoint,
                                       help="etcd client endpoints, host:port.")
    ca_file: str | None = param(None, help="CA bundle to verify etcd's certificate (enables TLS).")
    cert_file: str | None = param(None, help="Client certificate for etcd (with key_file).")
    key_file: str | None = param(None, help="Client key for etcd (with cert_file).")
    timeout: float = param(5.0, check=in_range(0.1, 300), help="Per-request timeout (seconds).")
    prefix: str = param("/noderouter", help="Key prefix of all noderouter data in etcd.")


@dataclass(frozen=True)
class IpamSection:
    max_blocks_per_node: int = param(20, check=in_range(1, 65536),
                                     help="Most blocks one node may claim.")
    release_cooldown: float = param(0.0, check=in_range(0, 86400),
                                    help="Seconds a released address waits before reuse.")
    gc_grace: float = param(900.0, check=in_range(0, 604800),
                            help="Seconds a leaked address must stay leaked before gc frees it.")


@dataclass(frozen=True)
class DataplaneSection:
    route_protocol: int = param(DEFAULT_ROUTE_PROTOCOL, check=_route_protocol,
                                help="Route protocol number marking the kernel routes we own.")
    mtu: int | None = param(None, check=in_range(576, 9000),
                            help="Pod/tunnel MTU (default: smallest uplink MTU minus the "
                                 "encapsulation overhead: 20 IPIP, 50 VXLAN).")
    resync_interval: float = param(90.0, check=in_range(1, 86400),
                                   help="Seconds between full kernel route resyncs.")
    vxlan_vni: int = param(4096, check=in_range(1, 16777215), help="VXLAN network identifier.")
    vxlan_port: int = param(4789, check=in_range(1, 65535), help="VXLAN UDP port.")
    vxlan_device: str = param("vxlan.nr", check=_ifname, help="Name of our VXLAN device.")
    workload_prefix: str = param("nrw", check=lambda v: None if 1 <= len(v) <= 4 and v.isalnum()
                                 else "1..4 letters or digits",
                                 help="Name prefix of pods' host-side veths.")


@dataclass(frozen=True)
class StatusSection:
    socket: str = param("/run/noderouter/status.sock", help="Unix socket of the local status API.")
    socket_mode: int = param(0o660, check=_mode, help="File mode of the status socket.")
    socket_owner: str = param("root", help="Owner user of the status socket.")
    socket_group: str = param("root", help="Owner group of the status socket.")
    cni_socket: str | None = param(
        "/run/noderouter/cni.sock",
        help="Unix socket (root-only, 0600) where the daemon serves noderouter-cni's fast "
             "path: the plugin hands ADD/DEL/CHECK to the running daemon instead of loading "
             "etcd and netlink libraries itself (the CNI conf's daemon_socket must name the "
             "same path). null disables it; the plugin then always works on its own.")


@dataclass(frozen=True)
class MetricsSection:
    listen: str | None = param("127.0.0.1:9091", check=_listen,
                               help="Prometheus metrics address (null disables).")
    health_listen: str | None = param("127.0.0.1:9099", check=_listen,
                                      help="/livez and /readyz address (null disables).")


@dataclass(frozen=True)
class LoggingSection:
    level: LogLevel = param("info", help="Log level: debug, info, warning, error.")
    format: LogFormat = param("auto", help="auto (console on a TTY, JSON lines otherwise), "
                                           "json or console.")


@dataclass(frozen=True)
class Config:
    underlay: UnderlaySection = param(help="The node's uplink.")
    etcd: EtcdSection = param(help="The datastore.")
    node: NodeSection = param(factory=NodeSection, help="Who this node is.")
    bgp: BgpSection = param(factory=BgpSection, help="BGP speaker settings and peers.")
    pools: tuple[PoolConfig, ...] = param(factory=tuple, help="IP pools to create if missing.")
    ipam: IpamSection = param(factory=IpamSection, help="Address management.")
    dataplane: DataplaneSection = param(factory=DataplaneSection, help="Kernel programming.")
    status: StatusSection = param(factory=StatusSection, help="Local status API.")
    metrics: MetricsSection = param(factory=MetricsSection, help="Metrics and health endpoints.")
    logging: LoggingSection = param(factory=LoggingSection, help="Logging.")

    @property
    def router_id(self) -> IPv4Address:
        return self.node.router_id or self.underlay.address
