"""Tunnel devices: capability probe, ensure tunl0 (IPIP) and the vxlan device, VTEP peers.

Every function takes an open pyroute2 ``IPRoute`` bound to the node's namespace
(``IPRoute()`` inside it, or ``IPRoute(netns=name, flags=0)`` from outside), so
the same code runs in the daemon, in kernel tests and inside a UML kernel.

Ensure = get -> create if missing (a racing create's EEXIST is fine) -> recreate
only if incompatible -> patch only what differs (MTU, MAC, up, the address).

Kernel quirk (IPIP): once the ipip module is loaded, every network namespace
gets a fallback ``tunl0`` (unless net.core.fb_tunnels_only_for_init_net is set),
and ``ip link add tunl0 type ipip`` then fails with EEXIST - the very act of
creating the first ipip link can load the module and create it. Like Calico we
simply use that fallback device: it is an ipip tunnel with any local and any
remote, which is exactly what an ``onlink`` IPIP route through it needs. The
fallback device cannot be deleted, so "incompatible" tunl0 is an error.
"""

from __future__ import annotations

import errno
import secrets
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import structlog
from pyroute2.netlink.exceptions import NetlinkError

from tunnels.encap import IPIP_DEVICE, VXLAN_DEVICE, Vtep
from tunnels.errors import TunnelError, TunnelUnsupported

log = structlog.get_logger("tunnels.devices")

NUD_PERMANENT = 0x80
NTF_SELF = 0x02
AF_BRIDGE = 7
_MODULE = {"ipip": "ipip", "vxlan": "vxlan"}
_MODE = {"ipip": "IPIP", "vxlan": "VXLAN"}


@dataclass(frozen=True)
class DeviceResult:
    name: str
    index: int
    created: bool
    recreated: bool
    changed: tuple[str, ...]


def _get(ipr, name: str):
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise


def _kind(link) -> str | None:
    return link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")


def _info(link, attr: str):
    return link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", attr)


def _unsupported(kind: str, exc: NetlinkError) -> TunnelUnsupported:
    return TunnelUnsupported(
        f"{_MODE[kind]} mode is not available: this kernel cannot create an '{kind}' link "
        f"({errno.errorcode.get(exc.code, exc.code)}: the '{_MODULE[kind]}' kernel module is "
        f"missing or cannot be loaded). Load it (modprobe {_MODULE[kind]}) or choose another "
        f"encapsulation; refusing to run {_MODE[kind]}.")


def probe_kind(ipr, kind: str) -> None:
    """Raise TunnelUnsupported (naming mode and module) if ``kind`` links cannot be made.

    A link of that kind already present proves support. Otherwise a throwaway
    link is created and deleted in the node's namespace.
    """
    if kind not in _MODULE:
        raise ValueError(f"unknown tunnel kind {kind!r}")
    if any(_kind(link) == kind for link in ipr.get_links()):
        return
    name = f"nrprobe{secrets.token_hex(3)}"
    extra = {"vxlan_id": 1, "vxlan_port": 4789} if kind == "vxlan" else {}
    try:
        ipr.link("add", ifname=name, kind=kind, **extra)
    except NetlinkError as exc:
        # EOPNOTSUPP: "Unknown device type" (no rtnl_link_ops for the kind).
        if exc.code in (errno.EOPNOTSUPP, errno.ENOENT, errno.EINVAL):
            raise _unsupported(kind, exc) from exc
        raise TunnelError(f"probing {_MODE[kind]} support failed: {exc}") from exc
    link = _get(ipr, name)
    if link is not None:
        ipr.link("del", index=link["index"])
    log.info("tunnel_kind_supported", kind=kind)


def _ensure_address(ipr, index: int, address: str | None) -> list[str]:
    """Exactly ``address``/32 (or nothing) as IPv4 address on the device."""
    changed = []
    have = {(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index,
                                                                           family=socket.AF_INET)}
    want = {(address, 32)} if address else set()
    for addr, plen in have - want:
        ipr.addr("del", index=index, address=addr, prefixlen=plen)
        changed.append(f"del-address {addr}/{plen}")
    for addr, plen in want - have:
        ipr.addr("add", index=index, address=addr, prefixlen=plen)
        changed.append(f"address {addr}/{plen}")
    return changed


