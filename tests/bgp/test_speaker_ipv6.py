"""Our speaker (real ExaBGP 5.0.15) speaking ipv6 unicast with real BIRD 2 and FRR (issue 15).

BIRD peers over IPv6 (2001:2:0:fb::/64, on the segment of tests/bgp/conftest.py), FRR over
IPv4 with only ipv6 unicast activated: the case where ExaBGP's ``next-hop self`` fails and
our commands give the explicit global IPv6 next hop. Both routers are directly connected
and send global + link-local next hops; we must install the global one.
"""

from __future__ import annotations

import pytest

from bgpd.bgp.exabgp_config import SpeakerConfig, SpeakerPeer
from bgpd.bgp.import_policy import ImportPolicy
from bgpd.bgp.rib import Route
from bgpd.bgp.speaker import Speaker
from lab.procs import wait_for
from tests.bgp.capture_samples import build_fabric6
from tests.bgp.conftest import BIRD, BIRD_AS, FRR, FRR_AS, LOCAL_AS, OWN_BLOCK, POOLS, SPEAKER
from tests.bgp.v6_routers import BIRD6, FRR6, POOL6, SPEAKER6, Bird6, Frr6

pytestmark = pytest.mark.integration

T = 45  # generous upper bound for convergence; never asserted as a duration
OWN6 = "2001:2:0:1900::/122"
BIRD_IN = "2001:2:0:1900::40/122"
BIRD_HOST = "2001:2:0:1900::c5/128"
FRR_IN = "2001:2:0:1900::100/122"
OUTSIDE = "2001:2:0:fe00::/64"
INSIDE_OURS = "2001:2:0:1900::5/128"  # a hostile /128 inside our own block


@pytest.fixture
def fabric6(netns_set, tmp_path):
    import os

    wd = str(tmp_path)
    os.chmod(wd, 0o755)
    return build_fabric6(netns_set, wd)


@pytest.fixture
def cleanup():
    items = []
    yield items
    for it in reversed(items):
        if isinstance(it, Speaker):
            it.stop(withdraw=False)
        else:
            it.stop()


def _state(sp: Speaker, peer: str) -> str | None:
    st = sp.peer(peer)
    return st.state if st is not None else None


def test_ipv6_unicast_both_ways_over_ipv6_and_ipv4_sessions(fabric6, cleanup):
    b = Bird6(fabric6.bird_ns, f"{fabric6.workdir}/bird", BIRD, BIRD_AS,
              peers6=[(SPEAKER6, LOCAL_AS)],
              routes6=[BIRD_IN, BIRD_HOST, OUTSIDE, INSIDE_OURS])
    f = Frr6(fabric6.frr_ns, f"{fabric6.workdir}/frr", FRR, FRR_AS,
             peers6=[(SPEAKER, LOCAL_AS)], routes6=[FRR_IN])
    cleanup += [b.start(), f.start()]
    cfg = SpeakerConfig(LOCAL_AS, SPEAKER, SPEAKER,
                        (SpeakerPeer(BIRD6, BIRD_AS, hold_time=9),
                         SpeakerPeer(FRR, FRR_AS, hold_time=9, families=("ipv6 unicast",))),
                        local_address6=SPEAKER6)
    sp = Speaker(cfg, ImportPolicy(LOCAL_AS, (*POOLS, POOL6), frozenset({OWN_BLOCK, OWN6}),
                                   frozenset({SPEAKER, SPEAKER6})),
                 f"{fabric6.workdir}/speaker", netns=fabric6.speaker_ns)
    cleanup.append(sp)
    # An IPv4 block too: neither session carries ipv4 unicast, so it must go nowhere
    # (and draw no "error" from ExaBGP).
    sp.set_desired([OWN_BLOCK, OWN6], complete=True)
    sp.start()
    wait_for(lambda: _state(sp, BIRD6) == _state(sp, FRR) == "established", T,
             what="the IPv6 session to BIRD and the IPv4 session to FRR")

    # We learn their IPv6 prefixes with the global next hop (not the link-local one).
    wait_for(lambda: {BIRD_IN, BIRD_HOST, FRR_IN} <= set(sp.routes()), T,
             what="BIRD's and FRR's IPv6 prefixes")
    routes = sp.routes()
    assert routes[BIRD_IN] == Route((BIRD6,), (BIRD6,))
    assert routes[BIRD_HOST] == Route((BIRD6,), (BIRD6,))
    assert routes[FRR_IN] == Route((FRR6,), (FRR,))
    assert set(routes) == {BIRD_IN, BIRD_HOST, FRR_IN}
    rejected = sp.peer(BIRD6).rejected
    assert rejected == {"outside-pools": 1, "own-block": 1}, rejected

    # They learn our IPv6 block with our global IPv6 next hop; the IPv4 block goes nowhere.
    wait_for(lambda: OWN6 in f.routes() and OWN6 in b.routes(), T,
             what="our IPv6 block at BIRD and FRR")
    assert b.routes()[OWN6].source == SPEAKER6
    assert f.routes()[OWN6].nexthops == (SPEAKER6,)
    assert b.routes()[OWN6].nexthops == (SPEAKER6,)
    assert OWN_BLOCK not in f.cli("show bgp ipv4 unicast json")
    assert sp.core.counters.get("acks.error", 0) == 0, sp.core.counters

    # A withdraw from a peer removes its route; ours leaves both routers.
    b.routes6 = [BIRD_HOST]
    b.configure()
    wait_for(lambda: BIRD_IN not in sp.routes(), T, what="BIRD's withdrawal")
    assert BIRD_HOST in sp.routes()
    sp.set_desired([OWN_BLOCK], complete=True)
    wait_for(lambda: OWN6 not in f.routes() and OWN6 not in b.routes(), T,
             what="our IPv6 block withdrawn at BIRD and FRR")
    assert sp.core.counters.get("acks.error", 0) == 0, sp.core.counters
