"""Unit tests (issue 18): how a session ended decides graceful restart, the NOTIFICATION
kept in peer status, End-of-RIB only after the node's first full sync, Cease teardowns
(max-prefix, peer de-configured) and the monotonic per-peer counters."""

from __future__ import annotations

from bgpd.bgp import exabgp_commands as cmds
from bgpd.bgp.core import SpeakerCore, Teardown, ends_graceful_restart
from bgpd.bgp.events import (
    Attributes,
    EndOfRib,
    Notification,
    PeerOpen,
    PeerState,
    RouteUpdate,
    notification_in_reason,
)
from bgpd.bgp.exabgp_config import SpeakerConfig, SpeakerPeer
from bgpd.bgp.exabgp_lines import parse_line
from bgpd.bgp.import_policy import ImportPolicy

P1, P2 = "198.18.1.1", "198.18.1.2"
A = Attributes(as_path=(65001,), as_path_len=1)
BYE = 'Shutdown Communication: "maintenance"'


def core(*peers: SpeakerPeer) -> SpeakerCore:
    peers = peers or (SpeakerPeer(P1, 65001), SpeakerPeer(P2, 65002))
    c = SpeakerConfig(64512, "198.18.1.10", "198.18.1.10", peers,
                      api_argv=("/usr/bin/python3", "/x/relay.py", "/run/x/api.sock"))
    return SpeakerCore(c, ImportPolicy(64512, ("198.19.0.0/16",), frozenset({"198.19.1.0/26"}),
                                       frozenset({"198.18.1.10"})))


def upd(peer, prefixes):
    return RouteUpdate(peer, A, ((peer, tuple(prefixes)),), ())


def gr_session(c: SpeakerCore, peer: str = P1, restart_time: int = 120, now: float = 0):
    c.apply(PeerOpen(peer, 65001, 9, peer, graceful_restart=restart_time), now)
    c.apply(PeerState(peer, "up"), now)
    c.apply(upd(peer, ["198.19.2.0/26", "198.19.3.0/26"]), now)
    c.take_route_changes()


def status(c: SpeakerCore, peer: str, now: float = 100):
    return {s.address: s for s in c.status(now)}[peer]


# -- graceful restart: NOTIFICATION vs session loss ----------------------------------------
def test_cease_from_the_peer_ends_graceful_restart_at_once():
    c = core()
    gr_session(c)
    # What ExaBGP 5.0.15 reports for `birdc disable`: the NOTIFICATION first, then the
    # "down" it caused (reactor/peer.py _run; seen in tests/bgp/test_speaker_integration.py).
    c.apply(Notification(P1, f"6/2 {BYE}"), 10)
    c.apply(PeerState(P1, "down", "notification received (6,2)"), 10)
    assert c.routes() == {}
    assert c.take_route_changes() == {"198.19.2.0/26": None, "198.19.3.0/26": None}
    assert status(c, P1, 11).stale == 0


def test_session_loss_and_hold_timer_expiry_keep_routes_stale_for_the_restart_time():
    for reason in ("closing connection", "notification sent (4,0)",
                   "notification received (4,0)"):
        c = core()
        gr_session(c)
        c.apply(PeerState(P1, "down", reason), 10)
        assert set(c.routes()) == {"198.19.2.0/26", "198.19.3.0/26"}, reason
        assert status(c, P1, 11).stale == 2, reason
        c.tick(129)
        assert len(c.routes()) == 2, reason
        c.tick(130)
        assert c.routes() == {}, reason


def test_a_notification_we_send_ends_graceful_restart_too():
    c = core()
    gr_session(c)
    c.apply(PeerState(P1, "down", "notification sent (3,1)"), 10)  # malformed UPDATE
    assert c.routes() == {}


def test_a_notification_on_a_reconnect_attempt_leaves_a_running_hold_to_its_timer():
    c = core()
    gr_session(c)
    c.apply(PeerState(P1, "down", "closing connection"), 10)  # stale until 130
    # The restarting peer refuses us until it is ready; or both sides connect at once.
    for t, (code, sub) in ((20, (6, 5)), (25, (6, 7))):
        c.apply(PeerState(P1, "connected"), t)
        c.apply(Notification(P1, f"{code}/{sub}"), t)
        c.apply(PeerState(P1, "down", f"notification received ({code},{sub})"), t)
    assert len(c.routes()) == 2
    c.tick(130)
    assert c.routes() == {}


def test_a_collision_cease_does_not_end_graceful_restart():
    c = core()
    gr_session(c)
    c.apply(PeerState(P1, "down", "notification sent (6,7)"), 10)
    assert len(c.routes()) == 2


