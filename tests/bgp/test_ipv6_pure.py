"""Unit tests for ipv6 unicast in the BGP room (issue 15): the ExaBGP config and commands we
generate, the import policy per family, the core's per-family announcements, End-of-RIB
and max-prefix, and the wire decoder on hand-built MP_REACH/MP_UNREACH bodies (the real
ones are pinned by tests/bgp/test_wire_contract_v6.py)."""

from __future__ import annotations

import socket

import pytest

from bgpd.bgp import exabgp_commands as cmds
from bgpd.bgp import wire
from bgpd.bgp.core import SpeakerCore
from bgpd.bgp.events import Attributes, EndOfRib, PeerOpen, PeerState, RouteUpdate
from bgpd.bgp.exabgp_config import (
    PrefixFilter,
    SpeakerConfig,
    SpeakerConfigError,
    SpeakerPeer,
    changed_peers,
    environment,
    render,
)
from bgpd.bgp.exabgp_lines import parse_line
from bgpd.bgp.import_policy import ImportPolicy

ME4, ME6 = "198.18.1.10", "2001:2:0:1::10"
P4, P6 = "198.18.1.1", "2001:2:0:1::1"
POOL4, POOL6 = "198.19.0.0/16", "2001:2:0:1900::/56"
OWN4, OWN6 = "198.19.1.0/26", "2001:2:0:1900::/122"
A = Attributes(as_path=(65001,), as_path_len=1)


def cfg(*peers: SpeakerPeer, v6: str | None = ME6) -> SpeakerConfig:
    return SpeakerConfig(64512, ME4, ME4, peers, local_address6=v6)


# ------------------------------------------------------------------ ExaBGP config

def test_render_families_and_local_address_per_session():
    text = render(cfg(SpeakerPeer(P6, 65001), SpeakerPeer(P4, 65002),
                      SpeakerPeer("198.18.1.2", 65003, families=("ipv4 unicast", "ipv6 unicast"))))
    blocks = {b.split(" {", 1)[0].removeprefix("neighbor "): b
              for b in text.split("\nneighbor ")[1:]}
    blocks = {k.split()[0]: v for k, v in blocks.items()}
    assert "local-address 2001:2:0:1::10;" in blocks[P6]
    assert "family {\n        ipv6 unicast;\n    }" in blocks[P6]
    assert "local-address 198.18.1.10;" in blocks[P4]
    assert "family {\n        ipv4 unicast;\n    }" in blocks[P4]
    assert "family {\n        ipv4 unicast;\n        ipv6 unicast;\n    }" in blocks["198.18.1.2"]
    # IPv4 peers first, then IPv6 ones.
    assert text.index(f"neighbor {P4} ") < text.index(f"neighbor {P6} ")


def test_environment_binds_both_addresses():
    assert environment(cfg(SpeakerPeer(P6, 65001)), "/x")["exabgp.tcp.bind"] == f"{ME4} {ME6}"
    assert environment(cfg(SpeakerPeer(P4, 65001), v6=None), "/x")["exabgp.tcp.bind"] == ME4
    assert environment(cfg(SpeakerPeer(P6, 65001)), "/x", listen=False)["exabgp.tcp.bind"] == ""


@pytest.mark.parametrize(("kw", "peers", "needle"), [
    ({"v6": None}, (SpeakerPeer(P6, 65001),), "needs local_address6"),
    ({"v6": None}, (SpeakerPeer(P4, 65001, families=("ipv6 unicast",)),), "needs local_address6"),
    ({"v6": "fe80::1"}, (), "not a global unicast IPv6 address"),
    ({"v6": "198.18.1.9"}, (), "not an IPv6 address"),
    ({}, (SpeakerPeer(ME6, 65001),), "our own local address"),
])
def test_config_refuses(kw, peers, needle):
    with pytest.raises(SpeakerConfigError, match=needle):
        cfg(*peers, **kw)


def test_peer_families_validated():
    assert SpeakerPeer(P6, 1).families == ("ipv6 unicast",)
    assert SpeakerPeer(P4, 1).families == ("ipv4 unicast",)
    with pytest.raises(SpeakerConfigError, match="ipv4 unicast over an IPv6 session"):
        SpeakerPeer(P6, 1, families=("ipv4 unicast", "ipv6 unicast"))
    with pytest.raises(SpeakerConfigError, match="expected one or both"):
        SpeakerPeer(P4, 1, families=("ipv6 multicast",))
    with pytest.raises(SpeakerConfigError, match="not an IPv4 or IPv6 address"):
        SpeakerPeer("2001:2::zz", 1)
    # Canonical form (RFC 5952), as ExaBGP prints the peer in every line.
    assert SpeakerPeer("2001:0002:0000:0001:0000:0000:0000:0001", 1).address == P6
    assert PrefixFilter("::/0").network == "::/0"
    with pytest.raises(SpeakerConfigError, match="between 48 and 128"):
        PrefixFilter("2001:2::/48", le=130)


