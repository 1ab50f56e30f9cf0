"""Contract test for ipv6 unicast (issue 15): a packet line decoded by ``bgpd.bgp.wire`` is
the event its parsed twin gives, on messages from real BIRD 2 and FRR IPv6 sessions.

The sample was captured by ``python -m tests.bgp.capture_samples --pairs6`` (``receive {
packets; parsed; }``, ``family { ipv6 unicast; }``): both peers are directly connected and
send a global + link-local next hop (32 bytes, RFC 2545) in MP_REACH_NLRI, for which ExaBGP's
parsed form lists every prefix twice, once per next hop. Both decoders keep the global one
(a node forwards to the peer's global address; the link-local one is only valid on that
link: calico#10321). Withdrawals arrive in MP_UNREACH_NLRI; End-of-RIB is the ipv6 form.
Regenerate it when upgrading ExaBGP.
"""

from __future__ import annotations

import json
from pathlib import Path

from bgpd.bgp.events import EndOfRib, Malformed, Notification, PeerOpen, RouteUpdate
from bgpd.bgp.exabgp_lines import parse_line
from tests.bgp.test_wire_contract import pairs

SAMPLE = Path(__file__).parent / "samples" / "exabgp-5.0.15-pairs-v6.jsonl"
BIRD6, FRR6 = "2001:2:0:fb::1", "2001:2:0:fb::2"

def _pairs():
    return pairs(SAMPLE)


def test_every_ipv6_packet_line_decodes_to_its_parsed_twin():
    got = _pairs()
    assert len(got) >= 10  # 2 OPEN, 2 NOTIFICATION, 7 UPDATE
    for raw, _, twin_raw, _ in got:
        ev = parse_line(raw)
        assert not isinstance(ev, Malformed), ev
        assert ev == parse_line(twin_raw)


def test_the_sample_has_link_local_next_hops_and_we_keep_the_global_one():
    updates = [(parse_line(raw), twin) for raw, _, _, twin in _pairs() if twin["type"] == "update"]
    for ev, twin in updates:
        for hops in twin["neighbor"]["message"].get("update", {}).get("announce", {}).values():
            # ExaBGP's parsed form: the prefixes once per next hop (global, link-local).
            assert len(hops) == 2 and sum(h.startswith("fe80:") for h in hops) == 1, hops
            want = {(h, tuple(i["nlri"] for i in items)) for h, items in hops.items()
                    if not h.startswith("fe80:")}
            assert set(ev.announced) == want
    announced = {(e.peer, nh, p) for e, _ in updates if isinstance(e, RouteUpdate)
                 for nh, ps in e.announced for p in ps}
    assert (BIRD6, BIRD6, "2001:2:0:1900::40/122") in announced
    assert (BIRD6, BIRD6, "2001:2:0:1900::c5/128") in announced
    assert (BIRD6, BIRD6, "2001:2:0:1901::/64") in announced
    assert (FRR6, FRR6, "2001:2:0:1900::100/122") in announced
    assert not any(nh.startswith("fe80:") for _, nh, _ in announced)


def test_ipv6_withdrawals_end_of_rib_open_and_notifications():
    events = [parse_line(raw) for raw, _, _, _ in _pairs()]
    withdrawn = {(e.peer, p) for e in events if isinstance(e, RouteUpdate) for p in e.withdrawn}
    assert {(BIRD6, "2001:2:0:1900::80/122"), (BIRD6, "2001:2:0:1901::/64"),
            (FRR6, "2001:2:0:1900::140/122")} <= withdrawn
    assert {e for e in events if isinstance(e, EndOfRib)} == {
        EndOfRib(BIRD6, "ipv6 unicast"), EndOfRib(FRR6, "ipv6 unicast")}
    # Graceful restart listed for ipv6/unicast only: still the peer's restart time.
    assert {(e.peer, e.asn, e.graceful_restart) for e in events if isinstance(e, PeerOpen)} \
        == {(BIRD6, 65001, 120), (FRR6, 65002, 120)}
    assert {e for e in events if isinstance(e, Notification)} == {
        Notification(FRR6, '6/2 Shutdown Communication: "maintenance"'),
        Notification(BIRD6, '6/2 Shutdown Communication: "going away"')}


def test_negotiated_family_is_ipv6_unicast_only():
    for _, msg, _, _ in _pairs():
        if msg["type"] != "open":
            assert msg["neighbor"]["negotiated"]["families"] == ["ipv6 unicast"]
    lines = [json.loads(r) for r in SAMPLE.read_bytes().splitlines() if r.startswith(b"{")]
    assert not [r for r in (parse_line(json.dumps(m)) for m in lines) if isinstance(r, Malformed)]
