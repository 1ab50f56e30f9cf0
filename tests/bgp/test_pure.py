"""Unit tests: config generation, commands, import policy, RIB, core (no root, no daemons)."""

from __future__ import annotations

import pytest

from bgpd.bgp import exabgp_commands as cmds
from bgpd.bgp.core import SpeakerCore, Teardown
from bgpd.bgp.events import (
    Attributes,
    EndOfRib,
    Malformed,
    PeerOpen,
    PeerState,
    RouteUpdate,
)
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
from bgpd.bgp.rib import Rib, Route

A = Attributes(as_path=(65001,), as_path_len=1)
LONG = Attributes(as_path=(65002, 65003), as_path_len=2)


def cfg(*peers: SpeakerPeer) -> SpeakerConfig:
    return SpeakerConfig(64512, "198.18.1.10", "198.18.1.10", peers,
                         api_argv=("/usr/bin/python3", "/x/bgpd/bgp/exabgp_relay.py", "/run/x/api.sock"))


# -- config ------------------------------------------------------------------
def test_render_has_every_required_clause():
    text = render(cfg(SpeakerPeer("198.18.1.1", 65001, hold_time=9, password="s3cret",
                                 passive=True, multihop=2, graceful_restart=90)))
    assert "parsed;" not in text  # packets only: ExaBGP would JSON-encode every prefix too
    for clause in ("neighbor 198.18.1.1 {", "local-as 64512;", "peer-as 65001;",
                   "router-id 198.18.1.10;", "hold-time 9;", 'md5-password "s3cret";',
                   "passive true;", "outgoing-ttl 2;", "graceful-restart 90;",
                   "manual-eor true;", "ipv4 unicast;", "encoder json;", "neighbor-changes;",
                   "packets;", "update;", "open;", "notification;", "negotiated;",
                   "processes [ noderouter-api ];",
                   "run /usr/bin/python3 /x/bgpd/bgp/exabgp_relay.py /run/x/api.sock;"):
        assert clause in text, clause


def test_render_api_receive_forms():
    both = render(SpeakerConfig(64512, "198.18.1.10", "198.18.1.10",
                                (SpeakerPeer("198.18.1.1", 65001),), api_receive=("parsed", "packets")))
    assert "            packets;\n            parsed;\n            update;" in both
    for bad in ((), ("json",), ("packets", "consolidate")):
        with pytest.raises(SpeakerConfigError):
            SpeakerConfig(64512, "198.18.1.10", "198.18.1.10", api_receive=bad)


def test_render_without_gr_and_md5():
    text = render(cfg(SpeakerPeer("198.18.1.1", 65001, graceful_restart=None)))
    assert "graceful-restart" not in text and "md5" not in text


@pytest.mark.parametrize("bad", ['a"b', "a b", "x;y", "x\nneighbor", "{", "a#b", "", "x" * 81])
def test_password_injection_refused(bad):
    with pytest.raises(SpeakerConfigError):
        SpeakerPeer("198.18.1.1", 65001, password=bad)


def test_config_validation():
    with pytest.raises(SpeakerConfigError):
        SpeakerPeer("198.18.1.1\n", 65001)
    with pytest.raises(SpeakerConfigError):
        SpeakerPeer("198.18.1.1", 0)
    with pytest.raises(SpeakerConfigError):
        cfg(SpeakerPeer("198.18.1.1", 1), SpeakerPeer("198.18.1.1", 2))
    with pytest.raises(SpeakerConfigError):
        SpeakerConfig(1, "198.18.1.10", "198.18.1.10", api_argv=("run; x",))


def test_environment_keys():
    env = environment(cfg(), "/run/x")
    assert env["exabgp.api.ack"] == "true" and env["exabgp.daemon.user"] == "root"
    assert env["exabgp.tcp.bind"] == "198.18.1.10" and env["exabgp.daemon.daemonize"] == "false"


def test_exabgp_idle_poll_is_no_shorter_than_50_ms():
    """Issue 17: ExaBGP's reactor sleeps speed/100 s in poll() when idle; at 0.5 (5 ms) it
    alone used 3.7 % of a core with nothing to do."""
    assert float(environment(cfg(), "/run/x")["exabgp.reactor.speed"]) / 100 >= 0.05


