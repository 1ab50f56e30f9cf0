"""Capture real ExaBGP 5.0.15 API output for the contract tests (run as root):

    .venv/bin/python -m tests.bgp.capture_samples tests/bgp/samples/exabgp-5.0.15.jsonl
    .venv/bin/python -m tests.bgp.capture_samples --pairs tests/bgp/samples/exabgp-5.0.15-pairs.jsonl

Default scenario (parsed form): our speaker peers with BIRD 2 and FRR (MD5); both announce
routes (one prefix from both: ECMP; 3000 prefixes from BIRD: a long UPDATE line), BIRD
withdraws some, FRR is stopped (its Cease NOTIFICATION, session down), we ask ExaBGP for a
summary and an invalid command (text answer, ``error`` ack), then shut down.

``--pairs`` (``receive { packets; parsed; }``: ExaBGP writes every received message twice,
its packet line then its parsed line; ``tests/bgp/test_wire_contract.py`` decodes one and
parses the other): BIRD is an eBGP peer WITHOUT the four-octet AS capability (2-byte
AS_PATH, an AS4_PATH for a path holding AS4200000001), FRR an iBGP peer (AS 64512) that
also peers with BIRD and sends us a BIRD route (3 ASNs, BIRD's next hop) and an
``aggregate-address ... as-set`` (AS_SET, AGGREGATOR), all with LOCAL_PREF 250 and MED 30.
BIRD announces 2000 /30s plus /21../26s in the same UPDATEs, a route with a community, one
with ORIGIN incomplete; then withdraws most and changes the community; FRR shuts our
session down administratively with a message (Cease 6/2 + RFC 8203 text), so does BIRD
(``birdc disable ... "going away"``); the speaker stops.

``--pairs6`` (issue 15; same two forms per message): the speaker peers over IPv6
(2001:2:0:fb::/64 in the test's namespaces) with BIRD 2 (eBGP) and FRR (eBGP, IPv6 unicast
only), ``family { ipv6 unicast; }``. Both are directly connected and send global +
link-local next hops (32 bytes); BIRD announces /122s inside the IPv6 pool, a /64, a /128
and a prefix outside the pool, FRR two /122s and a /48; then BIRD withdraws some (an
MP_UNREACH), FRR withdraws one, both end the session with an RFC 8203 message.

    .venv/bin/python -m tests.bgp.capture_samples --pairs6 tests/bgp/samples/exabgp-5.0.15-pairs-v6.jsonl
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from bgpd.bgp.exabgp_config import SpeakerConfig, SpeakerPeer
from bgpd.bgp.import_policy import ImportPolicy
from bgpd.bgp.speaker import Speaker
from lab.netns import NetnsSet
from lab.procs import LabError, wait_for
from lab.routers import BIRDC, BgpNeighbor, BirdRouter, FrrRouter
from tests.bgp.conftest import BIRD, BIRD_AS, FRR, FRR_AS, LOCAL_AS, POOLS, SPEAKER, Fabric


def build_fabric(owned: NetnsSet, workdir: str) -> Fabric:
    from lab.netns import run_prefix, switch_with_hosts

    p = run_prefix("nrs")
    names = switch_with_hosts(owned, p, {"e": ("e", SPEAKER), "b": ("b", BIRD),
                                         "f": ("f", FRR)})
    return Fabric(p, names["e"], names["b"], names["f"], workdir)


def main(out: str) -> None:
    owned, wd, trace = _workspace()
    items = []
    try:
        fab = build_fabric(owned, wd)
        many = [f"198.19.{64 + i // 64}.{(i % 64) * 4}/30" for i in range(3000)]
        b = BirdRouter(fab.bird_ns, f"{wd}/bird", BIRD, BIRD_AS,
                       [BgpNeighbor(SPEAKER, LOCAL_AS, password="pw1")],
                       static_routes=["198.19.10.0/26", "198.19.30.0/26", *many]).start()
        items.append(b)
        f = FrrRouter(fab.frr_ns, f"{wd}/frr", FRR, FRR_AS,
                      [BgpNeighbor(SPEAKER, LOCAL_AS, password="pw2")],
                      static_routes=["198.19.20.0/26", "198.19.30.0/26"]).start()
        items.append(f)
        sp = Speaker(SpeakerConfig(LOCAL_AS, SPEAKER, SPEAKER,
                                   (SpeakerPeer(BIRD, BIRD_AS, hold_time=9, password="pw1"),
                                    SpeakerPeer(FRR, FRR_AS, hold_time=9, password="pw2"))),
                     ImportPolicy(LOCAL_AS, POOLS), f"{wd}/speaker", netns=fab.speaker_ns,
                     trace_path=trace)
        sp.set_desired(["198.19.1.0/26"], complete=True)
        items.append(sp.start())
        wait_for(lambda: len(sp.routes()) == 3003, 60, what="all routes learned")
        b.static_routes = ["198.19.30.0/26"]
        b.configure()
        wait_for(lambda: len(sp.routes()) == 2, 60, what="BIRD withdrawals")
        sp.command("show neighbor summary")
        sp.command("bogus command")
        f.stop()
        items.remove(f)
        wait_for(lambda: sp.peer(FRR).state == "down", 30, what="FRR down")
        sp.stop(withdraw=False)
        items.remove(sp)
    finally:
        _finish(items, owned)
    _write(trace, out, wd)


# ------------------------------------------------------------------ --pairs

PAIRS_MANY = [f"198.19.{64 + i // 64}.{(i % 64) * 4}/30" for i in range(2000)]
PAIRS_MIXED = ["198.19.100.0/24", "198.19.102.0/23", "198.19.104.0/22", "198.19.112.0/21",
               "198.19.120.0/25"]
PAIRS_KEEP = ["198.19.10.0/26", "198.19.100.0/24"]


class PairsBird(BirdRouter):
    """BIRD for --pairs: no AS4 towards the speaker, routes with attributes, FRR as a peer."""

    attr_community = 7

    def config_text(self) -> str:
        out = [f"router id {self.router_id};", "log stderr all;",
               "protocol device { scan time 2; }",
               "protocol static s_announce {", "  ipv4 { preference 250; };",
               *(f"  route {p} blackhole;" for p in self.static_routes), "}",
               "protocol static s_attr {", "  ipv4 { preference 250; };",
               "  route 198.19.40.0/26 blackhole { bgp_path.prepend(4200000001); "
               f"bgp_path.prepend(65010); bgp_community.add((65001, {self.attr_community})); }};",
               "  route 198.19.41.0/26 blackhole { bgp_origin = ORIGIN_INCOMPLETE; };",
               "  route 198.19.48.0/26 blackhole;",
               "  route 198.19.49.0/26 blackhole { bgp_path.prepend(65021); "
               "bgp_path.prepend(65020); };",
               "}"]
        for n in self.neighbors:
            out += [f"protocol bgp {self.proto_name(n.address)} {{",
                    f"  local as {self.asn};", f"  neighbor {n.address} as {n.asn};",
                    f"  hold time {n.hold_time};", "  keepalive time 3;",
                    "  connect retry time 2;", "  connect delay time 1;",
                    "  error wait time 1, 10;", "  graceful restart on;",
                    f"  graceful restart time {self.gr_restart_time};"]
            if n.password:
                out += [f'  password "{n.password}";', "  enable as4 off;"]
            out += ["  ipv4 { import none; export where source = RTS_STATIC; next hop self; };",
                    "}"]
        return "\n".join(out) + "\n"


class PairsFrr(FrrRouter):
    """FRR for --pairs: iBGP to the speaker (local-pref, MED), eBGP to BIRD, an AS_SET aggregate."""

    def _frr_conf(self) -> str:
        speaker, bird = (n for n in self.neighbors)
        out = ["frr defaults traditional", f"hostname {os.path.basename(self.workdir)}",
               "log stdout informational", "!", f"router bgp {self.asn}",
               f" bgp router-id {self.router_id}", " no bgp ebgp-requires-policy",
               " no bgp network import-check", " bgp graceful-restart",
               f" bgp graceful-restart restart-time {self.gr_restart_time}"]
        for n in (speaker, bird):
            out += [f" neighbor {n.address} remote-as {n.asn}",
                    f" neighbor {n.address} timers 3 {n.hold_time}",
                    f" neighbor {n.address} timers connect 1"]
            if n.password:
                out.append(f" neighbor {n.address} password {n.password}")
        out += [" address-family ipv4 unicast",
                *(f"  network {p}" for p in self.static_routes),
                "  aggregate-address 198.19.48.0/22 as-set summary-only",
                f"  neighbor {speaker.address} activate",
                f"  neighbor {speaker.address} route-map to-speaker out",
                f"  neighbor {bird.address} activate",
                f"  neighbor {bird.address} route-map nothing out",
                " exit-address-family", "!",
                *(f"ip prefix-list to-speaker seq {5 * (i + 1)} permit {p}" for i, p in
                  enumerate([*self.static_routes, "198.19.48.0/22", "198.19.40.0/26"])),
                "route-map to-speaker permit 10", " match ip address prefix-list to-speaker",
                " set local-preference 250", " set metric 30", "!",
                "route-map nothing deny 10", "!"]
        return "\n".join(out) + "\n"


def _eor_from(trace: str, peer: str) -> bool:
    """A parsed End-of-RIB line from ``peer`` is in the trace."""
    try:
        with open(trace, "rb") as f:
            return any(b'"eor"' in line and f'"peer": "{peer}"'.encode() in line for line in f)
    except FileNotFoundError:
        return False


def main_pairs(out: str) -> None:
    owned, wd, trace = _workspace()
    items = []
    try:
        fab = build_fabric(owned, wd)
        b = PairsBird(fab.bird_ns, f"{wd}/bird", BIRD, BIRD_AS,
                      [BgpNeighbor(SPEAKER, LOCAL_AS, password="pw1"),
                       BgpNeighbor(FRR, LOCAL_AS)],
                      static_routes=[*PAIRS_KEEP, *PAIRS_MANY, *PAIRS_MIXED[1:]]).start()
        items.append(b)
        f = PairsFrr(fab.frr_ns, f"{wd}/frr", FRR, LOCAL_AS,
                     [BgpNeighbor(SPEAKER, LOCAL_AS, password="pw2"), BgpNeighbor(BIRD, BIRD_AS)],
                     static_routes=["198.19.20.0/26", "198.19.30.0/26"]).start()
        items.append(f)
        sp = Speaker(SpeakerConfig(LOCAL_AS, SPEAKER, SPEAKER,
                                   (SpeakerPeer(BIRD, BIRD_AS, hold_time=9, password="pw1"),
                                    SpeakerPeer(FRR, LOCAL_AS, hold_time=9, password="pw2")),
                                   api_receive=("packets", "parsed")),
                     ImportPolicy(LOCAL_AS, POOLS), f"{wd}/speaker", netns=fab.speaker_ns,
                     trace_path=trace)
        sp.set_desired(["198.19.1.0/26"], complete=True)
        items.append(sp.start())
        want = {"198.19.40.0/26", "198.19.48.0/22", "198.19.20.0/26", "198.19.100.0/24",
                "198.19.120.0/25", *PAIRS_MANY[-3:]}
        wait_for(lambda: want <= set(sp.routes()), 90, what="routes from BIRD and FRR")
        wait_for(lambda: _eor_from(trace, BIRD) and _eor_from(trace, FRR), 60,
                 what="End-of-RIB from both peers")
        # FRR re-advertises 198.19.40.0/26 (BIRD's): make sure that one reached us from FRR.
        wait_for(lambda: sp.peer(FRR).received >= 4, 60, what="FRR's four routes")
        b.static_routes = [*PAIRS_KEEP, *PAIRS_MIXED[:2]]
        b.attr_community = 8  # 198.19.40.0/26 announced again
        b.configure()
        wait_for(lambda: PAIRS_MANY[0] not in sp.routes() and "198.19.102.0/23" in sp.routes(),
                 60, what="BIRD's withdrawals")
        time.sleep(2)  # FRR's updates after BIRD's change
        f.configure("router bgp 64512", f"neighbor {SPEAKER} shutdown message maintenance")
        wait_for(lambda: sp.peer(FRR).state == "down", 30, what="FRR shut our session down")
        said = b._run([BIRDC, "-s", b.socket, "disable", b.proto_name(SPEAKER), '"going away"'])
        if "disabled" not in said:
            raise LabError(f"birdc disable: {said}")
        wait_for(lambda: sp.peer(BIRD).state == "down", 30, what="BIRD disabled our session")
        sp.stop(withdraw=False)
        items.remove(sp)
    finally:
        _finish(items, owned)
    _write(trace, out, wd)


# ------------------------------------------------------------------ --pairs6

PAIRS6_BIRD = ["2001:2:0:1900::40/122", "2001:2:0:1900::80/122", "2001:2:0:1901::/64",
               "2001:2:0:1900::c5/128", "2001:2:0:fe00::/64"]
PAIRS6_BIRD_KEEP = ["2001:2:0:1900::40/122", "2001:2:0:1900::c5/128"]
PAIRS6_FRR = ["2001:2:0:1900::100/122", "2001:2:0:1900::140/122", "2001:2:0:ff00::/56"]
OWN6 = "2001:2:0:1900::/122"


def build_fabric6(owned: NetnsSet, workdir: str) -> Fabric:
    """build_fabric plus the IPv6 addresses on the same segment."""
    from tests.bgp.v6_routers import BIRD6, FRR6, SPEAKER6, add_ipv6

    fab = build_fabric(owned, workdir)
    for ns, tag, addr in ((fab.speaker_ns, "e", SPEAKER6), (fab.bird_ns, "b", BIRD6),
                          (fab.frr_ns, "f", FRR6)):
        add_ipv6(ns, f"{fab.prefix}{tag}", addr)
    return fab


def main_pairs6(out: str) -> None:
    from tests.bgp.v6_routers import BIRD6, FRR6, POOL6, SPEAKER6, Bird6, Frr6

    owned, wd, trace = _workspace()
    items = []
    try:
        fab = build_fabric6(owned, wd)
        b = Bird6(fab.bird_ns, f"{wd}/bird", BIRD, BIRD_AS, peers6=[(SPEAKER6, LOCAL_AS)],
                  routes6=PAIRS6_BIRD).start()
        items.append(b)
        f = Frr6(fab.frr_ns, f"{wd}/frr", FRR, FRR_AS, peers6=[(SPEAKER6, LOCAL_AS)],
                 routes6=PAIRS6_FRR).start()
        items.append(f)
        sp = Speaker(SpeakerConfig(LOCAL_AS, SPEAKER, SPEAKER,
                                   (SpeakerPeer(BIRD6, BIRD_AS, hold_time=9),
                                    SpeakerPeer(FRR6, FRR_AS, hold_time=9)),
                                   api_receive=("packets", "parsed"), local_address6=SPEAKER6),
                     ImportPolicy(LOCAL_AS, (*POOLS, POOL6), frozenset({OWN6})),
                     f"{wd}/speaker", netns=fab.speaker_ns, trace_path=trace)
        sp.set_desired([OWN6], complete=True)
        items.append(sp.start())
        want = {"2001:2:0:1900::40/122", "2001:2:0:1900::c5/128", "2001:2:0:1900::100/122",
                "2001:2:0:1900::140/122"}
        wait_for(lambda: want <= set(sp.routes()), 90, what="IPv6 routes from BIRD and FRR")
        wait_for(lambda: _eor_from(trace, BIRD6) and _eor_from(trace, FRR6), 60,
                 what="End-of-RIB from both peers")
        b.routes6 = PAIRS6_BIRD_KEEP
        b.configure()
        f.configure("router bgp 65002", "address-family ipv6 unicast",
                    "no network 2001:2:0:1900::140/122")
        wait_for(lambda: "2001:2:0:1900::80/122" not in sp.routes()
                 and "2001:2:0:1900::140/122" not in sp.routes(), 60, what="IPv6 withdrawals")
        f.configure("router bgp 65002", f"neighbor {SPEAKER6} shutdown message maintenance")
        wait_for(lambda: sp.peer(FRR6).state == "down", 30, what="FRR shut our session down")
        said = b._run([BIRDC, "-s", b.socket, "disable", b.proto_name(SPEAKER6), '"going away"'])
        if "disabled" not in said:
            raise LabError(f"birdc disable: {said}")
        wait_for(lambda: sp.peer(BIRD6).state == "down", 30, what="BIRD disabled our session")
        sp.stop(withdraw=False)
        items.remove(sp)
    finally:
        _finish(items, owned)
    _write(trace, out, wd)


def _workspace() -> tuple[NetnsSet, str, str]:
    """The namespaces we make (deleted by _finish), a work dir, the trace file in it."""
    wd = tempfile.mkdtemp(prefix="nr-capture-")
    os.chmod(wd, 0o755)
    return NetnsSet(), wd, os.path.join(wd, "trace.jsonl")


def _finish(items: list, owned) -> None:
    for it in reversed(items):
        it.stop()
    owned.delete_all()


def _write(trace: str, out: str, wd: str) -> None:
    import shutil

    with open(trace, "rb") as src, open(out, "wb") as dst:
        dst.write(src.read())
    shutil.rmtree(wd, ignore_errors=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--pairs"]:
        main_pairs(sys.argv[2])
    elif sys.argv[1:2] == ["--pairs6"]:
        main_pairs6(sys.argv[2])
    else:
        main(sys.argv[1])