def test_changing_a_peers_families_re_establishes_it():
    old = cfg(SpeakerPeer(P4, 65001))
    new = cfg(SpeakerPeer(P4, 65001, families=("ipv4 unicast", "ipv6 unicast")))
    assert changed_peers(old, new) == (set(), set(), {P4})


# ------------------------------------------------------------------ commands

def test_commands_ipv6_lines_with_our_global_next_hop():
    lines = cmds.announce(["2001:2:0:1900:0::40/122", OWN4, OWN6], next_hop6=ME6, size=2)
    assert lines == [f"announce attributes next-hop self nlri {OWN4}",
                     f"announce attributes next-hop {ME6} nlri {OWN6} 2001:2:0:1900::40/122"]
    assert cmds.withdraw([OWN6], neighbor=P6, next_hop6=ME6) == [
        f"neighbor {P6} withdraw attributes next-hop {ME6} nlri {OWN6}"]
    assert cmds.eor(P6, "ipv6 unicast") == f"neighbor {P6} announce eor ipv6 unicast"
    with pytest.raises(cmds.CommandError, match="need our global IPv6 next hop"):
        cmds.announce([OWN6])
    with pytest.raises(cmds.CommandError, match="not a global unicast"):
        cmds.announce([OWN6], next_hop6="fe80::1")
    with pytest.raises(cmds.CommandError, match="not an IPv4 or IPv6 prefix"):
        cmds.announce(["2001:2:0:1900::1/122"], next_hop6=ME6)
    with pytest.raises(cmds.CommandError, match="End-of-RIB family"):
        cmds.eor(P6, "ipv6 flow")


# ------------------------------------------------------------------ import policy

def policy(**kw) -> ImportPolicy:
    return ImportPolicy(64512, (POOL4, POOL6), frozenset({OWN4, OWN6}),
                        frozenset({ME4, ME6}), **kw)


@pytest.mark.parametrize(("prefix", "reason"), [
    ("2001:2:0:1900::40/122", None),
    ("2001:2:0:1901::/64", None),
    ("2001:2:0:1900::5/128", "own-block"),       # a /128 inside our block
    (OWN6, "own-block"),                          # our own /122
    ("2001:2:0:1900::/120", None),                # covers our block: not inside it
    ("2001:2:0:fe00::/64", "outside-pools"),
    ("::/0", "outside-pools"),
    ("2001:2:0:1900::41/122", "malformed-prefix"),  # host bits
    ("2001:2:0:1900::/129", "malformed-prefix"),
    ("198.19.1.5/32", "own-block"),               # IPv4 unchanged
    ("198.19.2.0/26", None),
])
def test_policy_per_family(prefix, reason):
    p = policy()
    assert p.check_prefix("x", prefix) == reason
    ok, bad = p.split_prefixes("x", [prefix])
    assert (ok, bad) == (([prefix], []) if reason is None else ([], [(prefix, reason)]))


def test_policy_ipv6_never_matches_ipv4_ranges():
    # ::c613:100/120 has the value of 198.19.1.0 in its low bits: IPv4 blocks never match.
    p = ImportPolicy(64512, (POOL4,), frozenset({OWN4}))
    assert p.check_prefix("x", "::c613:100/120") == "outside-pools"
    assert p.check_prefix("x", "::/0") == "outside-pools"


def test_policy_ipv6_filters_and_next_hops():
    p = policy(allowed={P6: (PrefixFilter("::/0"), PrefixFilter("2001:2:0:fe00::/56", le=64))})
    assert p.check_prefix(P6, "::/0") is None
    assert p.check_prefix(P6, "2001:2:0:fe00::/64") is None
    assert p.check_prefix(P6, "2001:2:0:fe00::/65") == "outside-pools"
    assert p.check_prefix("other", "::/0") == "outside-pools"
    assert p.check_prefix(P6, "0.0.0.0/0") == "outside-pools"  # an IPv6 filter only
    for nh in ("fe80::1", "::", "::1", "ff02::1", "::ffff:198.18.1.1", "2001:2::zz"):
        assert p.check_path(nh, ()) == "martian-nexthop", nh
    assert p.check_path(ME6, ()) == "own-nexthop"
    assert p.check_path(P6, (65001,)) is None
    assert p.check_path(P6, (65001, 64512)) == "as-loop"