def test_changed_peers():
    old = cfg(SpeakerPeer("198.18.1.1", 65001), SpeakerPeer("198.18.1.2", 65002))
    new = cfg(SpeakerPeer("198.18.1.1", 65001), SpeakerPeer("198.18.1.2", 65009),
              SpeakerPeer("198.18.1.3", 65003))
    assert changed_peers(old, new) == ({"198.18.1.3"}, set(), {"198.18.1.2"})


# -- commands ------------------------------------------------------------------
def test_commands_batch_and_validate():
    lines = cmds.announce([f"198.19.{i}.0/24" for i in range(5)], size=2)
    assert lines[0] == "announce attributes next-hop self nlri 198.19.0.0/24 198.19.1.0/24"
    assert len(lines) == 3
    assert cmds.withdraw(["198.19.0.0/24"], neighbor="198.18.1.1") == [
        "neighbor 198.18.1.1 withdraw attributes next-hop self nlri 198.19.0.0/24"]
    assert cmds.eor("198.18.1.1") == "neighbor 198.18.1.1 announce eor ipv4 unicast"
    for bad in ("198.19.0.0/24\nshutdown", "198.19.0.1/24", "x"):
        with pytest.raises(cmds.CommandError):
            cmds.announce([bad])
    with pytest.raises(cmds.CommandError):
        cmds.eor("198.18.1.1 teardown")


# -- policy ------------------------------------------------------------------
POLICY = ImportPolicy(64512, ("198.19.0.0/16",), frozenset({"198.19.1.0/26"}),
                      frozenset({"198.18.1.10"}),
                      {"198.18.1.1": (PrefixFilter("0.0.0.0/0"), PrefixFilter.parse("203.0.113.0/24 le 28"))})


@pytest.mark.parametrize("prefix,nh,path,reason", [
    ("198.19.2.0/26", "198.18.1.1", (65001,), None),
    ("198.19.2.197/26", "198.18.1.1", (65001,), "malformed-prefix"),  # host bits set
    ("198.19.2.0/26", "198.18.1.2", (65001,), None),
    ("198.19.2.5/32", "198.18.1.1", (65001,), None),
    ("198.19.1.0/26", "198.18.1.1", (65001,), "own-block"),
    ("198.19.1.7/32", "198.18.1.1", (65001,), "own-block"),
    ("198.51.100.0/24", "198.18.1.1", (65001,), "outside-pools"),
    ("0.0.0.0/0", "198.18.1.1", (65001,), None),
    ("0.0.0.0/0", "198.18.1.2", (65001,), "outside-pools"),  # allowed for .1 only
    ("203.0.113.16/28", "198.18.1.1", (65001,), None),
    ("203.0.113.16/29", "198.18.1.1", (65001,), "outside-pools"),
    ("198.19.2.0/26", "198.18.1.1", (65001, 64512), "as-loop"),
    ("198.19.2.0/26", "127.0.0.1", (65001,), "martian-nexthop"),
    ("198.19.2.0/26", "0.0.0.0", (65001,), "martian-nexthop"),
    ("198.19.2.0/26", "224.0.0.5", (65001,), "martian-nexthop"),
    ("198.19.2.0/26", "198.18.1.10", (65001,), "own-nexthop"),
    ("198.19.0.0/16", "198.18.1.1", (65001,), None),
])
def test_policy(prefix, nh, path, reason):
    # The route comes from the peer that is its next hop (or .1 for the odd next hops).
    peer = nh if nh in ("198.18.1.1", "198.18.1.2") else "198.18.1.1"
    assert POLICY.check(peer, prefix, nh, path) == reason


# -- RIB ------------------------------------------------------------------------
def test_rib_best_path_and_ecmp():
    rib = Rib()
    rib.add("p1", ["198.19.2.0/26"], "198.18.1.1", A)
    rib.add("p2", ["198.19.2.0/26"], "198.18.1.2", LONG)
    ch = rib.take_changes()
    assert ch["198.19.2.0/26"].nexthops == ("198.18.1.1",)
    rib.add("p3", ["198.19.2.0/26"], "198.18.1.3", Attributes((65009,), 1))
    assert rib.take_changes()["198.19.2.0/26"].nexthops == ("198.18.1.1", "198.18.1.3")
    rib.remove("p1", ["198.19.2.0/26"])
    rib.remove("p3", ["198.19.2.0/26"])
    assert rib.take_changes()["198.19.2.0/26"].peers == ("p2",)
    rib.drop_peer("p2")
    assert rib.take_changes() == {"198.19.2.0/26": None}
    assert rib.take_changes() == {}


