"""Contract test: the JSON members ``bgpd/bgp/events.py`` reads, pinned on real ExaBGP 5.0.15 output.

The sample was captured by ``tests/bgp/capture_samples.py`` (speaker <-> BIRD 2 and FRR 8.4,
MD5, ECMP prefix, 3000-prefix UPDATE, withdrawals, FRR stopped, summary, a bad command,
shutdown). Regenerate it when upgrading ExaBGP and let this test say what changed.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from bgpd.bgp.events import (
    Ack,
    Answer,
    EndOfRib,
    Malformed,
    Notification,
    PeerOpen,
    PeerState,
    RelayHello,
    RouteUpdate,
)
from bgpd.bgp.exabgp_lines import parse_line

SAMPLE = Path(__file__).parent / "samples" / "exabgp-5.0.15.jsonl"
BIRD, FRR = "198.18.251.1", "198.18.251.2"


def lines() -> list[bytes]:
    return SAMPLE.read_bytes().splitlines(keepends=True)


def test_raw_members_we_read_exist():
    kinds = Counter()
    for raw in lines():
        if not raw.startswith(b"{"):
            continue
        msg = json.loads(raw)
        kinds[msg["type"]] += 1
        assert msg["exabgp"] == "5.0.0"
        if msg["type"] == "notification" and "neighbor" not in msg:
            assert isinstance(msg["notification"], str)
            continue
        nb = msg["neighbor"]
        assert isinstance(nb["address"]["peer"], str)
        if msg["type"] == "state":
            assert nb["state"] in ("connected", "up", "down")
        elif msg["type"] == "open":
            o = nb["open"]
            assert nb["direction"] == "receive"
            assert {"asn", "hold_time", "router_id", "capabilities"} <= set(o)
            gr = o["capabilities"]["64"]
            assert gr["time"] == 120 and "ipv4/unicast" in gr["address-family-flags"]
        elif msg["type"] == "update":
            m = nb["message"]
            assert "eor" in m or "update" in m
            if "eor" in m:
                assert (m["eor"]["afi"], m["eor"]["safi"]) == ("ipv4", "unicast")
                continue
            u = m["update"]
            for nh, items in u.get("announce", {}).get("ipv4 unicast", {}).items():
                assert nh.count(".") == 3 and all("nlri" in i for i in items)
                seg = u["attribute"]["as-path"]["0"]
                assert seg["element"] == "as-sequence" and isinstance(seg["value"], list)
                assert u["attribute"]["origin"] in ("igp", "egp", "incomplete")
            for i in u.get("withdraw", {}).get("ipv4 unicast", []):
                assert "/" in i["nlri"]
    assert kinds["state"] >= 6 and kinds["open"] == 2 and kinds["update"] >= 4


def test_sample_parses_into_expected_events():
    events = [parse_line(raw) for raw in lines()]
    assert not [e for e in events if isinstance(e, Malformed)]
    assert isinstance(events[0], RelayHello)

    states = [(e.peer, e.state) for e in events if isinstance(e, PeerState)]
    for peer in (BIRD, FRR):
        assert (peer, "up") in states and (peer, "down") in states
    assert [(e.peer, e.asn, e.graceful_restart) for e in events if isinstance(e, PeerOpen)] \
        in ([(BIRD, 65001, 120), (FRR, 65002, 120)], [(FRR, 65002, 120), (BIRD, 65001, 120)])

    announced: dict[str, set[str]] = {BIRD: set(), FRR: set()}
    withdrawn: set[str] = set()
    for e in events:
        if isinstance(e, RouteUpdate):
            for nh, prefixes in e.announced:
                assert nh == e.peer
                assert e.attributes.as_path == ((65001,) if e.peer == BIRD else (65002,))
                announced[e.peer] |= set(prefixes)
            withdrawn |= set(e.withdrawn)
    assert len(announced[BIRD]) == 3002 and announced[FRR] == {"198.19.20.0/26", "198.19.30.0/26"}
    assert "198.19.30.0/26" in announced[BIRD]
    assert len(withdrawn) == 3001 and "198.19.30.0/26" not in withdrawn
    assert {e.peer for e in events if isinstance(e, EndOfRib)} == {BIRD, FRR}

    acks = Counter(e.ok for e in events if isinstance(e, Ack))
    assert acks[False] == 1 and acks[True] >= 4
    assert any(isinstance(e, Answer) and e.text.startswith("Peer") for e in events)
    assert Notification(None, "shutdown") in events


def test_long_update_line_is_one_event():
    longest = max(lines(), key=len)
    assert len(longest) > 20_000
    ev = parse_line(longest)
    assert isinstance(ev, RouteUpdate)
    assert len(ev.withdrawn) + sum(len(p) for _, p in ev.announced) > 500
