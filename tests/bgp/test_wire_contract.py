"""Contract test: a packet line decoded by ``bgpd.bgp.wire`` is the event its parsed twin gives.

The sample was captured by ``python -m tests.bgp.capture_samples --pairs`` with
``receive { packets; parsed; }``: for every message it receives, ExaBGP 5.0.15 writes the
packet line and then, for the same message, the parsed line (``reactor/protocol.py``
``read_message``). Peers: BIRD 2 (eBGP, no four-octet AS capability: 2-byte AS_PATH plus
AS4_PATH) and FRR 8.4 (iBGP: LOCAL_PREF, MED, an AS_SET aggregate, a route re-advertised
with BIRD's next hop), MD5, 2000+ prefixes, withdrawals, End-of-RIB, Cease with an RFC 8203
shutdown communication from both. Regenerate it when upgrading ExaBGP.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from bgpd.bgp.events import (
    EndOfRib,
    Malformed,
    Negotiated,
    Notification,
    PeerOpen,
    RouteUpdate,
)
from bgpd.bgp.exabgp_lines import parse_line

SAMPLE = Path(__file__).parent / "samples" / "exabgp-5.0.15-pairs.jsonl"
BIRD, FRR = "198.18.251.1", "198.18.251.2"


def json_lines(sample: Path = SAMPLE) -> list[tuple[bytes, dict]]:
    return [(raw, json.loads(raw)) for raw in sample.read_bytes().splitlines()
            if raw.startswith(b"{")]


def is_packet(msg: dict) -> bool:
    m = msg.get("neighbor", {}).get("message")
    return isinstance(m, dict) and "body" in m and "category" in m


def pairs(sample: Path = SAMPLE) -> list[tuple[bytes, dict, bytes, dict]]:
    lines = json_lines(sample)
    out = []
    for k, (raw, msg) in enumerate(lines):
        if not is_packet(msg):
            continue
        twin_raw, twin = lines[k + 1]
        # The parsed twin is the very next line: same peer, same type, the next counter.
        assert not is_packet(twin), raw[:200]
        assert twin["type"] == msg["type"]
        assert twin["neighbor"]["address"] == msg["neighbor"]["address"]
        assert twin["counter"] == msg["counter"] + 1
        out.append((raw, msg, twin_raw, twin))
    return out


def test_every_packet_line_decodes_to_its_parsed_twin():
    got = pairs()
    assert len(got) >= 20
    for raw, _, twin_raw, _ in got:
        ev = parse_line(raw)
        assert not isinstance(ev, Malformed), ev
        assert ev == parse_line(twin_raw)


def test_packet_line_members_we_read():
    kinds = Counter()
    for _, msg, _, _ in pairs():
        nb = msg["neighbor"]
        assert nb["direction"] == "receive"
        m = nb["message"]
        assert m["category"] == {"open": 1, "update": 2, "notification": 3}[msg["type"]]
        assert m["body"].startswith("0x") and m["header"].startswith("0xFFFFFFFF")
        # api { negotiated; }: asn4 says how wide the AS_PATH is. On an OPEN line the
        # negotiation has not happened yet: asn4 False and no family, whatever the peer does.
        neg = nb["negotiated"]
        if msg["type"] == "open":
            assert neg["asn4"] is False and neg["families"] == []
        else:
            assert neg["asn4"] is (nb["address"]["peer"] == FRR)
            assert neg["families"] == ["ipv4 unicast"]
        assert neg["add_path"] == {"send": [], "receive": []} and neg["nexthop"] == []
        kinds[msg["type"]] += 1
    assert kinds["open"] == 2 and kinds["notification"] == 2 and kinds["update"] >= 15


def test_sample_covers_what_the_decoder_must_get_right():
    events = [parse_line(raw) for raw, _, _, _ in pairs()]
    updates = [e for e in events if isinstance(e, RouteUpdate)]
    assert {(e.peer, e.asn, e.graceful_restart) for e in events if isinstance(e, PeerOpen)} \
        == {(BIRD, 65001, 120), (FRR, 64512, 120)}
    assert {e.peer for e in events if isinstance(e, EndOfRib)} == {BIRD, FRR}
    assert max(sum(len(p) for _, p in e.announced) for e in updates) > 200
    assert max(len(e.withdrawn) for e in updates) > 500
    lengths = {p.split("/")[1] for e in updates for _, ps in e.announced for p in ps}
    assert {"21", "22", "23", "24", "25", "26", "30"} <= lengths
    paths = {(e.peer, e.attributes.as_path, e.attributes.as_path_len) for e in updates
             if e.announced}
    # 2-byte session: AS_PATH 65001 65010 AS_TRANS + AS4_PATH, merged by ExaBGP.
    assert (BIRD, (65001, 65010, 4200000001), 3) in paths
    assert (FRR, (65001, 65010, 4200000001), 3) in paths  # the same route via iBGP
    assert (FRR, (65001, 65020, 65021), 2) in paths  # 65001 {65020 65021}: AS_SET counts 1
    ibgp = {(e.attributes.local_pref, e.attributes.med) for e in updates if e.peer == FRR}
    assert ibgp == {(250, 30)}
    assert {e.attributes.origin for e in updates if e.announced} == {0, 2}
    nexthops = {(e.peer, nh) for e in updates for nh, _ in e.announced}
    assert (FRR, BIRD) in nexthops and (FRR, FRR) in nexthops
    assert {e for e in events if isinstance(e, Notification)} == {
        Notification(FRR, '6/2 Shutdown Communication: "maintenance"'),
        Notification(BIRD, '6/2 Shutdown Communication: "going away"')}


def test_negotiated_lines():
    events = [parse_line(raw) for raw, msg in json_lines() if msg["type"] == "negotiated"]
    assert sorted(events, key=lambda e: e.peer) == [
        Negotiated(BIRD, False, 9, ("ipv4 unicast",)), Negotiated(FRR, True, 9, ("ipv4 unicast",))]


def test_whole_sample_has_no_malformed_line():
    events = [parse_line(raw) for raw in SAMPLE.read_bytes().splitlines(keepends=True)]
    assert not [e for e in events if isinstance(e, Malformed)]