def _patch(ipr, link, mtu: int | None, mac: str | None) -> list[str]:
    changed = []
    kw = {}
    if mtu and link.get("mtu") != mtu:
        kw["mtu"] = mtu
        changed.append(f"mtu {link.get('mtu')}->{mtu}")
    if mac and (link.get("address") or "").lower() != mac.lower():
        kw["address"] = mac
        changed.append(f"mac {link.get('address')}->{mac}")
    if not link["flags"] & 1:  # IFF_UP
        kw["state"] = "up"
        changed.append("up")
    if kw:
        ipr.link("set", index=link["index"], **kw)
    return changed


def ensure_ipip(ipr, mtu: int, address: str | None, name: str = IPIP_DEVICE) -> DeviceResult:
    """tunl0 (any local, any remote) up, with ``mtu`` and ``address``/32."""
    link = _get(ipr, name)
    created = recreated = False
    if link is not None and not _ipip_compatible(link):
        if name == IPIP_DEVICE:
            raise TunnelError(
                f"{name} exists but is not a plain ipip device (kind={_kind(link)}, "
                f"local={_info(link, 'IFLA_IPTUN_LOCAL')}, "
                f"remote={_info(link, 'IFLA_IPTUN_REMOTE')}); the fallback tunl0 cannot be "
                f"recreated - remove whatever configured it")
        ipr.link("del", index=link["index"])
        link, recreated = None, True
    if link is None:
        try:
            ipr.link("add", ifname=name, kind="ipip")
            created = True
        except NetlinkError as exc:
            if exc.code == errno.EOPNOTSUPP:
                raise _unsupported("ipip", exc) from exc
            # EEXIST: the module was loaded by this very request and created the
            # fallback tunl0, or another agent raced us. Either way: use it.
            if exc.code != errno.EEXIST:
                raise TunnelError(f"creating {name} failed: {exc}") from exc
        link = _get(ipr, name)
        if link is None or not _ipip_compatible(link):
            raise TunnelError(f"{name} vanished or is incompatible right after creation")
    changed = _patch(ipr, link, mtu, None) + _ensure_address(ipr, link["index"], address)
    result = DeviceResult(name, link["index"], created, recreated, tuple(changed))
    if created or recreated or changed:
        log.info("ipip_device_ensured", device=name, created=created, recreated=recreated,
                 changed=list(changed))
    return result


def _ipip_compatible(link) -> bool:
    if _kind(link) != "ipip":
        return False
    local = _info(link, "IFLA_IPTUN_LOCAL") or "0.0.0.0"
    remote = _info(link, "IFLA_IPTUN_REMOTE") or "0.0.0.0"
    return local == "0.0.0.0" and remote == "0.0.0.0"


@dataclass(frozen=True)
class VxlanParams:
    vni: int = 4096
    port: int = 4789
    local: str | None = None      # our underlay address (source of encapsulated packets)
    mtu: int | None = None
    address: str | None = None    # our VTEP address (/32 from the pool)
    mac: str | None = None        # stable MAC published in the node registry
    name: str = VXLAN_DEVICE


def _vxlan_compatible(link, p: VxlanParams) -> bool:
    return (_kind(link) == "vxlan"
            and _info(link, "IFLA_VXLAN_ID") == p.vni
            and _info(link, "IFLA_VXLAN_PORT") == p.port
            and (_info(link, "IFLA_VXLAN_LOCAL") or None) == p.local)


