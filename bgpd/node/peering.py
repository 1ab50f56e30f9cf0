"""What the speaker is told: its peers (config + the mesh) and its import policy. Pure."""

from __future__ import annotations

from collections.abc import Iterable

from bgpd.bgp.exabgp_config import PrefixFilter, SpeakerConfig, SpeakerPeer, peer_filters
from bgpd.bgp.import_policy import ImportPolicy
from bgpd.node.registry import MeshPeer
from config import Config


def unserved_ipv6(cfg: Config) -> tuple[str, ...]:
    """What of the config's IPv6 the speaker does not serve yet: the config accepts IPv6
    peers and IPv6 import filters (issue 15), but the speaker and its import policy are
    IPv4-only until BGP ipv6 unicast lands, so these are left out and the daemon says so."""
    return (tuple(f"peer {p.address}" for p in cfg.bgp.peers if p.address.version == 6)
            + tuple(f"import_allow {n} of peer {p.address}" for p in cfg.bgp.peers
                    if p.address.version == 4 for n in p.import_allow if n.version == 6))


def _ipv4(texts: Iterable[str]) -> tuple[str, ...]:
    return tuple(t for t in texts if ":" not in t)


def speaker_config(cfg: Config, mesh: Iterable[MeshPeer] = ()) -> SpeakerConfig:
    """The configured IPv4 peers, then the mesh peers the config does not name already."""
    b = cfg.bgp
    peers = []
    for p in b.peers:
        if p.address.version == 6:
            continue    # see unserved_peers
        peers.append(SpeakerPeer(
            address=str(p.address), asn=p.as_number,
            hold_time=p.hold_time if p.hold_time is not None else b.hold_time,
            password=str(p.password) if p.password else None, passive=p.passive,
            multihop=p.multihop,
            graceful_restart=b.restart_time if (p.graceful_restart if p.graceful_restart
                                                is not None else b.graceful_restart) else None,
            max_prefix=p.max_prefix or b.max_prefix,
            max_prefix_teardown=p.max_prefix_teardown,
            allowed=tuple(PrefixFilter(str(n)) for n in p.import_allow if n.version == 4),
            description=p.description))
    explicit = {x.address for x in peers}
    for m in mesh:
        if m.address in explicit:
            continue
        peers.append(SpeakerPeer(
            address=m.address, asn=m.as_number, hold_time=b.hold_time,
            password=str(b.mesh_password) if b.mesh_password else None,
            passive=m.passive, graceful_restart=b.restart_time if b.graceful_restart else None,
            max_prefix=b.max_prefix, description=m.name))
    return SpeakerConfig(local_as=cfg.node.as_number, router_id=str(cfg.router_id),
                         local_address=str(cfg.underlay.address), peers=tuple(peers),
                         max_prefix_hold_down=b.max_prefix_hold_down)


def import_policy(cfg: Config, pools: Iterable[str], own_blocks: frozenset[str],
                  speaker: SpeakerConfig) -> ImportPolicy:
    """Accept pool prefixes (the datastore's pools, the config's until etcd answered) and
    each peer's configured extras; never our own blocks nor anything inside them."""
    # IPv4 only, like the speaker (see unserved_ipv6): an IPv6 pool or block must not
    # reach the IPv4 prefix arithmetic of the import policy.
    return ImportPolicy(local_as=cfg.node.as_number,
                        pools=tuple(sorted(_ipv4(pools))) or _ipv4(str(p.cidr) for p in cfg.pools),
                        own_blocks=frozenset(_ipv4(own_blocks)),
                        own_addresses=frozenset({str(cfg.underlay.address)}),
                        allowed=peer_filters(speaker.peers))
