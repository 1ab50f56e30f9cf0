"""Two ToRs in rack A (ECMP): one dies under a steady pod-to-pod flow, the other carries on.

ToR design, one node per rack, ``second_tor=True``: node a1 peers with the BIRD ToR
(198.18.1.1) and the FRR ToR (198.18.1.2) of rack A and learns rack B's pod block from
both with equal paths, so its kernel route (proto 73) has two next hops. Rack B's ToR
reaches rack A through both as well.

The failure is a power cut of the ToR the flow hashes to (``ip route get`` tells which):
its daemons are SIGKILLed (no NOTIFICATION; the kernel closes their TCP sockets, so the
sessions end at once) and its BGP-learned kernel routes are flushed. A SIGKILL alone
would leave the dead daemons' routes in that ToR's kernel, which would keep forwarding
-- exactly the case graceful restart is designed for, and no test of ECMP failover. (The
lab's rack A bridge lives in the first ToR's namespace, so cutting links would cut the
whole rack; flushing its learned routes kills its transit data path and nothing else.)

What happens, and what the test asserts:
- a1's session to the dead ToR ends at once; GR holds that ToR's paths stale for its
  restart time (GR cannot tell a crash from a restart), but our RIB takes a stale path
  out of an ECMP set that has a fresh equal path (``bgpd.bgp.rib``), so a1's kernel route
  drops to the surviving ToR right away. Rack B's ToR (FRR, a plain GR helper) keeps the
  dead ToR in its ECMP set for the whole restart time: a return path hashed to it is
  lost until then. Times and packets lost are printed, not asserted.
- After the stale paths are swept the route stays via the surviving ToR (one next hop,
  proto 73) and a fresh flow loses nothing: asserted.
- The ToR returns: both next hops come back and traffic flows both ways: asserted.
"""

import json
import signal
import time

import pytest

from lab.netns import sh
from lab.procs import wait_for
from lab.routers import BirdRouter, kernel_routes
from lab.traffic import PingFlow
from tests.e2e.conftest import build_lab

pytestmark = pytest.mark.e2e

HOLD = 9
GR_TIME = 20
TOR_A1, TOR_A2 = "198.18.1.1", "198.18.1.2"


@pytest.fixture(scope="module")
def lab():
    the_lab = build_lab("tor", nodes_per_rack=1, pods_per_node=1, tor_gr_time=GR_TIME,
                        second_tor=True)
    try:
        yield the_lab
    finally:
        assert the_lab.down() == []


def our_route(lab, node: str, prefix: str) -> dict | None:
    out = sh(["ip", "-j", "-4", "route", "show", prefix, "proto", "73"],
             netns=lab.node(node).netns).stdout
    routes = json.loads(out or "[]")
    return routes[0] if routes else None


def hops(route: dict | None) -> tuple[str, ...]:
    if route is None:
        return ()
    if "nexthops" in route:
        return tuple(sorted(h["gateway"] for h in route["nexthops"]))
    return (route["gateway"],) if "gateway" in route else ()


def chosen_gateway(netns: str, dst: str, src: str, iif: str) -> str:
    """The next hop the kernel's multipath hash picks for this flow's packets."""
    out = sh(["ip", "-j", "route", "get", dst, "from", src, "iif", iif], netns=netns).stdout
    return json.loads(out)[0].get("gateway", "")


def rx_packets(netns: str, ifname: str = "eth0") -> int:
    return int(sh(["cat", f"/sys/class/net/{ifname}/statistics/rx_packets"], netns=netns).stdout)


def flush_learned_routes(netns: str, proto: str) -> None:
    """Delete the ToR's BGP-learned routes one by one (``ip route flush`` fails with
    EINVAL on FRR's routes: zebra installs them with kernel nexthop objects)."""
    out = sh(["ip", "-j", "-4", "route", "show", "proto", proto], netns=netns).stdout
    for r in json.loads(out or "[]"):
        dst = "0.0.0.0/0" if r["dst"] == "default" else r["dst"]
        sh(["ip", "route", "del", dst, "proto", proto], netns=netns, check=False)
    left = sh(["ip", "-4", "route", "show", "proto", proto], netns=netns).stdout
    assert not left.strip(), f"the dead ToR still has learned routes: {left}"


