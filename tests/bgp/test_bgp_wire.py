"""``bgpd.bgp.wire`` on hand-built BGP message bodies, checked against ExaBGP 5.0.15 itself.

The oracle is the installed ExaBGP: ``Message.unpack`` of the same body with a session of
the same negotiation, its treat-as-withdraw step from ``read_message``, its JSON encoder,
then ``bgpd.bgp.exabgp_lines.parse_line`` of that parsed line -- exactly what the daemon got with
``receive { parsed; }``. Where ExaBGP raises (it would send a NOTIFICATION and end the
session) the decoder must return a reason (``Malformed`` through ``parse_line``).
No root, no daemons.
"""

from __future__ import annotations

import json
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgpd.bgp import wire as bgp_wire
from bgpd.bgp.events import (
    Attributes,
    EndOfRib,
    Malformed,
    Notification,
    PeerOpen,
    RouteUpdate,
)
from bgpd.bgp.exabgp_lines import parse_line
from bgpd.bgp.wire import Session

pytest.importorskip("exabgp")

from exabgp.bgp.message import Message  # noqa: E402
from exabgp.bgp.message.action import Action  # noqa: E402
from exabgp.bgp.message.direction import Direction  # noqa: E402
from exabgp.bgp.message.open.capability import Negotiated  # noqa: E402
from exabgp.bgp.message.update.attribute import Attribute  # noqa: E402
from exabgp.bgp.neighbor import Neighbor  # noqa: E402
from exabgp.logger import log  # noqa: E402
from exabgp.protocol.family import AFI, SAFI  # noqa: E402
from exabgp.reactor.api.response.json import JSON  # noqa: E402

log.disable()

PEER, LOCAL = "198.18.251.1", "198.18.251.10"
V4 = (1, 1)
RESET = "ExaBGP ends the session"


class _Nb(dict):
    uid = "test"


NEIGHBOR = _Nb({"local-address": LOCAL, "peer-address": PEER, "local-as": 64512,
                "peer-as": 65001, "router-id": LOCAL})


# ---------------------------------------------------------------- the two decoders

def oracle(category: int, body: bytes, asn4: bool = True, families=(V4,),
           addpath: bool = False, nexthop: bool = False):
    """ExaBGP's parsed line for this body, through parse_line; RESET where ExaBGP raises."""
    neg = Negotiated(Neighbor())
    neg.asn4 = asn4
    neg.families = [(AFI.create(a), SAFI.create(s)) for a, s in families]
    if addpath:
        neg.addpath._receive[(AFI.ipv4, SAFI.unicast)] = True
    if nexthop:
        neg.nexthop = [(AFI.ipv4, SAFI.unicast, AFI.ipv6)]
    enc = JSON("5.0.0")
    try:
        msg = Message.unpack(category, body, Direction.IN, neg)
        if category == 2:
            # reactor/protocol.py read_message: RFC 7606 treat-as-withdraw.
            if Attribute.CODE.INTERNAL_TREAT_AS_WITHDRAW in msg.attributes:
                for nlri in msg.nlris:
                    nlri.action = Action.WITHDRAW
            line = enc.update(NEIGHBOR, "receive", msg, None, b"", b"")
        elif category == 1:
            line = enc.open(NEIGHBOR, "receive", msg, None, b"", b"")
        else:
            line = enc.notification(NEIGHBOR, "receive", msg, None, b"", b"")
    except Exception:  # noqa: BLE001 - Notify or a decoder crash: the session ends either way
        return RESET
    ev = parse_line(line)
    assert not isinstance(ev, Malformed), (line, ev)
    return ev


def ours(category: int, body: bytes, asn4: bool = True, families=(V4,), addpath: bool = False,
         nexthop: bool = False):
    s = Session(asn4, frozenset(families), frozenset({V4}) if addpath else frozenset(), nexthop)
    return bgp_wire.decode(PEER, category, body, s)


def same_as_exabgp(category: int, body: bytes, **kw):
    want, got = oracle(category, body, **kw), ours(category, body, **kw)
    if want == RESET:
        assert isinstance(got, str), (body.hex(), got)
    else:
        assert got == want, body.hex()
    return got


