"""lab.routers: BIRD and FRR peer with each other (eBGP, MD5), exchange and install routes."""

from __future__ import annotations

import pytest

from lab.netns import run_prefix, veth_pair
from lab.routers import BgpNeighbor, BirdRouter, FrrRouter, kernel_routes

pytestmark = pytest.mark.integration


def test_bird_and_frr_peer_with_md5_and_install_routes(netns_set, tmp_path):
    p = run_prefix("nrr")
    a = netns_set.add(f"{p}-a")
    b = netns_set.add(f"{p}-b")
    veth_pair(f"{p}a", a, f"{p}b", b)
    from lab.netns import sh
    sh(["ip", "addr", "add", "198.18.250.1/24", "dev", f"{p}a"], netns=a)
    sh(["ip", "addr", "add", "198.18.250.2/24", "dev", f"{p}b"], netns=b)
    bird = BirdRouter(a, str(tmp_path / "bird"), "198.18.250.1", 65101,
                      [BgpNeighbor("198.18.250.2", 65102, password="pw1")],
                      static_routes=["198.19.250.0/24"], kernel_export=True)
    frr = FrrRouter(b, str(tmp_path / "frr"), "198.18.250.2", 65102,
                    [BgpNeighbor("198.18.250.1", 65101, password="pw1")],
                    static_routes=["198.19.251.0/24"], kernel_export=True)
    with bird, frr:
        bird.wait_established("198.18.250.2")
        frr.wait_established("198.18.250.1")
        bird.wait_route("198.19.251.0/24")
        frr.wait_route("198.19.250.0/24")
        assert bird.routes()["198.19.251.0/24"].source == "198.18.250.2"
        assert frr.routes()["198.19.250.0/24"].nexthops == ("198.18.250.1",)
        from lab.procs import wait_for
        wait_for(lambda: "198.19.251.0/24" in kernel_routes(a), 15, what="bird kernel route")
        wait_for(lambda: "198.19.250.0/24" in kernel_routes(b), 15, what="frr kernel route")
        assert kernel_routes(a)["198.19.251.0/24"] == ("198.18.250.2",)


def test_ibgp_route_reflector_passive_multihop_options(netns_set, tmp_path):
    from lab.netns import sh
    from lab.procs import LabError

    p = run_prefix("nrr")
    a = netns_set.add(f"{p}-a")
    b = netns_set.add(f"{p}-b")
    veth_pair(f"{p}a", a, f"{p}b", b)
    sh(["ip", "addr", "add", "198.18.250.1/24", "dev", f"{p}a"], netns=a)
    sh(["ip", "addr", "add", "198.18.250.2/24", "dev", f"{p}b"], netns=b)
    # Route-reflector server (FRR, passive) and client (BIRD, multihop iBGP), one AS.
    frr = FrrRouter(b, str(tmp_path / "frr"), "198.18.250.2", 65100,
                    [BgpNeighbor("198.18.250.1", 65100, passive=True,
                                 route_reflector_client=True)],
                    static_routes=["198.19.252.0/24"])
    bird = BirdRouter(a, str(tmp_path / "bird"), "198.18.250.1", 65100,
                      [BgpNeighbor("198.18.250.2", 65100, multihop=2)],
                      static_routes=["198.19.253.0/24"])
    with frr, bird:
        frr.wait_established("198.18.250.1")
        bird.wait_established("198.18.250.2")
        bird.wait_route("198.19.252.0/24")
        frr.wait_route("198.19.253.0/24")
        assert frr.routes()["198.19.253.0/24"].source == "198.18.250.1"
    with pytest.raises(LabError, match="iBGP"):
        FrrRouter(b, str(tmp_path / "x"), "198.18.250.2", 65100,
                  [BgpNeighbor("198.18.250.1", 65001, route_reflector_client=True)])
