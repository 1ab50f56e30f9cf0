"""The ExaBGP launcher's validate-only UPDATE decoding (bgpd/bgp/exabgp_launch.py) against
ExaBGP's own decoder, in this process (ExaBGP is installed in our venv): the same
NOTIFICATION for every malformed body, the same attributes for every good one, no NLRI
objects. Unit tests: no daemons."""

from __future__ import annotations

import random
import struct

import pytest

from bgpd.bgp.exabgp_config import SpeakerConfig
from bgpd.bgp.exabgp_launch import install_validate_only, ipv4_nlri_ok
from bgpd.bgp.speaker import LAUNCHER, exabgp_argv, nlri_mode

exabgp = pytest.importorskip("exabgp")


@pytest.fixture
def quiet_exabgp(monkeypatch):
    """ExaBGP's logger is only set up by its main(): its debug calls would fail here."""
    from exabgp.logger import log

    monkeypatch.setattr(log, "debug", lambda *a, **k: None)


@pytest.fixture
def decoders(quiet_exabgp, monkeypatch):
    """(ExaBGP's decoder, the launcher's); the patch is undone after the test."""
    from exabgp.bgp.message.direction import Direction
    from exabgp.bgp.message.open.capability.negotiated import Negotiated
    from exabgp.bgp.message.update import Update
    from exabgp.bgp.neighbor import Neighbor
    from exabgp.protocol.family import AFI, SAFI

    monkeypatch.setattr(Update, "unpack_message", Update.__dict__["unpack_message"])
    full = Update.unpack_message
    assert install_validate_only()
    fast = Update.unpack_message
    negotiated = Negotiated(Neighbor())
    negotiated.asn4 = True
    negotiated.families = [(AFI.ipv4, SAFI.unicast)]
    return (lambda body: full(body, Direction.IN, negotiated),
            lambda body: fast(body, Direction.IN, negotiated))


def outcome(decode, body):
    from exabgp.bgp.message.notification import Notify

    try:
        msg = decode(body)
    except Notify as exc:
        return ("notify", exc.code, exc.subcode, str(exc))
    return ("ok", type(msg).__name__, sorted((k, _value(v)) for k, v in msg.attributes.items()))


def _value(attribute) -> str:
    text = repr(attribute)  # a marker such as TreatAsWithdraw has only the default repr
    return type(attribute).__name__ if " at 0x" in text else text


def nlri(*prefixes: tuple[str, int]) -> bytes:
    out = b""
    for addr, length in prefixes:
        packed = bytes(int(o) for o in addr.split("."))
        out += bytes([length]) + packed[:(length + 7) // 8]
    return out


ORIGIN = bytes([0x40, 1, 1, 0])
AS_PATH = bytes([0x40, 2, 6, 2, 1]) + struct.pack("!I", 65001)
NEXT_HOP = bytes([0x40, 3, 4, 198, 18, 9, 1])


def update(withdrawn: bytes = b"", attrs: bytes = b"", announced: bytes = b"") -> bytes:
    return struct.pack("!H", len(withdrawn)) + withdrawn + struct.pack("!H", len(attrs)) \
        + attrs + announced


def test_nlri_check_agrees_with_exabgp_on_random_bytes(quiet_exabgp):
    from exabgp.bgp.message.action import Action
    from exabgp.bgp.message.notification import Notify
    from exabgp.bgp.message.update.nlri import NLRI
    from exabgp.protocol.family import AFI, SAFI

    def exabgp_accepts(data: bytes) -> bool:
        try:
            while data:
                _, data = NLRI.unpack_nlri(AFI.ipv4, SAFI.unicast, data, Action.ANNOUNCE,
                                           False)
        except Notify:
            return False
        return True

    rnd = random.Random(17)
    for _ in range(5000):
        data = bytes(rnd.randrange(256) if rnd.random() < 0.3 else rnd.randrange(34)
                     for _ in range(rnd.randrange(12)))
        assert ipv4_nlri_ok(data) == exabgp_accepts(data), data


def test_good_update_keeps_attributes_and_builds_no_nlri(decoders):
    full, fast = decoders
    body = update(nlri(("198.19.0.9", 32)), ORIGIN + AS_PATH + NEXT_HOP,
                  nlri(("198.19.0.1", 32), ("198.19.1.0", 26), ("0.0.0.0", 0)))
    assert outcome(fast, body) == outcome(full, body)
    assert len(full(body).nlris) == 4
    assert fast(body).nlris == []


@pytest.mark.parametrize("body", [
    update(announced=bytes([33, 198, 19, 0, 1, 0]), attrs=ORIGIN + AS_PATH + NEXT_HOP),
    update(announced=bytes([32, 198, 19]), attrs=ORIGIN + AS_PATH + NEXT_HOP),
    update(withdrawn=bytes([24, 198, 19])),
    update(withdrawn=bytes([40]) + bytes(5)),
    b"\x00\x05\x18",  # withdrawn length past the body
    b"\x00",  # shorter than an UPDATE
], ids=["mask-33", "short-prefix", "short-withdraw", "withdraw-mask-40", "withdrawn-length", "truncated"])
def test_malformed_update_gets_exabgps_own_notification(decoders, body):
    full, fast = decoders
    assert outcome(full, body)[0] == "notify"
    assert outcome(fast, body) == outcome(full, body)


def test_treat_as_withdraw_attributes_as_exabgp(decoders):
    """RFC 7606: a malformed AS_PATH keeps the session; ExaBGP marks the attributes (our
    wire decoder makes the withdrawals from the raw body)."""
    full, fast = decoders
    body = update(announced=nlri(("198.19.0.1", 32)),
                  attrs=ORIGIN + bytes([0x40, 2, 9, 2, 1]) + NEXT_HOP)
    assert outcome(full, body)[0] == "ok"
    assert outcome(fast, body) == outcome(full, body)


def test_end_of_rib_and_withdraw_only_as_exabgp(decoders):
    full, fast = decoders
    for body in (update(), update(withdrawn=nlri(("198.19.0.1", 32)))):
        assert outcome(fast, body) == outcome(full, body)
    assert type(fast(update())).__name__ == "EOR"


def test_nlri_mode_and_argv():
    cfg = SpeakerConfig(64512, "198.18.9.10", "198.18.9.10")
    assert nlri_mode(cfg) == "validate"
    from dataclasses import replace

    assert nlri_mode(replace(cfg, api_receive=("packets", "parsed"))) == "decode"
    assert nlri_mode(replace(cfg, adj_rib_in=True)) == "decode"
    assert exabgp_argv("/v/bin/exabgp", "/v/bin/python3", "/r/x.conf") == \
        ["/v/bin/python3", LAUNCHER, "/r/x.conf"]
    assert exabgp_argv("/v/bin/exabgp", "", "/r/x.conf") == ["/v/bin/exabgp", "/r/x.conf"]