# ---------------------------------------------------------------- building bodies

FLAGS = {1: 0x40, 2: 0x40, 3: 0x40, 4: 0x80, 5: 0x40, 6: 0x40, 7: 0xC0, 8: 0xC0, 9: 0x80,
         10: 0x80, 14: 0x80, 15: 0x80, 16: 0xC0, 17: 0xC0, 18: 0xC0, 22: 0xC0, 25: 0xC0,
         26: 0x80, 32: 0xC0}


def attr(code: int, value: bytes, flag: int | None = None, ext: bool = False) -> bytes:
    flag = FLAGS.get(code, 0xC0) if flag is None else flag
    if ext or len(value) > 255:
        return bytes([flag | 0x10, code]) + len(value).to_bytes(2, "big") + value
    return bytes([flag & ~0x10 & 0xFF, code, len(value)]) + value


def prefix(text: str) -> bytes:
    net, _, length = text.partition("/")
    m = int(length)
    return bytes([m]) + socket.inet_aton(net)[:(m + 7) // 8]


def nlri(*prefixes: str) -> bytes:
    return b"".join(prefix(p) for p in prefixes)


def update(withdrawn: bytes = b"", attrs: bytes = b"", announced: bytes = b"") -> bytes:
    return (len(withdrawn).to_bytes(2, "big") + withdrawn + len(attrs).to_bytes(2, "big")
            + attrs + announced)


def segs(*segments: tuple[int, tuple[int, ...]], width: int = 4) -> bytes:
    return b"".join(bytes([kind, len(asns)]) + b"".join(a.to_bytes(width, "big") for a in asns)
                    for kind, asns in segments)


SEQ, SET, CSEQ, CSET = 2, 1, 3, 4
ORIGIN_IGP = attr(1, b"\x00")
NH = attr(3, socket.inet_aton(PEER))


def basic(path: bytes, *extra: bytes) -> bytes:
    return ORIGIN_IGP + attr(2, path) + NH + b"".join(extra)


# ---------------------------------------------------------------- UPDATE: attributes

def test_plain_update_many_prefixes_and_withdrawals():
    many = [f"198.19.{i // 64}.{(i % 64) * 4}/30" for i in range(600)]
    body = update(nlri("198.19.200.0/24", "198.19.201.0/26"),
                  basic(segs((SEQ, (65001, 4200000001)))), nlri(*many, "198.19.100.0/22"))
    ev = same_as_exabgp(2, body)
    assert ev == RouteUpdate(PEER, Attributes((65001, 4200000001), 2), ((PEER, (*many, "198.19.100.0/22")),),
                             ("198.19.200.0/24", "198.19.201.0/26"))


def test_two_byte_as_path_when_asn4_was_not_negotiated():
    body = update(b"", basic(segs((SEQ, (65001, 65002, 1)), width=2)), nlri("198.19.1.0/26"))
    ev = same_as_exabgp(2, body, asn4=False)
    assert ev.attributes.as_path == (65001, 65002, 1) and ev.attributes.as_path_len == 3
    # The same six bytes on a 4-byte session are one and a half ASNs: treat-as-withdraw.
    ev4 = same_as_exabgp(2, body, asn4=True)
    assert ev4.announced == () and ev4.withdrawn == ("198.19.1.0/26",)


def test_as4_path_is_merged_into_a_two_byte_as_path():
    path = segs((SEQ, (65001, 23456, 23456)), width=2)
    as4 = segs((SEQ, (4200000001, 4200000002)))
    body = update(b"", basic(path, attr(17, as4)), nlri("198.19.1.0/26"))
    ev = same_as_exabgp(2, body, asn4=False)
    assert ev.attributes.as_path == (65001, 4200000001, 4200000002)
    # An AGGREGATOR that is not AS_TRANS next to an AS4_AGGREGATOR: AS4_PATH ignored.
    agg = attr(7, (65001).to_bytes(2, "big") + socket.inet_aton(PEER))
    agg4 = attr(18, (4200000009).to_bytes(4, "big") + socket.inet_aton(PEER))
    body = update(b"", basic(path, attr(17, as4), agg, agg4), nlri("198.19.1.0/26"))
    assert same_as_exabgp(2, body, asn4=False).attributes.as_path == (65001, 23456, 23456)
    # AS_TRANS aggregator: the merge happens.
    agg = attr(7, (23456).to_bytes(2, "big") + socket.inet_aton(PEER))
    body = update(b"", basic(path, attr(17, as4), agg, agg4), nlri("198.19.1.0/26"))
    assert same_as_exabgp(2, body, asn4=False).attributes.as_path[-1] == 4200000002


def test_as_set_counts_one_and_confederation_segments_count_like_ExaBGP_prints_them():
    body = update(b"", basic(segs((SEQ, (65001,)), (SET, (65020, 65021, 65022)))),
                  nlri("198.19.1.0/26"))
    ev = same_as_exabgp(2, body)
    assert ev.attributes == Attributes((65001, 65020, 65021, 65022), 2)
    body = update(b"", basic(segs((SET, ()), (SEQ, (65001,)))), nlri("198.19.1.0/26"))
    assert same_as_exabgp(2, body).attributes == Attributes((65001,), 2)  # empty set: 1
    # ExaBGP names confed segments "as-sequence": they count by length (RFC 5065: 0).
    body = update(b"", basic(segs((CSEQ, (64600, 64601)), (CSET, (64602,)), (SEQ, (65001,)))),
                  nlri("198.19.1.0/26"))
    assert same_as_exabgp(2, body).attributes == Attributes((64600, 64601, 64602, 65001), 4)


def test_extended_length_attributes():
    communities = b"".join((65001 << 16 | i).to_bytes(4, "big") for i in range(100))
    attrs = (attr(1, b"\x02", ext=True) + attr(2, segs((SEQ, (65001,))), ext=True)
             + attr(3, socket.inet_aton(PEER), ext=True) + attr(4, (7).to_bytes(4, "big"), ext=True)
             + attr(5, (300).to_bytes(4, "big")) + attr(8, communities))  # 400 bytes: extended
    ev = same_as_exabgp(2, update(b"", attrs, nlri("198.19.1.0/26")))
    assert ev.attributes == Attributes((65001,), 1, 2, 7, 300)


def test_origin_med_local_pref_and_next_hop_forms():
    body = update(b"", ORIGIN_IGP[:-1] + b"\x07" + attr(2, b"") + attr(3, bytes(15) + b"\x01")
                  + attr(4, (5).to_bytes(4, "big")), nlri("198.19.1.0/26"))
    ev = same_as_exabgp(2, body)
    assert ev.attributes == Attributes((), 0, 2, 5, 100)  # origin 7 is "invalid": 2
    assert ev.announced == (("::1", ("198.19.1.0/26",)),)
    # No NEXT_HOP at all: ExaBGP's "no-nexthop".
    ev = same_as_exabgp(2, update(b"", ORIGIN_IGP, nlri("198.19.1.0/26")))
    assert ev.announced == (("no-nexthop", ("198.19.1.0/26",)),)


def test_host_bits_are_kept_as_sent():
    ev = same_as_exabgp(2, update(b"", basic(b""), bytes([26, 198, 19, 1, 0xC5])))
    assert ev.announced[0][1] == ("198.19.1.197/26",)


@pytest.mark.parametrize("bad", [
    attr(4, b"\x00\x00\x07"),                    # MED of 3 bytes
    attr(5, b""),                                # empty LOCAL_PREF
    attr(1, b"\x00", flag=0xC0),                 # ORIGIN flagged optional
    attr(2, b"\x02\x03\x00\x01"),                # AS_PATH shorter than its count
    attr(2, b"\x07\x01\x00\x00\x00\x01"),        # AS_PATH segment type 7
    attr(8, b"\x00\x01\x02"),                    # COMMUNITY of 3 bytes
    attr(32, bytes(13)),                         # LARGE_COMMUNITY of 13 bytes
    b"\x40\x01\x05\x00",                         # ORIGIN length past the attributes
])
def test_treat_as_withdraw_withdraws_every_prefix(bad):
    # First (a repeated attribute is skipped), unless it overruns the attribute section.
    good = basic(segs((SEQ, (65001,))))
    attrs = good + bad if bad.startswith(b"\x40\x01\x05") else bad + good
    body = update(nlri("198.19.9.0/24"), attrs, nlri("198.19.1.0/26", "198.19.2.0/26"))
    ev = same_as_exabgp(2, body)
    assert ev.announced == ()
    assert ev.withdrawn == ("198.19.9.0/24", "198.19.1.0/26", "198.19.2.0/26")


def test_duplicates_unknown_and_discarded_attributes():
    attrs = (basic(segs((SEQ, (65001,))), attr(4, (1).to_bytes(4, "big")),
                   attr(4, (2).to_bytes(4, "big")))  # a second MED: ignored
             + attr(99, b"xyz", flag=0xC0) + attr(98, b"q", flag=0x80)  # unknown (non-)transitive
             + attr(6, b"\x01") + attr(7, b"\x00"))  # malformed: discarded
    ev = same_as_exabgp(2, update(b"", attrs, nlri("198.19.1.0/26")))
    assert ev.attributes.med == 1 and ev.announced


# ---------------------------------------------------------------- UPDATE: EoR and MP

def test_end_of_rib_forms():
    assert same_as_exabgp(2, update()) == EndOfRib(PEER, "ipv4 unicast")
    eor6 = update(b"", attr(15, b"\x00\x02\x01", ext=True))  # the 11-byte form
    assert len(eor6) == 11
    assert same_as_exabgp(2, eor6) == EndOfRib(PEER, "ipv6 unicast")  # even if not negotiated
    short = update(b"", attr(15, b"\x00\x02\x01"))  # 10 bytes: decoded as an attribute
    assert same_as_exabgp(2, short, families=(V4, (2, 1))) == EndOfRib(PEER, "ipv6 unicast")
    assert isinstance(same_as_exabgp(2, short), str)  # ipv6 not negotiated: session ends
    assert same_as_exabgp(2, update(b"", attr(15, b"\x00\x01\x01"))) == EndOfRib(PEER, "ipv4 unicast")
    # Only an unknown non-transitive attribute: ExaBGP sees no attribute, an EoR.
    assert same_as_exabgp(2, update(b"", attr(98, b"q", flag=0x80))) == EndOfRib(PEER, "ipv4 unicast")
    # An unknown transitive one is kept: an empty UPDATE, not an EoR.
    assert same_as_exabgp(2, update(b"", attr(99, b"q", flag=0xC0))) == RouteUpdate(
        PEER, Attributes(), (), ())
    # Anything else in it: not an EoR.
    ev = same_as_exabgp(2, update(b"", attr(15, b"\x00\x02\x01") + ORIGIN_IGP),
                        families=(V4, (2, 1)))
    assert isinstance(ev, RouteUpdate) and not ev.announced and not ev.withdrawn


def test_mp_reach_and_unreach_for_ipv4_unicast():
    mp = attr(14, b"\x00\x01\x01\x04" + socket.inet_aton("198.18.251.7") + b"\x00"
              + nlri("198.19.3.0/26", "198.19.1.0/26"))
    mpu = attr(15, b"\x00\x01\x01" + nlri("198.19.8.0/24"))
    body = update(nlri("198.19.9.0/24"), basic(segs((SEQ, (65001,))), mpu, mp),
                  nlri("198.19.1.0/26"))
    ev = same_as_exabgp(2, body)
    assert ev.announced == ((PEER, ("198.19.1.0/26",)),
                            ("198.18.251.7", ("198.19.3.0/26", "198.19.1.0/26")))
    assert ev.withdrawn == ("198.19.9.0/24", "198.19.8.0/24")
    # ipv6 unicast not negotiated ends the session in ExaBGP; negotiated, it is decoded
    # (issue 15; tests/bgp/test_wire_contract_v6.py has real ones).
    mp6 = attr(14, b"\x00\x02\x01\x10" + bytes(16) + b"\x00" + b"\x40" + bytes(8))
    assert isinstance(same_as_exabgp(2, update(b"", basic(b"", mp6))), str)
    ev = same_as_exabgp(2, update(b"", basic(b"", mp6), nlri("198.19.1.0/26")),
                        families=(V4, (2, 1)))
    assert ev.announced == ((PEER, ("198.19.1.0/26",)), ("::", ("::/64",)))


def test_add_path_prefixes():
    with_ids = b"".join(i.to_bytes(4, "big") + prefix(p)
                        for i, p in enumerate(["198.19.1.0/26", "198.19.1.0/26", "198.19.2.0/24"]))
    ev = same_as_exabgp(2, update(b"", basic(b""), with_ids), addpath=True)
    assert ev.announced == ((PEER, ("198.19.1.0/26", "198.19.1.0/26", "198.19.2.0/24")),)


@pytest.mark.parametrize("body", [
    b"", b"\x00", b"\x00\x00\x00",                      # shorter than the two lengths
    b"\x00\x05\x00\x00",                                # withdrawn length past the end
    b"\x00\x00\x00\x09\x40\x01\x01\x00",                # attribute length past the end
    update(b"", basic(b""), b"\x21\x01\x02\x03\x04\x05"),   # /33
    update(b"", basic(b""), b"\x18\xc6\x13"),           # /24 with two bytes
    update(b"\x20\x01", basic(b"")),                    # withdrawn /32 truncated
    update(b"", basic(b"", attr(14, b"\x00\x01"))),     # MP_REACH too short
    update(b"", basic(b"", attr(15, b"\x00\x01\x01\x40"))),  # MP_UNREACH prefix truncated
    update(b"", basic(b"", attr(15, b"\x00\x01\x01"), attr(15, b"\x00\x01\x01"))),  # twice
    update(b"", basic(b"", attr(17, b"\x02\x02\x00\x00"))),  # AS4_PATH truncated
    update(b"", basic(b"", attr(9, b"\x01\x02\x03"))),  # ORIGINATOR_ID of 3 bytes
])
def test_what_ExaBGP_refuses_is_a_reason(body):
    assert isinstance(same_as_exabgp(2, body), str)


# ---------------------------------------------------------------- OPEN, NOTIFICATION

def open_body(asn: int, hold: int, rid: str, caps: bytes, extended: bool = False) -> bytes:
    param = b"\x02" + (len(caps).to_bytes(2, "big") if extended else bytes([len(caps)])) + caps
    opt = (b"\xff\xff" + len(param).to_bytes(2, "big") if extended else bytes([len(param)])) + param
    return b"\x04" + asn.to_bytes(2, "big") + hold.to_bytes(2, "big") + socket.inet_aton(rid) + opt


def cap(code: int, value: bytes) -> bytes:
    return bytes([code, len(value)]) + value


MP_V4 = cap(1, b"\x00\x01\x00\x01")


def test_open_four_byte_asn_and_graceful_restart():
    gr = cap(64, (0x8000 | 120).to_bytes(2, "big") + b"\x00\x01\x01\x80")
    body = open_body(23456, 90, "198.18.251.1", MP_V4 + cap(65, (4200000001).to_bytes(4, "big")) + gr)
    assert same_as_exabgp(1, body) == PeerOpen(PEER, 4200000001, 90, "198.18.251.1", 120)
    body = open_body(65001, 9, "10.0.0.1", cap(64, b"\x00\x78\x00\x02\x01\x00"))  # GR, ipv6 only
    assert same_as_exabgp(1, body) == PeerOpen(PEER, 65001, 9, "10.0.0.1", 120)  # issue 15
    body = open_body(65001, 9, "10.0.0.1", cap(64, b"\x00\x78\x00\x02\x02\x00"))  # multicast
    assert same_as_exabgp(1, body) == PeerOpen(PEER, 65001, 9, "10.0.0.1", None)
    body = open_body(65001, 0, "10.0.0.1", MP_V4 + gr, extended=True)  # RFC 9072
    assert same_as_exabgp(1, body) == PeerOpen(PEER, 65001, 0, "10.0.0.1", 120)
    assert isinstance(same_as_exabgp(1, body[:9]), str)
    assert isinstance(same_as_exabgp(1, b"\x03" + body[1:]), str)


@pytest.mark.parametrize("body, text", [
    (b"\x06\x02\x0bmaintenance", '6/2 Shutdown Communication: "maintenance"'),
    (b"\x06\x04", "6/4"),
    (b"\x06\x02\x00", "6/2 empty Shutdown Communication."),
    (b"\x06\x02\x09abc", "6/2 invalid Shutdown Communication (buffer underrun) length : 9 [0x616263]"),
    (b"\x02\x02\xfd\xe9", "2/2 0xFDE9"),
    (b"\x04\x00", "4/0"),
    (b"\x03", "0/0 peer sent a NOTIFICATION of 1 bytes, too short to carry a code"),
])
def test_notification_text(body, text):
    assert same_as_exabgp(3, body) == Notification(PEER, text)


# ---------------------------------------------------------------- through parse_line

def packet_line(category: int, body: bytes, direction: str = "receive", **neg) -> str:
    negotiated = {"message_size": 4096, "hold_time": 9, "asn4": True, "multisession": False,
                  "operational": False, "refresh": "normal", "families": ["ipv4 unicast"],
                  "nexthop": [], "add_path": {"send": [], "receive": []}}
    negotiated.update(neg)
    return json.dumps({"exabgp": "5.0.0", "type": {1: "open", 2: "update", 3: "notification"}
                       .get(category, "keepalive"), "neighbor": {
                           "address": {"local": LOCAL, "peer": PEER}, "direction": direction,
                           "message": {"category": category, "header": "0x" + "FF" * 16,
                                       "body": "0x" + body.hex().upper()},
                           "negotiated": negotiated}})


def test_parse_line_decodes_packet_lines():
    body = update(b"", basic(segs((SEQ, (65001, 65002)), width=2)), nlri("198.19.1.0/26"))
    assert parse_line(packet_line(2, body, asn4=False)) == RouteUpdate(
        PEER, Attributes((65001, 65002), 2), ((PEER, ("198.19.1.0/26",)),), ())
    # Without the negotiated member (api without `negotiated;`): asn4 assumed, like our config.
    line = json.loads(packet_line(2, update()))
    del line["neighbor"]["negotiated"]
    assert parse_line(json.dumps(line)) == EndOfRib(PEER, "ipv4 unicast")


@pytest.mark.parametrize("line", [
    packet_line(2, b"\x00\x00\x00"),
    packet_line(2, update(), direction="send"),
    packet_line(4, b""),
    packet_line(2, update(b"", attr(15, b"\x00\x02\x01")), families=["ipv4 unicast"]),
    packet_line(2, update(), asn4="yes"),
    packet_line(2, update(), families="ipv4 unicast"),
    packet_line(2, update()).replace('"body": "0x', '"body": "0xZ'),
    packet_line(2, update()).replace('"body": "0x', '"body": "'),
    packet_line(2, update()).replace('"category": 2', '"category": "2"'),
])
def test_bad_packet_lines_are_malformed(line):
    assert isinstance(parse_line(line), Malformed)


# ---------------------------------------------------------------- fuzzing

SESSIONS = st.builds(Session, asn4=st.booleans(),
                     families=st.sampled_from([None, frozenset({V4}), frozenset({V4, (2, 1)})]),
                     addpath=st.sampled_from([frozenset(), frozenset({V4})]),
                     extended_nexthop=st.booleans())


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 5), SESSIONS)
def test_random_bytes_never_raise(body, category, session):
    got = bgp_wire.decode(PEER, category, body, session)
    assert isinstance(got, str | RouteUpdate | EndOfRib | PeerOpen | Notification)
    assert not isinstance(parse_line(packet_line(category, body)), Exception)