def test_rib_no_change_no_report():
    rib = Rib()
    rib.add("p1", ["198.19.2.0/26"], "198.18.1.1", A)
    rib.take_changes()
    rib.add("p1", ["198.19.2.0/26"], "198.18.1.1", A)
    assert rib.take_changes() == {}


def test_rib_stale_path_leaves_ecmp_while_a_fresh_equal_path_exists():
    rib = Rib()
    rib.add("p1", ["198.19.2.0/26", "198.19.3.0/26"], "198.18.1.1", A)
    rib.add("p2", ["198.19.2.0/26"], "198.18.1.2", A)
    assert rib.take_changes()["198.19.2.0/26"].nexthops == ("198.18.1.1", "198.18.1.2")
    rib.mark_stale("p1")  # p1's session ended, GR holds its paths
    # The ECMP route drops the stale hop at once; the prefix only p1 has keeps it.
    assert rib.take_changes() == {"198.19.2.0/26": Route(("198.18.1.2",), ("p2",))}
    rib.add("p1", ["198.19.2.0/26"], "198.18.1.1", A)  # p1 back, re-announced: fresh again
    assert rib.take_changes()["198.19.2.0/26"].nexthops == ("198.18.1.1", "198.18.1.2")
    rib.mark_stale("p1")
    rib.take_changes()
    rib.remove("p2", ["198.19.2.0/26"])  # the last fresh path goes: the stale one is used
    assert rib.take_changes()["198.19.2.0/26"].nexthops == ("198.18.1.1",)
    assert rib.sweep_stale("p1") == 2
    assert rib.take_changes() == {"198.19.2.0/26": None, "198.19.3.0/26": None}


def test_rib_stale_sweep():
    rib = Rib()
    rib.add("p1", ["198.19.2.0/26", "198.19.3.0/26"], "198.18.1.1", A)
    rib.mark_stale("p1")
    rib.add("p1", ["198.19.2.0/26"], "198.18.1.1", A)
    assert rib.sweep_stale("p1") == 1
    assert set(rib.routes()) == {"198.19.2.0/26"}


# -- core ------------------------------------------------------------------------
P1, P2 = "198.18.1.1", "198.18.1.2"


def core(max_prefix=None, teardown=False):
    c = cfg(SpeakerPeer(P1, 65001, max_prefix=max_prefix, max_prefix_teardown=teardown),
            SpeakerPeer(P2, 65002))
    return SpeakerCore(c, ImportPolicy(64512, ("198.19.0.0/16",), frozenset({"198.19.1.0/26"}),
                                       frozenset({"198.18.1.10"})))


def upd(peer, prefixes, nh=None, attrs=A, withdrawn=()):
    return RouteUpdate(peer, attrs, ((nh or peer, tuple(prefixes)),) if prefixes else (),
                       tuple(withdrawn))


def test_core_peer_up_announces_desired_then_eor():
    c = core()
    c.set_desired(["198.19.1.0/26"], complete=True)
    assert c.take_commands() == ["announce attributes next-hop self nlri 198.19.1.0/26"]
    c.apply(PeerState(P1, "up"), now=0)
    assert c.take_commands() == [
        f"neighbor {P1} announce attributes next-hop self nlri 198.19.1.0/26",
        f"neighbor {P1} announce eor ipv4 unicast"]
    c.set_desired([])
    assert c.take_commands() == ["withdraw attributes next-hop self nlri 198.19.1.0/26"]