def test_last_notification_survives_refused_reconnects_until_the_session_is_back():
    c = core()
    gr_session(c)
    c.apply(Notification(P1, f"6/2 {BYE}"), 10)
    c.apply(PeerState(P1, "down", "notification received (6,2)"), 10)
    for t in (12, 14, 16):  # BIRD refuses the reconnects while disabled
        c.apply(PeerState(P1, "connected"), t)
        c.apply(PeerState(P1, "down", "closing connection"), t)
    st = status(c, P1, 17)
    assert st.last_notification == f"received 6/2 {BYE}"
    assert st.last_error == f"notification received 6/2 {BYE}; then: closing connection"
    c.apply(PeerState(P1, "up"), 20)
    st = status(c, P1, 21)
    assert st.last_notification == "" and "6/2" not in st.last_error


def test_notification_in_reason():
    assert notification_in_reason("notification received (6,2)") == ("received", 6, 2)
    assert notification_in_reason("peer reset, message [notification sent (4,0)] error[x]") \
        == ("sent", 4, 0)
    assert notification_in_reason("closing connection") is None
    assert notification_in_reason("") is None
    assert ends_graceful_restart((6, 2)) and ends_graceful_restart((3, 1))
    assert not ends_graceful_restart((4, 0)) and not ends_graceful_restart(None)
    assert not ends_graceful_restart((6, 7))


def test_notification_event_from_exabgp_json():
    line = ('{"exabgp": "5.0.0", "type": "notification", "neighbor": {"address": {"local": '
            '"198.18.1.10", "peer": "198.18.1.1"}, "notification": {"code": 6, "subcode": 2, '
            '"data": "0x00", "message": "Shutdown Communication: \\"maintenance\\""}}}')
    ev = parse_line(line)
    assert ev == Notification(P1, f"6/2 {BYE}")


# -- End-of-RIB only after the first full sync ----------------------------------------------
def test_no_end_of_rib_before_the_node_says_its_announcements_are_complete():
    c = core()
    c.apply(PeerState(P1, "up"), 0)  # etcd not synced yet: nothing desired
    assert c.take_commands() == []
    c.set_desired(["198.19.1.0/26"])  # a partial set (still syncing)
    c.apply(PeerState(P2, "up"), 1)
    assert not any("eor" in line for line in c.take_commands())


def test_end_of_rib_goes_to_every_established_peer_once_announcements_are_complete():
    c = core()
    c.apply(PeerState(P1, "up"), 0)
    c.apply(PeerState(P2, "up"), 0)
    c.take_commands()
    c.set_desired(["198.19.1.0/26"], complete=True)
    assert c.take_commands() == [
        "announce attributes next-hop self nlri 198.19.1.0/26",
        f"neighbor {P1} announce eor ipv4 unicast",
        f"neighbor {P2} announce eor ipv4 unicast"]
    c.mark_announcements_complete()  # again: nothing more
    c.set_desired(["198.19.1.0/26", "198.19.1.64/26"], complete=True)
    assert c.take_commands() == ["announce attributes next-hop self nlri 198.19.1.64/26"]
    # A later session gets its routes, then EoR at once.
    c.apply(PeerState(P2, "down", "closing connection"), 5)
    c.apply(PeerState(P2, "up"), 6)
    assert c.take_commands() == [
        f"neighbor {P2} announce attributes next-hop self nlri 198.19.1.0/26 198.19.1.64/26",
        f"neighbor {P2} announce eor ipv4 unicast"]


def test_a_peer_down_when_announcements_complete_gets_no_eor_then():
    c = core()
    c.apply(PeerState(P1, "up"), 0)
    c.apply(PeerState(P1, "down", "closing connection"), 1)
    c.take_commands()
    c.mark_announcements_complete()
    assert c.take_commands() == []


# -- Cease teardowns -------------------------------------------------------------------------
def test_max_prefix_teardown_withdraws_first_when_exabgp_would_close_silently():
    c = core(SpeakerPeer(P1, 65001, max_prefix=1, max_prefix_teardown=True),  # GR 120 (default)
             SpeakerPeer(P2, 65002, max_prefix=1, max_prefix_teardown=True,
                        graceful_restart=None))
    c.set_desired(["198.19.1.0/26"], complete=True)
    for peer in (P1, P2):
        c.apply(PeerState(peer, "up"), 0)
    c.take_commands()
    c.apply(upd(P1, ["198.19.2.0/26", "198.19.3.0/26"]), 1)
    c.apply(upd(P2, ["198.19.4.0/26", "198.19.5.0/26"]), 1)
    assert c.take_commands() == []
    assert c.take_teardowns() == [
        Teardown(P1, cmds.CEASE_MAX_PREFIXES,
                 (f"neighbor {P1} withdraw attributes next-hop self nlri 198.19.1.0/26",)),
        Teardown(P2, cmds.CEASE_MAX_PREFIXES, ())]
    # ExaBGP's report of the Cease it sent: shown with our reason, the max-prefix text kept.
    c.apply(PeerState(P2, "down", "notification sent (6,1)"), 2)
    c.apply(PeerState(P2, "connected"), 3)
    c.apply(PeerState(P2, "down", "closing connection"), 3)
    err = status(c, P2, 4).last_error
    assert err.startswith("max-prefix 1 exceeded (2 accepted); routes dropped; "
                          "notification sent 6/1 (max-prefix 1)"), err
    assert c.counters["teardowns.cease1"] == 2


