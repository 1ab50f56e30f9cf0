"""Capture real ExaBGP 5.0.15 API output for the contract test (run as root):

    .venv/bin/python -m tests.bgp.capture_samples tests/bgp/samples/exabgp-5.0.15.jsonl

Scenario: our speaker peers with BIRD 2 and FRR (MD5); both announce routes (one prefix from
both: ECMP; 3000 prefixes from BIRD: a long UPDATE line), BIRD withdraws some, FRR is
stopped (its Cease NOTIFICATION, session down), we ask ExaBGP for a summary and an invalid
command (text answer, ``error`` ack), then shut down.
"""

from __future__ import annotations

import os
import sys
import tempfile

from bgpd.exabgp_config import PeerConfig, SpeakerConfig
from bgpd.import_policy import ImportPolicy
from bgpd.speaker import Speaker
from lab.netns import NetnsSet
from lab.procs import wait_for
from lab.routers import BgpNeighbor, BirdRouter, FrrRouter
from tests.bgp.conftest import BIRD, BIRD_AS, FRR, FRR_AS, LOCAL_AS, POOLS, SPEAKER, Fabric


def build_fabric(owned: NetnsSet, workdir: str) -> Fabric:
    from lab.netns import run_prefix, switch_with_hosts

    p = run_prefix("nrs")
    names = switch_with_hosts(owned, p, {"e": ("e", SPEAKER), "b": ("b", BIRD),
                                         "f": ("f", FRR)})
    return Fabric(p, names["e"], names["b"], names["f"], workdir)


def main(out: str) -> None:
    owned = NetnsSet()
    wd = tempfile.mkdtemp(prefix="nr-capture-")
    os.chmod(wd, 0o755)
    trace = os.path.join(wd, "trace.jsonl")
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
                                   (PeerConfig(BIRD, BIRD_AS, hold_time=9, password="pw1"),
                                    PeerConfig(FRR, FRR_AS, hold_time=9, password="pw2"))),
                     ImportPolicy(LOCAL_AS, POOLS), f"{wd}/speaker", netns=fab.speaker_ns,
                     trace_path=trace)
        sp.set_desired(["198.19.1.0/26"])
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
        for it in reversed(items):
            it.stop()
        owned.delete_all()
    with open(trace, "rb") as src, open(out, "wb") as dst:
        dst.write(src.read())
    import shutil

    shutil.rmtree(wd, ignore_errors=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1])
