"""A top-of-rack router dies (SIGKILL: no NOTIFICATION, like a power cut) and comes back.

ToR design, one node per rack. The FRR ToR of rack B dies. Its kernel closes the dead
daemon's TCP sockets, so node b1 sees the session end at once (a ToR that hangs instead
would be noticed when the 9 s hold timer expires). Routes learned only through that
ToR are then held for the ToR's graceful-restart time (20 s here, as announced in its
OPEN: GR cannot tell a crash from a restart) and withdrawn after it. When the ToR
returns, routes and traffic return."""

import signal
import time

import pytest

from lab.netns import sh
from lab.procs import wait_for
from tests.e2e.conftest import build_lab

pytestmark = pytest.mark.e2e

HOLD = 9
GR_TIME = 20


@pytest.fixture(scope="module")
def lab():
    the_lab = build_lab("tor", nodes_per_rack=1, pods_per_node=1, tor_gr_time=GR_TIME)
    try:
        yield the_lab
    finally:
        assert the_lab.down() == []


def kernel_has(lab, node: str, prefix: str) -> bool:
    return prefix in sh(["ip", "route", "show", "proto", "73"], netns=lab.node(node).netns).stdout


def test_tor_death_withdraws_after_hold_plus_gr_and_recovers(lab):
    a1_block = lab.status("node-a1")["blocks"][0]
    a1_pod, b1_pod = lab.pods["node-a1/p1"], lab.pods["node-b1/p1"]
    # Rack A's block reaches b1 through both ToRs a moment after the nodes are ready.
    wait_for(lambda: kernel_has(lab, "node-b1", a1_block), 30, interval=0.2,
             what="a1's block in b1's kernel before the fault")
    tor = lab.tors["b"]
    for d in tor.daemons:
        d.signal(signal.SIGKILL)
    t0 = time.monotonic()
    wait_for(lambda: lab.status("node-b1")["peers"][0]["state"] != "established", HOLD + 10,
             interval=0.2, what="b1's session to the dead ToR to end")
    session_down = time.monotonic() - t0
    wait_for(lambda: not kernel_has(lab, "node-b1", a1_block), HOLD + GR_TIME + 15,
             interval=0.2, what="routes learned only via the dead ToR withdrawn on b1")
    withdrawn = time.monotonic() - t0
    print(f"ToR SIGKILL: b1 session down after {session_down:.1f}s (hold {HOLD}s), "
          f"routes via it withdrawn after {withdrawn:.1f}s (hold + GR {GR_TIME}s)")
    assert session_down <= HOLD + 5
    assert HOLD <= withdrawn <= HOLD + GR_TIME + 10
    # The ToR returns: sessions, routes and traffic come back.
    tor.stop()
    tor.start()
    t1 = time.monotonic()
    wait_for(lambda: kernel_has(lab, "node-b1", a1_block), 60, interval=0.5,
             what="routes back on b1 after the ToR returned")
    back = time.monotonic() - t1
    print(f"ToR back: routes on b1 again after {back:.1f}s")
    assert lab.ping(b1_pod["netns"], a1_pod["ip"], count=3)
    assert lab.ping(a1_pod["netns"], b1_pod["ip"], count=3)