def ensure_vxlan(ipr, p: VxlanParams) -> DeviceResult:
    """The vxlan device with our VNI/port/local, learning off, up, MTU, MAC, address."""
    link = _get(ipr, p.name)
    created = recreated = False
    if link is not None and not _vxlan_compatible(link, p):
        log.info("vxlan_device_incompatible_recreating", device=p.name, kind=_kind(link),
                 vni=_info(link, "IFLA_VXLAN_ID"), port=_info(link, "IFLA_VXLAN_PORT"),
                 local=_info(link, "IFLA_VXLAN_LOCAL"))
        ipr.link("del", index=link["index"])
        link, recreated = None, True
    if link is None:
        kw = {"vxlan_id": p.vni, "vxlan_port": p.port, "vxlan_learning": 0}
        if p.local:
            kw["vxlan_local"] = p.local
        if p.mtu:
            kw["mtu"] = p.mtu
        if p.mac:
            kw["address"] = p.mac
        try:
            ipr.link("add", ifname=p.name, kind="vxlan", **kw)
            created = True
        except NetlinkError as exc:
            if exc.code == errno.EOPNOTSUPP:
                raise _unsupported("vxlan", exc) from exc
            if exc.code != errno.EEXIST:  # EEXIST: a racing create; check it below
                raise TunnelError(f"creating {p.name} failed: {exc}") from exc
        link = _get(ipr, p.name)
        if link is None or not _vxlan_compatible(link, p):
            raise TunnelError(f"{p.name} vanished or is incompatible right after creation")
    changed = _patch(ipr, link, p.mtu, p.mac) + _ensure_address(ipr, link["index"], p.address)
    result = DeviceResult(p.name, link["index"], created, recreated, tuple(changed))
    if created or recreated or changed:
        log.info("vxlan_device_ensured", device=p.name, created=created, recreated=recreated,
                 changed=list(changed))
    return result


def uplink_mtus(ipr, names: Iterable[str]) -> list[int]:
    """MTUs of the named uplinks (missing ones are an error: the MTU would be a guess)."""
    out = []
    for name in names:
        link = _get(ipr, name)
        if link is None:
            raise TunnelError(f"uplink {name} does not exist; cannot derive the tunnel MTU")
        out.append(link.get("mtu"))
    return out


def device_mac(ipr, name: str) -> str:
    link = _get(ipr, name)
    if link is None:
        raise TunnelError(f"device {name} does not exist")
    return link.get("address")


def sync_vxlan_peers(ipr, vteps: Iterable[Vtep], name: str = VXLAN_DEVICE) -> dict[str, int]:
    """Static neighbours (VTEP address -> MAC) and FDB (MAC -> underlay) on the device.

    The vxlan device is ours, so every permanent entry on it is ours: entries
    for peers no longer present are removed.
    """
    link = _get(ipr, name)
    if link is None:
        raise TunnelError(f"vxlan device {name} does not exist; ensure_vxlan first")
    idx = link["index"]
    want_neigh = {v.address: v.mac.lower() for v in vteps}
    want_fdb = {v.mac.lower(): v.underlay for v in vteps}
    have_neigh = {}
    for n in ipr.get_neighbours(family=socket.AF_INET, ifindex=idx):
        if n["state"] & NUD_PERMANENT:
            have_neigh[n.get("NDA_DST")] = (n.get("NDA_LLADDR") or "").lower()
    have_fdb: dict[str, str] = {}
    for f in ipr.get_neighbours(family=AF_BRIDGE, ifindex=idx):
        mac = (f.get("NDA_LLADDR") or "").lower()
        dst = f.get("NDA_DST")
        if dst and mac and mac != "00:00:00:00:00:00" and f["state"] & NUD_PERMANENT:
            have_fdb[mac] = dst
    counts = {"neigh_set": 0, "neigh_del": 0, "fdb_set": 0, "fdb_del": 0}
    for addr, mac in want_neigh.items():
        if have_neigh.get(addr) != mac:
            ipr.neigh("replace", dst=addr, lladdr=mac, ifindex=idx, state=NUD_PERMANENT)
            counts["neigh_set"] += 1
    for addr in have_neigh.keys() - want_neigh.keys():
        ipr.neigh("del", dst=addr, ifindex=idx)
        counts["neigh_del"] += 1
    for mac, dst in want_fdb.items():
        if have_fdb.get(mac) != dst:
            if mac in have_fdb:
                ipr.fdb("del", ifindex=idx, lladdr=mac, dst=have_fdb[mac])
            ipr.fdb("append", ifindex=idx, lladdr=mac, dst=dst, state=NUD_PERMANENT)
            counts["fdb_set"] += 1
    for mac in have_fdb.keys() - want_fdb.keys():
        ipr.fdb("del", ifindex=idx, lladdr=mac, dst=have_fdb[mac])
        counts["fdb_del"] += 1
    if any(counts.values()):
        log.info("vxlan_peers_synced", device=name, **counts)
    return counts
