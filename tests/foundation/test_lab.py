"""The lab itself: routed underlay through real BIRD and FRR, etcd reachable, clean teardown."""

import glob
import os
import subprocess
import sys

import pytest

from lab.netns import sh
from lab.topology import Lab

pytestmark = pytest.mark.e2e


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_two_racks_route_through_the_spine_and_tear_down_cleanly():
    lab = Lab(nodes_per_rack=1, design="mesh")
    try:
        lab.up()
        a1, b1 = lab.node("node-a1"), lab.node("node-b1")
        # BIRD (rack A) and FRR (rack B) hold an eBGP session across the spine...
        assert lab.tors["a"].established("198.18.0.3")
        assert lab.tors["b"].established("198.18.0.2")
        # ...and each installed the other rack's subnet, learned over BGP, in its kernel.
        assert "proto bird" in sh(["ip", "route", "show", "198.18.2.0/24"],
                                  netns=lab.ns("tora")).stdout
        assert "proto bgp" in sh(["ip", "route", "show", "198.18.1.0/24"],
                                 netns=lab.ns("torb")).stdout
        # A node in rack A reaches etcd and a node in rack B.
        health = lab.exec(a1.name, ["curl", "-s", "-m", "3", f"http://{lab.etcd_endpoint}/health"])
        assert '"health":"true"' in health.stdout
        assert lab.ping(a1.netns, b1.address, count=2)
        pids = [p for t in lab.tors.values() for p in t.pids()] + [lab.etcd.daemon.pid]
        namespaces = list(lab.netns_set.names)
        workdir = lab.workdir
        frr_rundir = lab.tors["b"].rundir
    finally:
        errors = lab.down()
    assert errors == []
    assert not [n for n in namespaces if os.path.exists(f"/run/netns/{n}")]
    assert not [p for p in pids if _alive(p)]
    assert not os.path.exists(workdir) and not os.path.exists(frr_rundir)


def test_lab_refuses_a_prefix_already_in_use(netns_set):
    taken = netns_set.add("nrdup-spine")
    assert taken
    with pytest.raises(Exception, match="already exist"):
        Lab(prefix="nrdup", nodes_per_rack=1).up()
    # The refusal touched nothing: our namespace is still there, nothing else was made.
    assert os.path.exists("/run/netns/nrdup-spine")
    assert not glob.glob("/run/netns/nrdup-a*")


def test_lab_cli_up_and_down():
    prefix = "nrcli" + os.urandom(1).hex()
    up = subprocess.run([sys.executable, "-m", "lab.cli", "up", "--nodes-per-rack", "1",
                         "--prefix", prefix], capture_output=True, text=True, timeout=180)
    try:
        assert up.returncode == 0, up.stderr
        assert f"noderouter-lab down {prefix}" in up.stdout
        listing = subprocess.run([sys.executable, "-m", "lab.cli", "list", "-o", "json"],
                                 capture_output=True, text=True)
        assert prefix in listing.stdout
    finally:
        down = subprocess.run([sys.executable, "-m", "lab.cli", "down", prefix],
                              capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert not glob.glob(f"/run/netns/{prefix}-*")