def test_core_filters_and_counts():
    c = core()
    c.apply(PeerState(P1, "up"), 0)
    c.apply(upd(P1, ["198.19.2.0/26", "198.19.1.5/32", "198.51.100.0/24"]), 1)
    c.apply(upd(P1, ["198.19.3.0/26"], attrs=Attributes((65001, 64512), 2)), 1)
    assert set(c.take_route_changes()) == {"198.19.2.0/26"}
    st = {s.address: s for s in c.status(2)}[P1]
    assert st.rejected == {"own-block": 1, "outside-pools": 1, "as-loop": 1}
    assert (st.received, st.accepted) == (4, 1)
    assert c.counters["rejected.own-block"] == 1


def test_core_policy_change_reevaluates():
    c = core()
    c.apply(upd(P1, ["198.19.2.0/26"]), 0)
    c.take_route_changes()
    c.set_policy(c.policy.with_own_blocks({"198.19.1.0/26", "198.19.2.0/26"}), 1)
    assert c.take_route_changes() == {"198.19.2.0/26": None}
    c.set_policy(c.policy.with_own_blocks({"198.19.1.0/26"}), 2)
    assert c.take_route_changes()["198.19.2.0/26"].nexthops == (P1,)


def test_core_max_prefix_drops_peer_routes():
    c = core(max_prefix=2, teardown=True)
    c.apply(PeerState(P1, "up"), 0)
    c.take_commands()
    c.apply(upd(P1, ["198.19.2.0/26", "198.19.3.0/26"]), 1)
    c.apply(upd(P1, ["198.19.4.0/26"]), 2)
    assert c.routes() == {}
    st = {s.address: s for s in c.status(3)}[P1]
    assert st.state == "max-prefix" and st.rejected["max-prefix"] == 3
    # Nothing announced: nothing to withdraw before the Cease (subcode 1, RFC 4486).
    assert c.take_commands() == []
    assert c.take_teardowns() == [Teardown(P1, 1, ())]
    c.apply(upd(P1, ["198.19.5.0/26"]), 3)
    assert c.routes() == {}
    # ExaBGP reconnects right after the teardown: still held down, no second teardown.
    c.apply(PeerState(P1, "down"), 4)
    c.apply(PeerState(P1, "up"), 5)
    c.apply(upd(P1, ["198.19.5.0/26"]), 6)
    assert c.routes() == {} and c.take_teardowns() == []
    assert {s.address: s for s in c.status(6)}[P1].state == "max-prefix"
    # After the hold-down a new session starts clean.
    c.apply(PeerState(P1, "down"), 301)
    c.apply(PeerState(P1, "up"), 302)
    c.apply(upd(P1, ["198.19.5.0/26"]), 303)
    assert set(c.routes()) == {"198.19.5.0/26"}


def test_core_down_without_gr_flushes_with_gr_holds_until_eor_or_timeout():
    c = core()
    c.apply(PeerState(P2, "up"), 0)
    c.apply(upd(P2, ["198.19.7.0/26"]), 0)
    c.apply(PeerState(P2, "down", "hold timer"), 1)
    assert c.routes() == {}

    c.apply(PeerOpen(P1, 65001, 9, P1, graceful_restart=120), 0)
    c.apply(PeerState(P1, "up"), 0)
    c.apply(upd(P1, ["198.19.2.0/26", "198.19.3.0/26"]), 0)
    c.take_route_changes()
    c.apply(PeerState(P1, "down"), 10)
    assert set(c.routes()) == {"198.19.2.0/26", "198.19.3.0/26"}
    assert c.take_route_changes() == {}
    c.tick(129)
    assert len(c.routes()) == 2
    c.apply(PeerState(P1, "up"), 20)
    c.apply(upd(P1, ["198.19.2.0/26"]), 21)
    c.apply(EndOfRib(P1, "ipv4 unicast"), 22)
    assert set(c.routes()) == {"198.19.2.0/26"}
    c.apply(PeerState(P1, "down"), 30)
    c.tick(149)
    assert len(c.routes()) == 1
    c.tick(150)
    assert c.routes() == {}


def test_core_session_reset_and_malformed():
    c = core()
    c.apply(PeerState(P2, "up"), 0)
    c.apply(upd(P2, ["198.19.7.0/26"]), 0)
    c.session_reset(1)
    assert c.routes() == {}
    c.apply(parse_line("{not json"), 2)
    c.apply(parse_line(b"\xff\xfe"), 2)
    assert c.counters["malformed_lines"] == 2
    assert isinstance(parse_line('{"type": "update"}'), Malformed)


