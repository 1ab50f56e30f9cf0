"""Garbage, truncated and huge lines on the ExaBGP API pipe: counted as malformed, never a crash.

Three levels, all real code: ``bgpd.bgp.exabgp_lines.parse_line`` (hostile samples and a hypothesis
fuzz), ``SpeakerCore.apply`` on what it returns, and a running ``Speaker`` (real ExaBGP 5.0.15
peering with a real BIRD) fed through the real relay process (``bgpd/bgp/exabgp_relay.py``)
connected to the speaker's API socket.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgpd.bgp.core import SpeakerCore
from bgpd.bgp.events import (
    Malformed,
    RouteUpdate,
)
from bgpd.bgp.exabgp_config import SpeakerConfig, SpeakerPeer
from bgpd.bgp.exabgp_lines import parse_line
from bgpd.bgp.import_policy import ImportPolicy
from bgpd.bgp.speaker import RELAY, Speaker
from lab.procs import wait_for
from lab.routers import BgpNeighbor, BirdRouter
from tests.bgp.conftest import (
    BIRD,
    BIRD_AS,
    LOCAL_AS,
    OWN_BLOCK,
    POOLS,
    SPEAKER,
    fabric,  # noqa: F401 - a fixture used below
)

PEER = "198.18.251.1"
T = 45  # generous bound for convergence; never asserted as a duration


def update(body: str) -> str:
    return ('{"exabgp":"5.0.15","type":"update","neighbor":{"address":{"local":"198.18.251.10",'
            f'"peer":"{PEER}"}},"message":{{"update":{body}}}}}}}')


ONE_MB_UPDATE = update('{"attribute":{"origin":"igp","as-path":{"0":{"element":"as-sequence",'
                       '"value":[65001]}}},"announce":{"ipv4 unicast":{"198.18.251.1":['
                       + ",".join(f'{{"nlri":"198.19.{i // 256 % 128}.{i % 256}/32"}}'
                                  for i in range(40_000)) + "]}}}")
assert 900_000 < len(ONE_MB_UPDATE) < 1_500_000

# name -> line. Every one must come out as Malformed (JSON-looking input).
HOSTILE = {
    "truncated-update": update('{"announce":{"ipv4 unicast":{"198.18.251.1":[{"nlri":"198.19')[:-4],
    "truncated-1MB": ONE_MB_UPDATE[:-3],
    "huge-garbage-1MB": "{" + "x" * 1_000_000 + "}",
    "huge-string-1MB": '{"type":"' + "u" * 1_000_000 + '"}',
    "deeply-nested": '{"a":' + "[" * 100_000 + "]" * 100_000 + "}",
    "deeply-nested-truncated": '{"a":' + "[" * 100_000,
    "infinite-med": update('{"attribute":{"med":1e400}}'),
    "huge-integer": update('{"attribute":{"med":' + "9" * 5000 + "}}"),
    "as-path-not-a-dict": update('{"attribute":{"as-path":"65001"}}'),
    "announce-list": update('{"announce":{"ipv4 unicast":[1,2]}}'),
    "nlri-object": update('{"announce":{"ipv4 unicast":{"198.18.251.1":[{"nlri":{"x":1}}]}}}'),
    "nlri-number": update('{"announce":{"ipv4 unicast":{"198.18.251.1":[17]}}}'),
    "nlri-list-is-a-string": update('{"announce":{"ipv4 unicast":{"198.18.251.1":"198.19.0.0/26"}}}'),
    "withdraw-is-a-string": update('{"withdraw":{"ipv4 unicast":"198.19.0.0/26"}}'),
    "peer-not-a-string": '{"type":"state","neighbor":{"address":{"peer":[1]},"state":"up"}}',
    "no-type": '{"neighbor":{}}',
    "unknown-type": '{"type":"bogus","neighbor":{"address":{"peer":"198.18.251.1"}}}',
    "json-but-not-an-object": '{"type": }',
    "control-character": '{"type":"state\x00"}',
    "open-asn-text": '{"type":"open","neighbor":{"address":{"peer":"198.18.251.1"},'
                     '"open":{"asn":"x","hold_time":9,"router_id":"1.1.1.1"}}}',
}


def core() -> SpeakerCore:
    cfg = SpeakerConfig(LOCAL_AS, SPEAKER, SPEAKER, (SpeakerPeer(PEER, BIRD_AS),))
    return SpeakerCore(cfg, ImportPolicy(LOCAL_AS, POOLS, frozenset({OWN_BLOCK}),
                                         frozenset({SPEAKER})))


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_line_is_malformed_and_counted(name):
    ev = parse_line(HOSTILE[name].encode() + b"\n")
    assert isinstance(ev, Malformed), ev
    assert len(ev.line) <= 300  # what gets logged is bounded, whatever the input size
    c = core()
    c.apply(ev, 0.0)
    assert c.counters == {"malformed_lines": 1}


def test_non_utf8_and_text_lines_never_raise():
    assert isinstance(parse_line(b"\xff\xfe{\"type\":1}\n"), Malformed)
    for raw in (b"", b"\n", b"garbage", b"\x00" * 1000, b"[1,2,3]", b"x" * 1_000_000):
        parse_line(raw)  # text that is not JSON is a command answer; it must not raise


def test_a_valid_1mb_update_still_parses():
    ev = parse_line(ONE_MB_UPDATE)
    assert isinstance(ev, RouteUpdate) and len(ev.announced[0][1]) == 40_000


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda kids: st.lists(kids, max_size=4)
                    | st.dictionaries(st.sampled_from(
                        ["type", "neighbor", "address", "peer", "message", "update", "announce",
                         "withdraw", "ipv4 unicast", "nlri", "attribute", "as-path", "value",
                         "med", "open", "asn", "state", "eor", "afi", "safi", "notification",
                         "body", "category", "direction", "negotiated", "asn4", "families",
                         "198.18.251.1", "x"]), kids, max_size=5),
                    max_leaves=30)


@settings(max_examples=400, deadline=None)
@given(doc=JSON, kind=st.sampled_from(["update", "state", "open", "notification", "negotiated",
                                      "x"]),
       cut=st.integers(min_value=0, max_value=400))
def test_fuzz_parse_and_apply_never_raise(doc, kind, cut):
    shaped = {"type": kind, "neighbor": {"address": {"peer": PEER}, "message": doc,
                                         "open": doc, "state": doc, "negotiated": doc,
                                         "direction": "receive"}}
    c = core()
    for text in (json.dumps(doc), json.dumps(shaped), json.dumps(shaped)[:cut]):
        c.apply(parse_line(text), 0.0)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_bytes_never_raise(raw):
    core().apply(parse_line(raw), 0.0)


# ------------------------------------------------------------- through a running speaker

@pytest.mark.integration
def test_running_speaker_survives_a_hostile_relay(fabric):  # noqa: F811 - fixture
    bird = BirdRouter(fabric.bird_ns, f"{fabric.workdir}/bird", BIRD, BIRD_AS,
                      [BgpNeighbor(SPEAKER, LOCAL_AS)], static_routes=["198.19.20.0/26"])
    cfg = SpeakerConfig(LOCAL_AS, SPEAKER, SPEAKER, (SpeakerPeer(BIRD, BIRD_AS, hold_time=9),))
    sp = Speaker(cfg, ImportPolicy(LOCAL_AS, POOLS, frozenset({OWN_BLOCK}), frozenset({SPEAKER})),
                 f"{fabric.workdir}/speaker", netns=fabric.speaker_ns)
    relay = None
    try:
        bird.start()
        sp.start()
        wait_for(lambda: "198.19.20.0/26" in sp.routes(), T, what="BIRD's route in the RIB")
        starts = sp.counters()["exabgp_starts"]

        # The real relay, connected to the speaker's socket, writing what a broken ExaBGP would.
        relay = subprocess.Popen([sys.executable, RELAY, sp.sock_path], stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL)
        for line in HOSTILE.values():
            relay.stdin.write(line.encode() + b"\n")
        relay.stdin.write(b"\xff\xfe not utf-8 {\n")
        # A well-formed line afterwards is still processed: the reader survived all of it.
        relay.stdin.write(json.dumps({"type": "state", "neighbor": {
            "address": {"peer": BIRD}, "state": "down", "reason": "injected"}}).encode() + b"\n")
        relay.stdin.flush()
        wait_for(lambda: (sp.peer(BIRD).last_error == "injected"), T,
                 what="the line after the garbage applied")
        assert sp.counters()["malformed_lines"] == len(HOSTILE) + 1  # + the non-utf-8 line

        # The injected relay goes away: the speaker restarts ExaBGP and the session and the
        # route come back.
        relay.stdin.close()
        relay.wait(10)
        wait_for(lambda: sp.counters()["exabgp_starts"] > starts, T, what="ExaBGP restarted")
        wait_for(lambda: sp.peer(BIRD).state == "established", T, what="session back")
        wait_for(lambda: "198.19.20.0/26" in sp.routes(), T, what="route back")
    finally:
        if relay is not None and relay.poll() is None:
            relay.kill()
            relay.wait()
        sp.stop(withdraw=False)
        bird.stop()