# ------------------------------------------------------------------ core

def core(*peers: SpeakerPeer, max_prefix_hold_down: float | None = None) -> SpeakerCore:
    return SpeakerCore(cfg(*peers), policy(), max_prefix_hold_down)


def test_core_announces_each_family_to_the_peers_that_carry_it():
    c = core(SpeakerPeer(P4, 65001), SpeakerPeer(P6, 65002))
    c.set_desired([OWN4, OWN6], complete=True)
    assert c.take_commands() == [f"announce attributes next-hop self nlri {OWN4}",
                                 f"announce attributes next-hop {ME6} nlri {OWN6}"]
    c.apply(PeerState(P6, "up"), 0)
    c.apply(PeerState(P4, "up"), 0)
    assert c.take_commands() == [
        f"neighbor {P6} announce attributes next-hop {ME6} nlri {OWN6}",
        f"neighbor {P6} announce eor ipv6 unicast",
        f"neighbor {P4} announce attributes next-hop self nlri {OWN4}",
        f"neighbor {P4} announce eor ipv4 unicast"]
    assert {s.address: s.announced for s in c.status(0)} == {P4: 1, P6: 1}


def test_core_sends_no_family_no_peer_carries():
    c = core(SpeakerPeer(P4, 65001))
    c.set_desired([OWN4, OWN6])
    assert c.take_commands() == [f"announce attributes next-hop self nlri {OWN4}"]
    both = SpeakerPeer(P4, 65001, families=("ipv4 unicast", "ipv6 unicast"))
    c = core(both)
    c.set_desired([OWN4, OWN6], complete=True)
    c.apply(PeerState(P4, "up"), 0)
    assert c.take_commands()[-4:] == [
        f"neighbor {P4} announce attributes next-hop self nlri {OWN4}",
        f"neighbor {P4} announce attributes next-hop {ME6} nlri {OWN6}",
        f"neighbor {P4} announce eor ipv4 unicast",
        f"neighbor {P4} announce eor ipv6 unicast"]


def test_core_learns_ipv6_and_counts_rejections():
    c = core(SpeakerPeer(P6, 65001))
    c.apply(PeerState(P6, "up"), 0)
    c.apply(RouteUpdate(P6, A, ((P6, ("2001:2:0:1900::40/122", "2001:2:0:1900::5/128",
                                     "2001:2:0:fe00::/64")),), ()), 0)
    c.apply(RouteUpdate(P6, A, (("fe80::1", ("2001:2:0:1900::80/122",)),), ()), 0)
    assert set(c.routes()) == {"2001:2:0:1900::40/122"}
    assert c.routes()["2001:2:0:1900::40/122"].nexthops == (P6,)
    assert c.peer_counters()[P6].rejected == {"own-block": 1, "outside-pools": 1,
                                              "martian-nexthop": 1}
    c.apply(RouteUpdate(P6, A, (), ("2001:2:0:1900::40/122",)), 0)
    assert c.routes() == {}


def test_core_end_of_rib_sweeps_stale_routes_per_family():
    both = SpeakerPeer(P4, 65001, families=("ipv4 unicast", "ipv6 unicast"))
    c = core(both)
    c.apply(PeerOpen(P4, 65001, 9, P4, graceful_restart=120), 0)
    c.apply(PeerState(P4, "up"), 0)
    c.apply(RouteUpdate(P4, A, ((P4, ("198.19.2.0/26",)), (P6, ("2001:2:0:1900::40/122",))),
                        ()), 0)
    c.apply(PeerState(P4, "down", "closing connection"), 1)  # TCP loss: GR holds both
    c.apply(PeerState(P4, "up"), 2)
    c.apply(EndOfRib(P4, "ipv4 unicast"), 3)
    # The IPv4 EoR ends only the IPv4 stale routes: the IPv6 one waits for its own EoR.
    assert set(c.routes()) == {"2001:2:0:1900::40/122"}
    assert not c.status(3)[0].eor_received
    c.apply(EndOfRib(P4, "ipv6 unicast"), 4)
    assert c.routes() == {}
    assert c.status(4)[0].eor_received


