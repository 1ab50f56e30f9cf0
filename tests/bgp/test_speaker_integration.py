"""Our speaker (real ExaBGP 5.0.15) against real BIRD 2 and real FRR, in namespaces."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from bgpd.bgp.exabgp_config import PrefixFilter, SpeakerConfig, SpeakerPeer
from bgpd.bgp.exabgp_launch import NLRI_ENV
from bgpd.bgp.import_policy import ImportPolicy
from bgpd.bgp.speaker import LAUNCHER, PYPY_GC_ENV, Speaker, default_exabgp, is_pypy
from lab.procs import wait_for
from lab.routers import BgpNeighbor, BirdRouter, FrrRouter
from tests.bgp.conftest import BIRD, BIRD_AS, FRR, FRR_AS, LOCAL_AS, OWN_BLOCK, POOLS, SPEAKER

pytestmark = pytest.mark.integration

T = 45  # generous upper bound for convergence; never asserted as a duration


def speaker_config(*peers: SpeakerPeer) -> SpeakerConfig:
    return SpeakerConfig(LOCAL_AS, SPEAKER, SPEAKER, peers)


def policy(**kw) -> ImportPolicy:
    return ImportPolicy(LOCAL_AS, POOLS, frozenset({OWN_BLOCK}), frozenset({SPEAKER}), **kw)


def bird(fabric, static, password="pw1", **kw) -> BirdRouter:
    return BirdRouter(fabric.bird_ns, f"{fabric.workdir}/bird", BIRD, BIRD_AS,
                      [BgpNeighbor(SPEAKER, LOCAL_AS, password=password)],
                      static_routes=static, **kw)


def frr(fabric, static, password="pw2", **kw) -> FrrRouter:
    return FrrRouter(fabric.frr_ns, f"{fabric.workdir}/frr", FRR, FRR_AS,
                     [BgpNeighbor(SPEAKER, LOCAL_AS, password=password)],
                     static_routes=static, **kw)


def established(sp: Speaker, peer: str) -> bool:
    st = sp.peer(peer)
    return st is not None and st.state == "established"


@pytest.fixture
def cleanup():
    items = []
    yield items
    for it in reversed(items):
        if isinstance(it, Speaker):
            it.stop(withdraw=False)
        else:
            it.stop()


def test_peers_with_bird_and_frr_md5_routes_both_ways(fabric, cleanup):
    b = bird(fabric, ["198.19.10.0/26", "198.19.30.0/26", "198.19.1.5/32", "198.19.200.0/24"])
    f = frr(fabric, ["198.19.20.0/26", "198.19.30.0/26", "198.18.0.0/24"])
    cleanup += [b.start(), f.start()]
    cfg = speaker_config(SpeakerPeer(BIRD, BIRD_AS, hold_time=9, password="pw1"),
                         SpeakerPeer(FRR, FRR_AS, hold_time=9, password="pw2",
                                    allowed=(PrefixFilter("198.18.0.0/24"),)))
    sp = Speaker(cfg, policy(allowed={FRR: (PrefixFilter("198.18.0.0/24"),)}),
                 f"{fabric.workdir}/speaker", netns=fabric.speaker_ns)
    cleanup.append(sp)
    sp.set_desired([OWN_BLOCK], complete=True)
    sp.start()
    wait_for(lambda: established(sp, BIRD) and established(sp, FRR), T, what="both sessions")
    b.wait_established(SPEAKER)
    f.wait_established(SPEAKER)

    # Each router sees our block, next hop us.
    b.wait_route(OWN_BLOCK, timeout=T)
    f.wait_route(OWN_BLOCK, timeout=T)
    assert b.routes()[OWN_BLOCK].nexthops == (SPEAKER,)
    assert f.routes()[OWN_BLOCK].nexthops == (SPEAKER,)

    # We learn theirs; the ECMP prefix has both next hops; filters rejected and counted.
    want = {"198.19.10.0/26", "198.19.20.0/26", "198.19.30.0/26", "198.18.0.0/24"}
    wait_for(lambda: set(sp.routes()) == want, T, what=f"speaker RIB == {want}")
    routes = sp.routes()
    assert routes["198.19.10.0/26"].nexthops == (BIRD,)
    assert routes["198.19.30.0/26"].nexthops == (BIRD, FRR)
    assert routes["198.19.30.0/26"].peers == (BIRD, FRR)
    st = sp.peer(BIRD)
    assert st.rejected == {"own-block": 1, "outside-pools": 1}
    assert (st.received, st.accepted, st.announced) == (4, 2, 1)
    assert sp.counters()["rejected.own-block"] == 1
    assert sp.peer(FRR).rejected == {}

    # Withdrawals propagate: ours to both routers, theirs to us.
    sp.set_desired(["198.19.1.64/26"])
    b.wait_route(OWN_BLOCK, present=False, timeout=T)
    f.wait_route(OWN_BLOCK, present=False, timeout=T)
    b.wait_route("198.19.1.64/26", timeout=T)
    f.wait_route("198.19.1.64/26", timeout=T)
    b.static_routes = []
    b.configure()
    wait_for(lambda: "198.19.10.0/26" not in sp.routes(), T, what="BIRD withdrawal learned")
    wait_for(lambda: sp.routes()["198.19.30.0/26"].peers == (FRR,), T, what="ECMP -> FRR only")
    assert sp.routes()["198.19.30.0/26"].nexthops == (FRR,)
    changes = sp.take_route_changes()
    assert "198.19.10.0/26" not in changes or changes["198.19.10.0/26"] is None
    assert sp.counters().get("acks.error", 0) == 0


def _md5_failures(netns: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", netns, "nstat", "-az", "TcpExtTCPMD5Failure",
                          "TcpExtTCPMD5Unexpected", "TcpExtTCPMD5NotFound"],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(line.split()[1]) for line in out.splitlines()
               if line.startswith("TcpExt"))


@pytest.mark.parametrize("wrong", ["bird", "frr"])
def test_wrong_md5_password_does_not_establish(fabric, cleanup, wrong):
    b = bird(fabric, ["198.19.10.0/26"], password="bird-pw")
    f = frr(fabric, ["198.19.20.0/26"], password="frr-pw")
    cleanup += [b.start(), f.start()]
    sp = Speaker(speaker_config(
        SpeakerPeer(BIRD, BIRD_AS, hold_time=9, password="wrong" if wrong == "bird" else "bird-pw"),
        SpeakerPeer(FRR, FRR_AS, hold_time=9, password="wrong" if wrong == "frr" else "frr-pw")),
        policy(), f"{fabric.workdir}/speaker", netns=fabric.speaker_ns)
    cleanup.append(sp.start())
    good, bad = (FRR, BIRD) if wrong == "bird" else (BIRD, FRR)
    bad_router, bad_ns = (b, fabric.bird_ns) if wrong == "bird" else (f, fabric.frr_ns)
    wait_for(lambda: established(sp, good), T, what=f"{good} session (right password)")
    # The kernel drops the segments with a bad signature (counted), so BGP never sees them.
    wait_for(lambda: _md5_failures(bad_ns) + _md5_failures(fabric.speaker_ns) >= 2, T,
             what="TCP MD5 failures counted by the kernel")
    assert not bad_router.established(SPEAKER)
    assert not established(sp, bad)
    good_route, bad_route = (("198.19.20.0/26", "198.19.10.0/26") if wrong == "bird"
                             else ("198.19.10.0/26", "198.19.20.0/26"))
    wait_for(lambda: good_route in sp.routes(), T, what=f"route from {good}")
    assert bad_route not in sp.routes()


def test_max_prefix_drops_peer_routes_and_counts(fabric, cleanup):
    many = [f"198.19.{40 + i}.0/24" for i in range(12)]
    b = bird(fabric, many)
    f = frr(fabric, ["198.19.20.0/26"])
    cleanup += [b.start(), f.start()]
    sp = Speaker(speaker_config(SpeakerPeer(BIRD, BIRD_AS, hold_time=9, password="pw1",
                                           max_prefix=10),
                                SpeakerPeer(FRR, FRR_AS, hold_time=9, password="pw2")),
                 policy(), f"{fabric.workdir}/speaker", netns=fabric.speaker_ns)
    cleanup.append(sp.start())
    wait_for(lambda: "198.19.20.0/26" in sp.routes(), T, what="FRR route learned")
    wait_for(lambda: sp.peer(BIRD).state == "max-prefix", T, what="BIRD over max-prefix")
    assert not any(p in sp.routes() for p in many)
    st = sp.peer(BIRD)
    assert st.rejected["max-prefix"] >= 11 and st.accepted == 0
    assert "max-prefix 10 exceeded" in st.last_error
    assert sp.counters()["max_prefix_events"] == 1


def test_exabgp_sigkill_restarts_and_reannounces(fabric, cleanup):
    b = bird(fabric, ["198.19.10.0/26"])
    cleanup.append(b.start())
    sp = Speaker(speaker_config(SpeakerPeer(BIRD, BIRD_AS, hold_time=9, password="pw1")),
                 policy(), f"{fabric.workdir}/speaker", netns=fabric.speaker_ns,
                 backoff=(0.2, 2.0))
    sp.set_desired([OWN_BLOCK], complete=True)
    cleanup.append(sp.start())
    wait_for(lambda: established(sp, BIRD), T, what="session")
    b.wait_route(OWN_BLOCK, timeout=T)
    wait_for(lambda: "198.19.10.0/26" in sp.routes(), T, what="learned route")
    old_pid = sp.exabgp_pid
    up_before = sp.counters()[f"peer_up.{BIRD}"]

    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: sp.exabgp_pid not in (None, old_pid), T, what="ExaBGP restarted")
    # Meanwhile BIRD keeps our route (graceful restart: stale, still forwarding) and we keep
    # BIRD's (it advertised GR): neither side dropped routes because ExaBGP died.
    assert OWN_BLOCK in b.routes()
    assert "198.19.10.0/26" in sp.routes()
    wait_for(lambda: sp.counters()[f"peer_up.{BIRD}"] > up_before and established(sp, BIRD),
             T, what="session re-established")
    b.wait_established(SPEAKER)
    assert sp.counters()["exabgp_starts"] == 2
    # Re-announced by us (BIRD's EoR processing would drop a stale route not refreshed).
    wait_for(lambda: "stale" not in b.cli(f"show route {OWN_BLOCK} all").lower()
             and OWN_BLOCK in b.routes(), T, what="route refreshed at BIRD")
    wait_for(lambda: sp.peer(BIRD).stale == 0 and "198.19.10.0/26" in sp.routes(), T,
             what="BIRD's routes refreshed after EoR")


def test_peers_added_and_removed_without_dropping_others(fabric, cleanup):
    b = bird(fabric, ["198.19.10.0/26"])
    f = frr(fabric, ["198.19.20.0/26"])
    cleanup += [b.start(), f.start()]
    only_bird = speaker_config(SpeakerPeer(BIRD, BIRD_AS, hold_time=9, password="pw1"))
    sp = Speaker(only_bird, policy(), f"{fabric.workdir}/speaker", netns=fabric.speaker_ns)
    sp.set_desired([OWN_BLOCK], complete=True)
    cleanup.append(sp.start())
    wait_for(lambda: established(sp, BIRD), T, what="BIRD session")
    pid = sp.exabgp_pid

    both = speaker_config(SpeakerPeer(BIRD, BIRD_AS, hold_time=9, password="pw1"),
                          SpeakerPeer(FRR, FRR_AS, hold_time=9, password="pw2"))
    sp.update_config(both)
    wait_for(lambda: established(sp, FRR), T, what="FRR session after reload")
    f.wait_route(OWN_BLOCK, timeout=T)
    wait_for(lambda: "198.19.20.0/26" in sp.routes(), T, what="FRR route")

    sp.update_config(only_bird)
    f.wait_established  # noqa: B018 - documents the API; removal is checked below
    wait_for(lambda: not f.established(SPEAKER), T, what="FRR session gone after removal")
    assert "198.19.20.0/26" not in sp.routes() and sp.peer(FRR) is None

    # The unchanged BIRD session never dropped, and ExaBGP was never restarted.
    assert sp.counters()[f"peer_up.{BIRD}"] == 1
    assert established(sp, BIRD) and sp.exabgp_pid == pid
    assert "198.19.10.0/26" in sp.routes()


def bird_and_speaker(fabric, cleanup) -> tuple:
    """BIRD announcing one block and our speaker (MD5) announcing OWN_BLOCK, both started."""
    b = bird(fabric, ["198.19.10.0/26"])
    cleanup.append(b.start())
    sp = Speaker(speaker_config(SpeakerPeer(BIRD, BIRD_AS, hold_time=9, password="pw1")),
                 policy(), f"{fabric.workdir}/speaker", netns=fabric.speaker_ns)
    sp.set_desired([OWN_BLOCK], complete=True)
    cleanup.append(sp.start())
    return b, sp


def test_deliberate_stop_withdraws_before_closing(fabric, cleanup):
    b, sp = bird_and_speaker(fabric, cleanup)
    b.wait_route(OWN_BLOCK, timeout=T)
    pid = sp.exabgp_pid
    sp.stop(withdraw=True)
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    # BIRD's graceful-restart time is 120 s; the route is gone well before: it was withdrawn.
    b.wait_route(OWN_BLOCK, present=False, timeout=20)


def test_learned_routes_reach_the_kernel_through_felix_like(fabric, cleanup):
    from felix_like.classify import plain_context
    from felix_like.learned_routes import LearnedRoutes
    from felix_like.routetable import KernelRouteDriver, RouteTable
    from lab.routers import kernel_routes

    b = bird(fabric, ["198.19.10.0/26", "198.19.11.0/26", "198.19.1.5/32", "198.19.200.0/24"])
    cleanup.append(b.start())
    sp = Speaker(speaker_config(SpeakerPeer(BIRD, BIRD_AS, hold_time=9, password="pw1")),
                 policy(), f"{fabric.workdir}/speaker", netns=fabric.speaker_ns)
    cleanup.append(sp.start())
    driver = KernelRouteDriver(netns=fabric.speaker_ns)
    table = RouteTable(driver=driver, protocol=73, class_order=("bgp",))
    learned = LearnedRoutes(table)
    learned.set_context(plain_context(own_blocks=(OWN_BLOCK,)), {})
    try:
        def sync() -> dict:
            learned.apply(sp.take_route_changes())
            table.mark_in_sync()
            table.apply()
            return kernel_routes(fabric.speaker_ns)

        wait_for(lambda: {"198.19.10.0/26", "198.19.11.0/26"} <= set(sync()), T,
                 what="learned routes in the speaker namespace's kernel")
        kr = kernel_routes(fabric.speaker_ns)
        assert kr["198.19.10.0/26"] == (BIRD,)
        # Rejected routes never reach the kernel.
        assert "198.19.1.5/32" not in kr and "198.19.200.0/24" not in kr
        b.static_routes = ["198.19.11.0/26"]
        b.configure()
        wait_for(lambda: "198.19.10.0/26" not in sync(), T, what="withdrawn route leaves kernel")
        assert "198.19.11.0/26" in kernel_routes(fabric.speaker_ns)
    finally:
        driver.close()


def test_relay_death_restarts_exabgp_and_resyncs(fabric, cleanup):
    b = bird(fabric, ["198.19.10.0/26"])
    cleanup.append(b.start())
    sp = Speaker(speaker_config(SpeakerPeer(BIRD, BIRD_AS, hold_time=9, password="pw1")),
                 policy(), f"{fabric.workdir}/speaker", netns=fabric.speaker_ns,
                 backoff=(0.2, 2.0))
    sp.set_desired([OWN_BLOCK], complete=True)
    cleanup.append(sp.start())
    b.wait_route(OWN_BLOCK, timeout=T)
    exa = sp.exabgp_pid
    relay = int(open(f"/proc/{exa}/task/{exa}/children").read().split()[0])
    os.kill(relay, signal.SIGKILL)
    # The supervisor sees the relay connection drop and restarts ExaBGP with a new relay.
    wait_for(lambda: sp.exabgp_pid not in (None, exa), T, what="ExaBGP restarted")
    wait_for(lambda: sp.counters()[f"peer_up.{BIRD}"] >= 2 and established(sp, BIRD), T,
             what="session back")
    wait_for(lambda: "198.19.10.0/26" in sp.routes() and sp.peer(BIRD).stale == 0, T,
             what="routes relearned")
    b.wait_route(OWN_BLOCK, timeout=T)


def test_max_prefix_teardown_once_then_held_down(fabric, cleanup):
    many = [f"198.19.{40 + i}.0/24" for i in range(12)]
    b = bird(fabric, many)
    cleanup.append(b.start())
    sp = Speaker(speaker_config(SpeakerPeer(BIRD, BIRD_AS, hold_time=9, password="pw1",
                                           max_prefix=10, max_prefix_teardown=True)),
                 policy(), f"{fabric.workdir}/speaker", netns=fabric.speaker_ns)
    cleanup.append(sp.start())
    wait_for(lambda: sp.counters().get("max_prefix_events") == 1, T, what="max-prefix hit")
    # Torn down, ExaBGP reconnects; the peer stays held down instead of flapping.
    wait_for(lambda: sp.counters().get(f"peer_up.{BIRD}", 0) >= 2 and b.established(SPEAKER),
             T, what="session back after the teardown")
    wait_for(lambda: sp.peer(BIRD).rejected.get("max-prefix", 0) >= 23, T,
             what="re-sent routes rejected while held down")
    assert sp.peer(BIRD).state == "max-prefix" and sp.routes() == {}
    assert sp.counters()["max_prefix_events"] == 1


def _exe_and_env(pid: int) -> tuple[str, dict[str, str]]:
    """The binary a process runs and its environment, read from /proc."""
    exe = os.path.realpath(f"/proc/{pid}/exe")
    with open(f"/proc/{pid}/environ", "rb") as f:
        items = [kv.decode(errors="replace") for kv in f.read().split(b"\0") if kv]
    return exe, dict(kv.split("=", 1) for kv in items if "=" in kv)


def _cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0") if a]


def test_default_exabgp_runs_under_pypy_through_the_launcher(fabric, cleanup):
    """scripts/setup installs ExaBGP under PyPy in our venv; the speaker picks it by default
    (so every other test here runs PyPy's ExaBGP), with PyPy's GC settings, started through
    exabgp_launch.py with validate-only NLRI decoding (issue 17)."""
    assert "exabgp-pypy" in default_exabgp(), "scripts/setup did not create .venv/exabgp-pypy"
    b, sp = bird_and_speaker(fabric, cleanup)
    wait_for(lambda: established(sp, BIRD), T, what="session with BIRD")
    exe, env = _exe_and_env(sp.exabgp_pid)
    assert os.path.basename(exe).startswith("pypy"), exe
    assert is_pypy(sp.exabgp_interpreter)
    assert _cmdline(sp.exabgp_pid)[1] == LAUNCHER
    assert env.get(NLRI_ENV) == "validate"
    assert {k: env.get(k) for k in PYPY_GC_ENV} == PYPY_GC_ENV
    b.wait_route(OWN_BLOCK, timeout=T)
    wait_for(lambda: "198.19.10.0/26" in sp.routes(), T, what="learned route")


def test_cpython_exabgp_peers_with_bird(fabric, cleanup):
    """The CPython ExaBGP (setup.cfg's dependency: the fallback, and the small-footprint
    choice through bgp.exabgp_path, issue 17) works end to end through the launcher: MD5
    session, routes both ways, filters, withdrawals both ways."""
    cpython_exabgp = os.path.join(os.path.dirname(sys.executable), "exabgp")
    b = bird(fabric, ["198.19.10.0/26", "198.19.11.0/26", "198.19.1.5/32"])
    cleanup.append(b.start())
    sp = Speaker(speaker_config(SpeakerPeer(BIRD, BIRD_AS, hold_time=9, password="pw1")),
                 policy(), f"{fabric.workdir}/speaker", netns=fabric.speaker_ns,
                 exabgp=cpython_exabgp)
    sp.set_desired([OWN_BLOCK], complete=True)
    cleanup.append(sp.start())
    wait_for(lambda: established(sp, BIRD), T, what="session with BIRD")
    b.wait_established(SPEAKER)
    exe, env = _exe_and_env(sp.exabgp_pid)
    assert os.path.basename(exe).startswith("python"), exe
    assert not is_pypy(sp.exabgp_interpreter)
    assert _cmdline(sp.exabgp_pid)[1] == LAUNCHER
    assert env.get(NLRI_ENV) == "validate"
    assert not any(k.startswith("PYPY_GC_") for k in env)

    b.wait_route(OWN_BLOCK, timeout=T)
    assert b.routes()[OWN_BLOCK].nexthops == (SPEAKER,)
    want = {"198.19.10.0/26", "198.19.11.0/26"}
    wait_for(lambda: set(sp.routes()) == want, T, what=f"speaker RIB == {want}")
    assert sp.routes()["198.19.10.0/26"].nexthops == (BIRD,)
    assert sp.peer(BIRD).rejected == {"own-block": 1}

    sp.set_desired(["198.19.1.64/26"])
    b.wait_route(OWN_BLOCK, present=False, timeout=T)
    b.wait_route("198.19.1.64/26", timeout=T)
    b.static_routes = ["198.19.11.0/26"]
    b.configure()
    wait_for(lambda: set(sp.routes()) == {"198.19.11.0/26"}, T, what="BIRD withdrawal learned")
    assert sp.counters().get("acks.error", 0) == 0


# -- issue 18: how a session ends ----------------------------------------------------------
def test_peer_cease_drops_its_routes_at_once_and_keeps_the_notification(fabric, cleanup):
    """BIRD (graceful restart on, 120 s) disables its session with a message: its routes
    go within convergence, not after 120 s, and the NOTIFICATION stays in our peer status
    while BIRD refuses our reconnects."""
    from lab.routers import BIRDC

    b, sp = bird_and_speaker(fabric, cleanup)
    wait_for(lambda: "198.19.10.0/26" in sp.routes(), T, what="BIRD's route learned")
    assert sp.peer(BIRD).graceful_restart == 120
    said = b._run([BIRDC, "-s", b.socket, "disable", b.proto_name(SPEAKER), '"maintenance"'])
    assert "disabled" in said, said
    # 20 s: well below BIRD's restart time (120 s), which the old code waited out.
    wait_for(lambda: "198.19.10.0/26" not in sp.routes(), 20, what="BIRD's route gone")
    assert sp.peer(BIRD).stale == 0
    # ExaBGP keeps trying to reconnect (BIRD refuses): the Cease stays visible.
    notifications = sp.counters().get("notifications", 0)
    wait_for(lambda: sp.peer(BIRD).state != "established", T, what="session down")
    time.sleep(6)
    st = sp.peer(BIRD)
    assert st.last_notification == 'received 6/2 Shutdown Communication: "maintenance"', st
    assert st.last_error.startswith('notification received 6/2 Shutdown Communication: '
                                    '"maintenance"'), st.last_error
    assert sp.counters().get("notifications", 0) == notifications
    b._run([BIRDC, "-s", b.socket, "enable", b.proto_name(SPEAKER)])
    wait_for(lambda: established(sp, BIRD) and "198.19.10.0/26" in sp.routes(), T,
             what="session and route back")
    assert sp.peer(BIRD).last_notification == ""


def test_frr_neighbor_shutdown_drops_its_routes_at_once(fabric, cleanup):
    """FRR (graceful restart on, 120 s) shuts our neighbour down: Cease 6/2 with its
    shutdown message; its routes go at once, not after 120 s."""
    f = frr(fabric, ["198.19.20.0/26"])
    cleanup.append(f.start())
    sp = Speaker(speaker_config(SpeakerPeer(FRR, FRR_AS, hold_time=9, password="pw2")),
                 policy(), f"{fabric.workdir}/speaker", netns=fabric.speaker_ns)
    sp.set_desired([OWN_BLOCK], complete=True)
    cleanup.append(sp.start())
    wait_for(lambda: "198.19.20.0/26" in sp.routes(), T, what="FRR's route learned")
    assert sp.peer(FRR).graceful_restart == 120
    f.configure(f"router bgp {FRR_AS}", f"neighbor {SPEAKER} shutdown message maintenance")
    wait_for(lambda: "198.19.20.0/26" not in sp.routes(), 20, what="FRR's route gone")
    st = sp.peer(FRR)
    assert st.stale == 0 and st.last_notification.startswith("received 6/2"), st
    assert "maintenance" in st.last_notification, st


class SlowBird(BirdRouter):
    """BIRD waiting 30 s before it connects again after an error (the lab's 1 s would
    have the session back before we can look at what it kept)."""

    def config_text(self) -> str:
        text = super().config_text()
        assert "error wait time 1, 10;" in text
        return text.replace("error wait time 1, 10;", "error wait time 30, 60;")


def _max_prefix_setup(fabric, cleanup, graceful_restart):
    many = [f"198.19.{40 + i}.0/24" for i in range(12)]
    b = SlowBird(fabric.bird_ns, f"{fabric.workdir}/bird", BIRD, BIRD_AS,
                 [BgpNeighbor(SPEAKER, LOCAL_AS, password="pw1")], static_routes=["198.19.40.0/24"])
    cleanup.append(b.start())
    # Passive: only BIRD reconnects (after its error wait), so the session stays down long
    # enough to see what BIRD kept of ours.
    sp = Speaker(speaker_config(SpeakerPeer(BIRD, BIRD_AS, hold_time=9, password="pw1",
                                           passive=True, max_prefix=10,
                                           max_prefix_teardown=True,
                                           graceful_restart=graceful_restart)),
                 policy(), f"{fabric.workdir}/speaker", netns=fabric.speaker_ns)
    sp.set_desired([OWN_BLOCK], complete=True)
    cleanup.append(sp.start())
    wait_for(lambda: established(sp, BIRD), T, what="session")
    b.wait_route(OWN_BLOCK, timeout=T)
    b.static_routes = many  # over our limit of 10
    b.configure()
    wait_for(lambda: sp.counters().get("max_prefix_events") == 1, T, what="max-prefix hit")
    return b, sp


def test_max_prefix_teardown_sends_cease_1_without_graceful_restart(fabric, cleanup):
    b, sp = _max_prefix_setup(fabric, cleanup, graceful_restart=None)
    proto = b.proto_name(SPEAKER)
    wait_for(lambda: "Maximum number of prefixes reached" in b.cli(f"show protocols all {proto}"),
             20, what="BIRD records our Cease, subcode 1")
    b.wait_route(OWN_BLOCK, present=False, timeout=10)
    assert not b.established(SPEAKER)
    st = sp.peer(BIRD)
    assert st.last_notification == "sent 6/1 (max-prefix 10)", st
    assert "max-prefix 10 exceeded" in st.last_error and "sent 6/1" in st.last_error


def test_max_prefix_teardown_withdraws_first_under_graceful_restart(fabric, cleanup):
    """ExaBGP 5.0.15 closes without a NOTIFICATION when we announced graceful restart:
    BIRD sees a restart (no Cease) but holds none of our routes, withdrawn first."""
    b, sp = _max_prefix_setup(fabric, cleanup, graceful_restart=120)
    wait_for(lambda: not b.established(SPEAKER), 20, what="session torn down")
    # Not kept as stale for our restart time (120 s): gone before the session is back.
    b.wait_route(OWN_BLOCK, present=False, timeout=10)
    assert not b.established(SPEAKER)
    assert sp.counters().get("teardowns.cease1") == 1


def test_peer_tcp_loss_keeps_its_routes_for_the_restart_time(fabric, cleanup):
    """BIRD killed (no NOTIFICATION: its kernel closes the socket): its route is held
    stale for its restart time (120 s), as graceful restart intends."""
    b, sp = bird_and_speaker(fabric, cleanup)
    wait_for(lambda: "198.19.10.0/26" in sp.routes(), T, what="BIRD's route learned")
    for d in b.daemons:
        d.signal(signal.SIGKILL)
    wait_for(lambda: sp.peer(BIRD).state != "established", T, what="session lost")
    time.sleep(5)
    st = sp.peer(BIRD)
    assert "198.19.10.0/26" in sp.routes() and st.stale == 1, st
    assert st.last_notification == ""


@pytest.mark.parametrize("graceful_restart", [None, 120])
def test_removed_peer_gets_cease_3_and_keeps_none_of_our_routes(fabric, cleanup,
                                                                graceful_restart):
    """FRR (graceful restart on, 120 s) removed from our config: without graceful restart
    ExaBGP sends Cease 3 (Peer De-configured); with it ExaBGP closes silently, so our
    routes were withdrawn first. Either way FRR holds none of them stale."""
    b = bird(fabric, ["198.19.10.0/26"])
    f = frr(fabric, ["198.19.20.0/26"])
    cleanup += [b.start(), f.start()]
    bird_peer = SpeakerPeer(BIRD, BIRD_AS, hold_time=9, password="pw1")
    # Passive towards FRR: ExaBGP would reconnect right after the teardown, and the reload
    # then closes that new session silently -- FRR's last reset would name that instead.
    sp = Speaker(speaker_config(bird_peer, SpeakerPeer(FRR, FRR_AS, hold_time=9, password="pw2",
                                                      passive=True,
                                                      graceful_restart=graceful_restart)),
                 policy(), f"{fabric.workdir}/speaker", netns=fabric.speaker_ns)
    sp.set_desired([OWN_BLOCK], complete=True)
    cleanup.append(sp.start())
    wait_for(lambda: established(sp, BIRD) and established(sp, FRR), T, what="both sessions")
    f.wait_route(OWN_BLOCK, timeout=T)
    sp.update_config(speaker_config(bird_peer))
    f.wait_route(OWN_BLOCK, present=False, timeout=10)  # not FRR's 120 s for a restart
    if graceful_restart is None:
        import json

        nb = json.loads(f.cli(f"show bgp neighbor {SPEAKER} json"))[SPEAKER]
        assert (nb["lastErrorCodeSubcode"], nb["lastNotificationReason"]) == \
            ("0603", "Cease/Peer De-configured"), nb
    assert sp.peer(FRR) is None and established(sp, BIRD)
    assert sp.counters()["teardowns.cease3"] == 1


def test_peer_hold_timer_expiry_keeps_its_routes_for_the_restart_time(fabric, cleanup):
    """BIRD frozen (SIGSTOP): our 9 s hold timer expires and ExaBGP sends 4/0 -- a
    NOTIFICATION, but the liveness failure graceful restart is for: routes held stale."""
    b, sp = bird_and_speaker(fabric, cleanup)
    wait_for(lambda: "198.19.10.0/26" in sp.routes(), T, what="BIRD's route learned")
    for d in b.daemons:
        d.signal(signal.SIGSTOP)
    try:
        wait_for(lambda: sp.peer(BIRD).state != "established", T, what="hold timer expiry")
        st = sp.peer(BIRD)
        assert st.last_notification.startswith("sent 4/0"), st
        assert "198.19.10.0/26" in sp.routes() and st.stale == 1, st
    finally:
        for d in b.daemons:
            d.signal(signal.SIGCONT)
