"""What the speaker is told: its peers (config + the mesh) and its import policy. Pure."""

from __future__ import annotations

from collections.abc import Iterable

from bgpd.bgp.exabgp_config import PrefixFilter, SpeakerConfig, SpeakerPeer, peer_filters
from bgpd.bgp.import_policy import ImportPolicy
from bgpd.node.registry import MeshPeer
from config import Config


def speaker_config(cfg: Config, mesh: Iterable[MeshPeer] = ()) -> SpeakerConfig:
    """The configured peers, then the mesh peers the config does not name already."""
    b = cfg.bgp
    peers = []
    for p in b.peers:
        peers.append(SpeakerPeer(
            address=str(p.address), asn=p.as_number,
            hold_time=p.hold_time if p.hold_time is not None else b.hold_time,
            password=str(p.password) if p.password else None, passive=p.passive,
            multihop=p.multihop,
            graceful_restart=b.restart_time if (p.graceful_restart if p.graceful_restart
                                                is not None else b.graceful_restart) else None,
            max_prefix=p.max_prefix or b.max_prefix,
            max_prefix_teardown=p.max_prefix_teardown,
            allowed=tuple(PrefixFilter(str(n)) for n in p.import_allow),
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
    return ImportPolicy(local_as=cfg.node.as_number,
                        pools=tuple(sorted(pools)) or tuple(str(p.cidr) for p in cfg.pools),
                        own_blocks=own_blocks,
                        own_addresses=frozenset({str(cfg.underlay.address)}),
                        allowed=peer_filters(speaker.peers))