def test_core_max_prefix_is_per_family():
    both = SpeakerPeer(P4, 65001, families=("ipv4 unicast", "ipv6 unicast"), max_prefix=2)
    c = core(both)
    c.apply(PeerState(P4, "up"), 0)
    c.apply(RouteUpdate(P4, A, ((P4, ("198.19.2.0/26", "198.19.3.0/26")),
                                (P6, ("2001:2:0:1900::40/122", "2001:2:0:1900::80/122"))),
                        ()), 0)
    assert len(c.routes()) == 4  # two per family: within the limit of each
    c.apply(RouteUpdate(P4, A, ((P6, ("2001:2:0:1900::c0/122",)),), ()), 1)
    st = c.status(1)[0]
    assert st.state == "max-prefix" and c.routes() == {}
    assert "max-prefix 2 exceeded (3 ipv6 unicast accepted)" in st.last_error


# ------------------------------------------------------------------ wire

def _v6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


def _nlri6(*prefixes: str) -> bytes:
    out = b""
    for p in prefixes:
        addr, _, n = p.partition("/")
        m = int(n)
        out += bytes([m]) + _v6(addr)[:(m + 7) // 8]
    return out


def _update(*attrs: bytes) -> bytes:
    a = b"".join(attrs)
    return b"\0\0" + len(a).to_bytes(2, "big") + a


def _attr(flags: int, code: int, value: bytes) -> bytes:
    return bytes([flags | 0x10, code]) + len(value).to_bytes(2, "big") + value


ORIGIN, PATH = _attr(0x40, 1, b"\0"), _attr(0x40, 2, b"\x02\x01\x00\x00\xfd\xe9")


@pytest.mark.parametrize("link_local", [False, True])
def test_wire_mp_reach_ipv6_keeps_the_global_next_hop(link_local):
    nh = _v6(P6) + (_v6("fe80::1") if link_local else b"")
    mp = b"\x00\x02\x01" + bytes([len(nh)]) + nh + b"\0" + _nlri6(
        "2001:2:0:1900::40/122", "2001:2:0:1901::/64", "::/0", "2001:2:0:1900::c5/128")
    ev = wire.decode_update(P6, _update(ORIGIN, PATH, _attr(0x80, 14, mp)))
    assert ev == RouteUpdate(P6, A, ((P6, ("2001:2:0:1900::40/122", "2001:2:0:1901::/64",
                                           "::/0", "2001:2:0:1900::c5/128")),), ())


def test_wire_mp_unreach_ipv6_and_end_of_rib():
    un = b"\x00\x02\x01" + _nlri6("2001:2:0:1900::40/122")
    assert wire.decode_update(P6, _update(_attr(0x80, 15, un))) == RouteUpdate(
        P6, Attributes(), (), ("2001:2:0:1900::40/122",))
    assert wire.decode_update(P6, _update(_attr(0x80, 15, b"\x00\x02\x01"))) == \
        EndOfRib(P6, "ipv6 unicast")


def test_wire_ipv6_bad_nlri_is_a_reason():
    nh = _v6(P6)
    for bad, why in ((bytes([129]) + b"\0" * 17, "invalid prefix length 129"),
                     (bytes([64]) + b"\x20\x01", "ipv6 NLRI truncated")):
        mp = b"\x00\x02\x01" + bytes([16]) + nh + b"\0" + bad
        got = wire.decode_update(P6, _update(ORIGIN, PATH, _attr(0x80, 14, mp)))
        assert isinstance(got, str) and why in got, got


def test_open_graceful_restart_for_ipv6_only():
    caps = bytes([64, 6, 0x00, 120, 0x00, 0x02, 0x01, 0x80])   # ipv6/unicast only
    opt = bytes([2, len(caps)]) + caps
    body = b"\x04" + (65001).to_bytes(2, "big") + (9).to_bytes(2, "big") + \
        socket.inet_aton("198.18.1.1") + bytes([len(opt)]) + opt
    assert wire.decode_open(P6, body) == PeerOpen(P6, 65001, 9, "198.18.1.1", 120)


def test_parsed_form_drops_link_local_copies_only():
    def line(groups):
        import json
        return json.dumps({"type": "update", "neighbor": {
            "address": {"peer": P6}, "message": {"update": {
                "attribute": {"as-path": {"0": {"element": "as-sequence", "value": [65001]}}},
                "announce": {"ipv6 unicast": {nh: [{"nlri": p} for p in ps]
                                              for nh, ps in groups}}}}}})
    both = line([(P6, ["2001:2:0:1900::40/122"]), ("fe80::1", ["2001:2:0:1900::40/122"])])
    assert parse_line(both).announced == ((P6, ("2001:2:0:1900::40/122",)),)
    only_ll = line([("fe80::1", ["2001:2:0:1900::40/122"])])
    assert parse_line(only_ll).announced == (("fe80::1", ("2001:2:0:1900::40/122",)),)