def test_core_peer_set_change():
    c = core()
    c.apply(upd(P2, ["198.19.7.0/26"]), 0)
    c.set_config(cfg(SpeakerPeer(P1, 65001), SpeakerPeer("198.18.1.3", 65003)), 1)
    assert c.routes() == {} and set(c.peers) == {P1, "198.18.1.3"}


def test_rib_routes_does_not_consume_changes():
    rib = Rib()
    rib.add("p1", ["198.19.2.0/26"], "198.18.1.1", A)
    assert set(rib.routes()) == {"198.19.2.0/26"}
    assert set(rib.take_changes()) == {"198.19.2.0/26"}
    rib.remove("p1", ["198.19.2.0/26"])
    assert rib.routes() == {}
    assert rib.take_changes() == {"198.19.2.0/26": None}


def test_rib_routes_view_never_changes_after_it_was_handed_out():
    """routes() shares the RIB's map (issue 17: no 100k-entry copy per status snapshot);
    the RIB copies it before its next change, so a published view stays as it was."""
    rib = Rib()
    rib.add("p1", ["198.19.2.0/26", "198.19.3.0/26"], "198.18.1.1", A)
    view = rib.routes()
    rib.add("p1", ["198.19.4.0/26"], "198.18.1.1", A)
    rib.add("p2", ["198.19.2.0/26"], "198.18.1.2", A)
    rib.remove("p1", ["198.19.3.0/26"])
    assert set(view) == {"198.19.2.0/26", "198.19.3.0/26"}
    assert view["198.19.2.0/26"].nexthops == ("198.18.1.1",)
    with pytest.raises(TypeError):
        view["198.19.9.0/26"] = view["198.19.2.0/26"]  # read-only
    now = rib.routes()
    assert set(now) == {"198.19.2.0/26", "198.19.4.0/26"}
    assert now["198.19.2.0/26"].nexthops == ("198.18.1.1", "198.18.1.2")


def test_core_gr_timer_not_extended_by_failed_reconnects():
    c = core()
    c.apply(PeerOpen(P1, 65001, 9, P1, graceful_restart=60), 0)
    c.apply(PeerState(P1, "up"), 0)
    c.apply(upd(P1, ["198.19.2.0/26"]), 0)
    c.apply(PeerState(P1, "down"), 10)          # stale until 70
    c.apply(PeerState(P1, "connected"), 30)
    c.apply(PeerState(P1, "down"), 31)          # failed before up: timer keeps running
    c.tick(69)
    assert set(c.routes()) == {"198.19.2.0/26"}
    c.tick(70)
    assert c.routes() == {}


def test_core_max_prefix_hold_down_comes_from_the_config_and_follows_a_reload():
    from dataclasses import replace

    c = core(max_prefix=1)
    c.set_config(replace(c.config, max_prefix_hold_down=30.0), 0)
    c.apply(PeerState(P1, "up"), 0)
    c.apply(upd(P1, ["198.19.2.0/26", "198.19.3.0/26"]), 1)  # over the limit of 1
    assert c.routes() == {}
    c.apply(PeerState(P1, "down"), 20)
    c.apply(PeerState(P1, "up"), 25)  # within 30 s: still refused
    c.apply(upd(P1, ["198.19.2.0/26"]), 26)
    assert c.routes() == {}
    c.apply(PeerState(P1, "down"), 40)
    c.apply(PeerState(P1, "up"), 41)  # after 30 s (not the default 300): clean again
    c.apply(upd(P1, ["198.19.2.0/26"]), 42)
    assert set(c.routes()) == {"198.19.2.0/26"}


def test_core_status_explains_a_peer_that_never_answers():
    c = core()
    c.tick(100)
    assert {s.address: s for s in c.status(110)}[P1].last_error == ""
    err = {s.address: s for s in c.status(120)}[P1].last_error
    assert "unanswered" in err and "MD5" in err and "20s" in err
    c.apply(PeerState(P1, "connected"), 121)
    c.apply(PeerState(P1, "up"), 121)
    assert {s.address: s for s in c.status(130)}[P1].last_error == ""