def _mostly(valid, garbage, one_in: int = 10):
    """``valid``, and ``garbage`` about once in ``one_in`` draws."""
    return st.integers(0, one_in - 1).flatmap(lambda k: garbage if k == 0 else valid)


def _prefix_bytes():
    return _mostly(st.builds(lambda m, a: bytes([m]) + a.to_bytes(4, "big")[:(m + 7) // 8],
                             st.integers(0, 32), st.integers(0, 2**32 - 1)),
                   st.binary(min_size=1, max_size=6), one_in=40)


def _prefixes(max_size):
    return st.lists(_prefix_bytes(), max_size=max_size).map(b"".join)


def _prefix6_bytes():
    return _mostly(st.builds(lambda m, a: bytes([m]) + a.to_bytes(16, "big")[:(m + 7) // 8],
                             st.integers(0, 128), st.sampled_from([
                                 0, 0x20010002000019000000000000000040, 2**128 - 1])),
                   st.binary(min_size=1, max_size=18), one_in=40)


def _prefixes6(max_size):
    return st.lists(_prefix6_bytes(), max_size=max_size).map(b"".join)


# ipv6 unicast next hops (issue 15): global, global + link-local (RFC 2545), link-local +
# global, two link-locals, zeros.
_G6, _LL6 = (socket.inet_pton(socket.AF_INET6, a) for a in ("2001:2:0:fb::1", "fe80::1"))
_NH6 = [_G6, _G6 + _LL6, _LL6 + _G6, _LL6 + _LL6, _LL6, bytes(32)]


def _path(width):
    seg = st.tuples(_mostly(st.sampled_from([2, 2, 2, 1, 3, 4]), st.sampled_from([0, 5, 255])),
                    st.lists(st.sampled_from([1, 65001, 23456, 4200000001 % 2**(8 * width)]),
                             max_size=4))
    return st.lists(seg, max_size=3).map(lambda ss: segs(*ss, width=width))


def _asn4_path():
    return st.booleans().flatmap(lambda w: _path(4 if w else 2))


ATTR_VALUES = {
    1: _mostly(st.sampled_from([b"\x00", b"\x01", b"\x02"]),
               st.sampled_from([b"\x09", b"\x00\x00", b""])),
    2: _mostly(_asn4_path(), st.binary(max_size=7)),
    3: _mostly(st.just(socket.inet_aton(PEER)), st.sampled_from([bytes(16), b"\x01\x02\x03", b""])),
    4: _mostly(st.just(b"\x00\x00\x00\x05"), st.sampled_from([b"\x00\x05", b""])),
    5: _mostly(st.just(b"\x00\x00\x01\x2c"), st.sampled_from([b"\x01\x2c\x00\x00\x00", b""])),
    6: st.sampled_from([b"", b"", b"\x01"]),
    7: st.sampled_from([b"\x5b\xa0\x01\x02\x03\x04", b"\xfd\xe9\x01\x02\x03\x04",
                        b"\x00\x00\x5b\xa0\x01\x02\x03\x04", b"\x00\x00\xfd\xe9\x01\x02\x03\x04",
                        b"\x00"]),
    8: _mostly(st.integers(1, 3).map(lambda k: bytes(4 * k)), st.binary(max_size=9)),
    9: _mostly(st.just(b"\x01\x02\x03\x04"), st.just(b"\x01")),
    10: _mostly(st.just(b"\x01\x02\x03\x04"), st.just(b"\x01\x02")),
    14: _mostly(
        st.builds(lambda nh, p: b"\x00\x01\x01" + bytes([len(nh)]) + nh + b"\x00" + p,
                  st.sampled_from([socket.inet_aton("198.18.251.7"), socket.inet_aton(PEER),
                                   bytes(16), bytes(32), b"\x01\x02"]),
                  _prefixes(3))
        | st.builds(lambda nh, p: b"\x00\x02\x01" + bytes([len(nh)]) + nh + b"\x00" + p,
                    st.sampled_from(_NH6), _prefixes6(3)),
        st.sampled_from([b"\x00\x02\x01\x10" + bytes(16) + b"\x00\x40" + bytes(8), b"\x00\x01"]),
        one_in=4),
    15: _mostly(_prefixes(3).map(lambda p: b"\x00\x01\x01" + p)
                | _prefixes6(3).map(lambda p: b"\x00\x02\x01" + p),
                st.sampled_from([b"\x00\x02\x01", b"\x00\x02\x01\x40" + bytes(8), b"\x00"]),
                one_in=4),
    17: _mostly(_path(4), st.binary(max_size=6)),
    18: st.sampled_from([b"\x00\x00\x5b\xa0\x01\x02\x03\x04", b"\xfa\x56\xea\x01\x01\x02\x03\x04",
                         b"\x01"]),
    22: st.binary(max_size=7),
    26: st.binary(max_size=4),
    32: _mostly(st.just(bytes(12)), st.binary(max_size=13)),
    99: st.binary(max_size=3),
}
COMMON = [1, 2, 3, 4, 5, 7, 17, 14, 15, 8]


@st.composite
def attribute(draw):
    code = draw(_mostly(st.sampled_from(COMMON), st.sampled_from(sorted(ATTR_VALUES)), one_in=3))
    value = draw(ATTR_VALUES[code])
    flag = FLAGS.get(code, 0xC0)
    flag = draw(_mostly(st.just(flag), st.sampled_from([flag | 0x20, flag ^ 0x40, flag ^ 0x80])
                        | st.integers(0, 255), one_in=12))
    raw = attr(code, value, flag=flag, ext=draw(st.booleans()))
    if draw(st.integers(0, 30)) == 0:
        raw = raw[:-1]  # now and then an attribute length past the end
    return raw


@st.composite
def update_body(draw):
    withdrawn = draw(_prefixes(3))
    attrs = b"".join(draw(st.lists(attribute(), max_size=4)))
    if draw(st.integers(0, 3)):  # usually a sound ORIGIN, AS_PATH, NEXT_HOP in front
        asn4 = draw(st.booleans())
        attrs = ORIGIN_IGP + attr(2, draw(_path(4 if asn4 else 2))) + NH + attrs
    announced = draw(_prefixes(4))
    body = update(withdrawn, attrs, announced)
    return body[:-1] if draw(st.integers(0, 30)) == 0 else body


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(update_body(), st.booleans(), st.sampled_from([(V4,), (V4, (2, 1))]), st.booleans(),
       st.booleans())
def test_fuzzed_updates_decode_as_ExaBGP_parses_them(body, asn4, families, addpath, nexthop):
    same_as_exabgp(2, body, asn4=asn4, families=families, addpath=addpath, nexthop=nexthop)


CAPABILITY = st.one_of(
    st.builds(lambda t, fams: cap(64, t.to_bytes(2, "big") + b"".join(fams)),
              st.integers(0, 0xFFFF),
              st.lists(st.sampled_from([b"\x00\x01\x01\x80", b"\x00\x01\x01\x00",
                                        b"\x00\x02\x01\x00", b"\x00\x01"]), max_size=3)),
    st.builds(lambda a: cap(65, a), st.sampled_from([(65001).to_bytes(4, "big"),
                                                     (4200000001).to_bytes(4, "big"), b"\x01"])),
    st.builds(lambda v: cap(200, v), st.binary(max_size=3)),
)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 0xFFFF), st.lists(CAPABILITY, max_size=4), st.booleans(),
       st.integers(0, 40))
def test_fuzzed_opens_decode_as_ExaBGP_parses_them(asn, caps, extended, cut):
    body = open_body(asn, 90, "198.18.251.1", b"".join(caps), extended=extended)
    same_as_exabgp(1, body[:-cut] if cut < 5 else body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40), st.sampled_from([b"", b"\x06\x02", b"\x06\x04", b"\x02\x02"]))
def test_fuzzed_notifications_decode_as_ExaBGP_parses_them(data, head):
    same_as_exabgp(3, head + data)


def test_family_tables_are_ExaBGPs():
    from exabgp.protocol.family import Family

    for afi in (0, 1, 2, 3, 25, 16388, 0xFFFF):
        for safi in range(256):
            assert bgp_wire.family_name(afi, safi) == f"{AFI.create(afi)} {SAFI.create(safi)}"
    size = {(int(a), int(s)): tuple(lengths) for (a, s), (lengths, _) in Family.size.items()}
    assert size == bgp_wire._MP_NH_LENGTHS
    assert {(int(a), int(s)): rd for (a, s), (_, rd) in Family.size.items() if rd} == bgp_wire._MP_RD