def test_removed_peer_is_torn_down_with_cease_peer_deconfigured():
    c = core()
    c.set_desired(["198.19.1.0/26"], complete=True)
    c.apply(PeerState(P1, "up"), 0)
    c.apply(upd(P1, ["198.19.2.0/26"]), 0)
    c.take_commands()
    new = SpeakerConfig(64512, "198.18.1.10", "198.18.1.10", (SpeakerPeer(P2, 65002),),
                        api_argv=c.config.api_argv)
    tds = c.deconfigure(new)
    assert tds == [Teardown(P1, cmds.CEASE_PEER_DECONFIGURED,
                            (f"neighbor {P1} withdraw attributes next-hop self nlri 198.19.1.0/26",))]
    # ExaBGP reconnects after a teardown until the reload removes the neighbour: nothing
    # may be announced to it again meanwhile.
    c.apply(PeerState(P1, "down", "closing connection"), 1)
    c.apply(PeerState(P1, "up"), 2)
    assert c.take_commands() == []
    c.set_config(new, 3)
    assert c.routes() == {} and set(c.peers) == {P2}


# -- counters ---------------------------------------------------------------------------------
def test_per_peer_counters_are_monotonic_across_flaps_and_removal():
    c = core()
    c.apply(PeerState(P1, "up"), 0)
    c.apply(upd(P1, ["198.19.2.0/26", "198.19.1.0/26", "198.51.100.0/24"]), 0)
    c.apply(PeerState(P1, "down", "closing connection"), 1)
    c.apply(PeerState(P1, "up"), 2)
    c.apply(upd(P1, ["198.19.2.0/26", "198.19.1.0/26"]), 2)
    counts = c.peer_counters()[P1]
    assert counts.received == 5
    assert counts.rejected == {"own-block": 2, "outside-pools": 1}
    assert (status(c, P1).received, status(c, P1).received_total) == (2, 5)
    only_p2 = SpeakerConfig(64512, "198.18.1.10", "198.18.1.10", (SpeakerPeer(P2, 65002),),
                            api_argv=c.config.api_argv)
    c.set_config(only_p2, 3)
    assert c.peer_counters()[P1].received == 5  # a removed peer keeps its values
    c.set_config(SpeakerConfig(64512, "198.18.1.10", "198.18.1.10",
                               (SpeakerPeer(P1, 65001), SpeakerPeer(P2, 65002)),
                               api_argv=c.config.api_argv), 4)
    c.apply(PeerState(P1, "up"), 5)
    c.apply(upd(P1, ["198.19.1.0/26"]), 5)
    counts = c.peer_counters()[P1]
    assert counts.received == 6 and counts.rejected["own-block"] == 3
    # A snapshot, not a live view.
    counts.rejected["own-block"] = 0
    assert c.peer_counters()[P1].rejected["own-block"] == 3


def test_end_of_rib_from_peer_still_sweeps_stale():
    c = core()
    gr_session(c)
    c.apply(PeerState(P1, "down", "closing connection"), 10)
    c.apply(PeerState(P1, "up"), 20)
    c.apply(upd(P1, ["198.19.2.0/26"]), 21)
    c.apply(EndOfRib(P1, "ipv4 unicast"), 22)
    assert set(c.routes()) == {"198.19.2.0/26"}


def test_updates_sent_from_show_neighbor_json():
    answer = ['[{"state": "up", "messages": {"sent": {"update": 7}, "received": {}}, '
              '"peer": {"address": "198.18.1.1"}}, {"messages": {"sent": {"update": 2}}, '
              '"peer": {"address": "198.18.1.2"}}]']
    assert cmds.updates_sent(answer, P1) == 7
    assert cmds.updates_sent(answer, P2) == 2
    assert cmds.updates_sent(answer, "198.18.1.3") is None
    assert cmds.updates_sent(["please specify", "[1, 2]"], P1) is None