def test_one_of_two_tors_dies_traffic_moves_to_the_other_and_ecmp_returns(lab):
    b1_block = lab.status("node-b1")["blocks"][0]
    a1_block = lab.status("node-a1")["blocks"][0]
    a1_pod, b1_pod = lab.pods["node-a1/p1"], lab.pods["node-b1/p1"]
    a1_ns = lab.node("node-a1").netns
    torb_ns = lab.tors["b"].netns

    # Both ToR sessions up: one route, two equal next hops, ours (proto 73).
    wait_for(lambda: hops(our_route(lab, "node-a1", b1_block)) == (TOR_A1, TOR_A2), 60,
             interval=0.5, what=f"{b1_block} on a1 via both rack A ToRs")
    text = sh(["ip", "route", "show", b1_block, "proto", "73"], netns=a1_ns).stdout
    assert f"nexthop via {TOR_A1} dev eth0" in text and f"nexthop via {TOR_A2} dev eth0" in text
    spine = {TOR_A1: "198.18.0.2", TOR_A2: lab.second_tor_spine_address(lab.rack_plans[0])}
    wait_for(lambda: sorted(kernel_routes(torb_ns).get(a1_block, ())) == sorted(spine.values()),
             60, interval=0.5, what=f"{a1_block} on rack B's ToR via both rack A ToRs")

    pod_veth = our_route(lab, "node-a1", f"{a1_pod['ip']}/32")["dev"]
    fwd = chosen_gateway(a1_ns, b1_pod["ip"], a1_pod["ip"], pod_veth)
    ret = chosen_gateway(torb_ns, a1_pod["ip"], b1_pod["ip"], "rack0")
    dead = fwd
    survivor = TOR_A2 if dead == TOR_A1 else TOR_A1
    role = "a" if dead == TOR_A1 else "a2"
    tor = lab.tors[role]
    print(f"flow a1-pod -> b1-pod hashes to ToR {fwd}; the return path on rack B's ToR to "
          f"{ret} ({'the same ToR' if ret == spine[dead] else 'the other ToR'}); "
          f"killing ToR {dead} ({type(tor).__name__})")

    # Echo requests reaching b1's pod tell the forward direction (a1's own choice of next
    # hop) apart from the return direction (rack B's ToR's choice).
    rx0 = rx_packets(b1_pod["netns"])
    flow = PingFlow(a1_pod["netns"], b1_pod["ip"]).start()
    started = time.monotonic()
    try:
        wait_for(lambda: lab.ping(a1_pod["netns"], b1_pod["ip"]), 10, what="flow established")
        for d in tor.daemons:
            d.signal(signal.SIGKILL)
        proto = "bird" if isinstance(tor, BirdRouter) else "bgp"
        flush_learned_routes(tor.netns, proto)
        t0 = time.monotonic()
        wait_for(lambda: hops(our_route(lab, "node-a1", b1_block)) == (survivor,),
                 HOLD + GR_TIME + 20, interval=0.2,
                 what=f"a1's route to {b1_block} via the surviving ToR only")
        a1_converged = time.monotonic() - t0
        wait_for(lambda: kernel_routes(torb_ns).get(a1_block, ()) == (spine[survivor],),
                 HOLD + GR_TIME + 20, interval=0.2,
                 what=f"rack B ToR's route to {a1_block} via the surviving ToR only")
        fabric_converged = time.monotonic() - t0
    finally:
        during = flow.stop()
        ran = time.monotonic() - started
    # The extra pings of wait_for(lab.ping) also reach b1's pod: count them as sent.
    delivered = rx_packets(b1_pod["netns"]) - rx0
    print(f"ToR {dead} power cut: a1's kernel route down to the surviving ToR after "
          f"{a1_converged:.1f}s (GR {GR_TIME}s), rack B's ToR after {fabric_converged:.1f}s; "
          f"flow ran {ran:.1f}s: {during.lost} of {during.sent} echoes lost round trip "
          f"(ping slows down while ICMP errors come back); requests that reached b1's pod: "
          f"{delivered} (forward path, incl. ARP and the probe pings)")

    # The stale paths are gone: the route stays via the surviving ToR and traffic flows.
    route = our_route(lab, "node-a1", b1_block)
    assert hops(route) == (survivor,)  # our_route() shows only proto 73
    after = PingFlow(a1_pod["netns"], b1_pod["ip"]).start()
    wait_for(lambda: lab.ping(a1_pod["netns"], b1_pod["ip"]), 10, what="ping via the survivor")
    time.sleep(3)  # a few hundred packets; the assertion is on loss, not on time
    steady = after.stop()
    print(f"after convergence: {steady.lost} of {steady.sent} packets lost")
    assert steady.sent > 0 and steady.lost == 0

    # The ToR returns (its daemons restart and reinstall their routes): ECMP is back.
    tor.stop()
    tor.start()
    t1 = time.monotonic()
    wait_for(lambda: hops(our_route(lab, "node-a1", b1_block)) == (TOR_A1, TOR_A2), 90,
             interval=0.5, what=f"{b1_block} on a1 via both rack A ToRs again")
    print(f"ToR {dead} back: both next hops on a1 again after {time.monotonic() - t1:.1f}s")
    assert lab.ping(a1_pod["netns"], b1_pod["ip"], count=3)
    assert lab.ping(b1_pod["netns"], a1_pod["ip"], count=3)


