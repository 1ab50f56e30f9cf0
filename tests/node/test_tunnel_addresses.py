"""Tunnel addresses come from IPAM in the daemon (composition root), never in the cycle:
at start and when the pools change. Real etcd."""

from __future__ import annotations

import ipaddress

import pytest

from bgpd.node.cycle import TunnelAddresses
from bgpd.node.daemon import allocate_tunnel_addresses, vtep_mac

pytestmark = pytest.mark.integration


@pytest.fixture
def ipam(etcd_server):
    from ipam.allocator import Ipam
    from ipam.store import EtcdStore

    store = EtcdStore(etcd_server.endpoint, timeout=5.0)
    try:
        yield Ipam(store, "node-a1", cooldown=0.0)
    finally:
        store.close()


def test_addresses_follow_the_pools_and_stay_once_allocated(ipam):
    ipam.add_pool("198.19.0.0/16", 26)                      # no encapsulation
    none = allocate_tunnel_addresses(ipam, "node-a1", ipam.list_pools(), TunnelAddresses())
    assert none == TunnelAddresses()

    ipam.add_pool("198.18.128.0/20", 26, vxlan_mode="CrossSubnet")   # a pool change
    vx = allocate_tunnel_addresses(ipam, "node-a1", ipam.list_pools(), none)
    assert vx.ipip is None and vx.vtep is not None
    assert ipaddress.ip_address(vx.vtep[0]) in ipaddress.ip_network("198.18.128.0/20")
    assert vx.vtep[1] == vtep_mac("node-a1")

    ipam.add_pool("198.18.144.0/20", 26, ipip_mode="Always")
    both = allocate_tunnel_addresses(ipam, "node-a1", ipam.list_pools(), vx)
    assert both.vtep == vx.vtep                              # kept, not allocated again
    assert ipaddress.ip_address(both.ipip) in ipaddress.ip_network("198.18.144.0/20")
    # A restart (nothing known yet) gets the same addresses back: the handles are ours.
    again = allocate_tunnel_addresses(ipam, "node-a1", ipam.list_pools(), TunnelAddresses())
    assert again == both