def test_a_tor_control_plane_crash_loses_nothing(lab):
    """GR's own case: the ToR's daemons die but its kernel keeps forwarding. a1 moves the
    flow to the other ToR at once (fresh beats stale), rack B's ToR keeps the stale path,
    which still forwards: not one packet lost until the stale paths are swept. The ToR's
    return (its zebra/BIRD restart reprograms its kernel) is measured separately."""
    b1_block = lab.status("node-b1")["blocks"][0]
    a1_block = lab.status("node-a1")["blocks"][0]
    a1_pod, b1_pod = lab.pods["node-a1/p1"], lab.pods["node-b1/p1"]
    a1_ns = lab.node("node-a1").netns
    torb_ns = lab.tors["b"].netns
    spine = {TOR_A1: "198.18.0.2", TOR_A2: lab.second_tor_spine_address(lab.rack_plans[0])}
    wait_for(lambda: hops(our_route(lab, "node-a1", b1_block)) == (TOR_A1, TOR_A2), 60,
             interval=0.5, what=f"{b1_block} on a1 via both rack A ToRs")
    wait_for(lambda: sorted(kernel_routes(torb_ns).get(a1_block, ())) == sorted(spine.values()),
             60, interval=0.5, what=f"{a1_block} on rack B's ToR via both rack A ToRs")
    pod_veth = our_route(lab, "node-a1", f"{a1_pod['ip']}/32")["dev"]
    dead = chosen_gateway(a1_ns, b1_pod["ip"], a1_pod["ip"], pod_veth)
    survivor = TOR_A2 if dead == TOR_A1 else TOR_A1
    tor = lab.tors["a" if dead == TOR_A1 else "a2"]

    flow = PingFlow(a1_pod["netns"], b1_pod["ip"]).start()
    try:
        wait_for(lambda: lab.ping(a1_pod["netns"], b1_pod["ip"]), 10, what="flow established")
        for d in tor.daemons:
            d.signal(signal.SIGKILL)
        t0 = time.monotonic()
        wait_for(lambda: hops(our_route(lab, "node-a1", b1_block)) == (survivor,),
                 HOLD + GR_TIME + 20, interval=0.2, what="a1 via the surviving ToR only")
        a1_moved = time.monotonic() - t0
        wait_for(lambda: kernel_routes(torb_ns).get(a1_block, ()) == (spine[survivor],),
                 HOLD + GR_TIME + 20, interval=0.2, what="rack B's ToR via the survivor only")
        swept = time.monotonic() - t0
    finally:
        crash = flow.stop()
    print(f"ToR {dead} daemons SIGKILLed (kernel still forwarding): a1 via the survivor after "
          f"{a1_moved:.1f}s, rack B's ToR after {swept:.1f}s; "
          f"{crash.lost} of {crash.sent} packets lost")
    assert crash.sent > 0 and crash.lost == 0

    back = PingFlow(a1_pod["netns"], b1_pod["ip"]).start()
    try:
        tor.stop()
        tor.start()
        wait_for(lambda: hops(our_route(lab, "node-a1", b1_block)) == (TOR_A1, TOR_A2), 90,
                 interval=0.5, what=f"{b1_block} on a1 via both rack A ToRs again")
        wait_for(lambda: sorted(kernel_routes(torb_ns).get(a1_block, ()))
                 == sorted(spine.values()), 90, interval=0.5,
                 what="rack B's ToR via both rack A ToRs again")
    finally:
        returned = back.stop()
    print(f"ToR {dead} restarted: both next hops back; {returned.lost} of {returned.sent} "
          f"packets lost while it came back")
    assert lab.ping(b1_pod["netns"], a1_pod["ip"], count=3)
