"""`noderouter ipam ...` and `noderouter pool ...` against a real etcd."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from bgpd.cli.main import main

pytestmark = pytest.mark.integration


@pytest.fixture
def run(etcd_server):
    runner = CliRunner()
    env = {"NODEROUTER_ETCD_ENDPOINTS": etcd_server.endpoint}

    def invoke(*args, code=0, input=None):
        res = runner.invoke(main, list(args), env=env, input=input, catch_exceptions=False)
        assert res.exit_code == code, res.output
        return res.stdout if code == 0 else res.output
    return invoke


def test_pool_add_list_delete(run):
    out = json.loads(run("pool", "add", "198.19.0.0/16", "--ipip-mode", "CrossSubnet",
                         "--nat-outgoing", "-o", "json"))
    assert out["cidr"] == "198.19.0.0/16" and out["block_size"] == 26 and out["nat_outgoing"]
    run("pool", "add", "198.18.128.0/24", "--block-size", "28", "--strict-affinity")
    err = run("pool", "add", "198.19.3.0/24", code=1)
    assert "overlaps existing pool(s) 198.19.0.0/16" in err
    assert "block size" in run("pool", "add", "198.17.0.0/24", "--block-size", "20", code=2)
    table = run("pool", "list")
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["CIDR", "BLOCK_SIZE", "BLOCKS_TOTAL"]
    assert any(ln.startswith("198.19.0.0/16") and "CrossSubnet" in ln for ln in lines)
    assert any(ln.startswith("198.18.128.0/24") for ln in lines)
    rows = json.loads(run("pool", "list", "-o", "json"))
    assert [r["cidr"] for r in rows] == ["198.18.128.0/24", "198.19.0.0/16"]
    run("pool", "delete", "198.18.128.0/24")
    assert [r["cidr"] for r in json.loads(run("pool", "list", "-o", "json"))] == ["198.19.0.0/16"]


def test_show_check_gc_release(run, etcd_server, tmp_path):
    from ipam.allocator import Ipam
    from ipam.store import EtcdStore

    run("pool", "add", "198.19.0.0/16")
    node = Ipam(EtcdStore(etcd_server.endpoint), "node-a", cooldown=0)
    ips = {h: node.allocate(h, {"namespace": "ns", "pod": h[-2:]})
           for h in ("k8s-pod-network.c1", "k8s-pod-network.c2", "k8s-pod-network.c3")}
    node.allocate("ipip-tunnel-addr-node-a")

    show = json.loads(run("ipam", "show", "--allocations", "-o", "json"))
    assert show["pools"][0]["used"] == 4
    assert show["blocks"][0]["node"] == "node-a" and show["blocks"][0]["state"] == "confirmed"
    assert {a["handle"] for a in show["allocations"]} >= set(ips)
    table = run("ipam", "show", "--allocations")
    assert "POOLS" in table and "BLOCKS" in table and ips["k8s-pod-network.c1"] in table
    assert any("node-a" in ln and "confirmed" in ln for ln in table.splitlines())

    live = tmp_path / "live.txt"
    live.write_text("# live pods\nk8s-pod-network.c1\nk8s-pod-network.c2\n")
    rep = json.loads(run("ipam", "check", "--live-handles-file", str(live), "--live-node", "node-a",
                         "-o", "json", code=1))
    assert [leak["handle"] for leak in rep["leaks"]] == ["k8s-pod-network.c3"]
    assert rep["clean"] is False
    table = run("ipam", "check", "--live-handles-file", str(live), "--live-node", "node-a", code=1)
    assert "leak" in table and ips["k8s-pod-network.c3"] in table and "PROBLEMS FOUND" in table
    # JSON list on stdin works too.
    run("ipam", "check", "--live-handles-file", "-", "--live-node", "node-a",
        input=json.dumps(sorted(ips)))

    g1 = json.loads(run("ipam", "gc", "--live-handles-file", str(live), "--live-node", "node-a",
                        "--grace", "0s", "-o", "json"))
    # grace 0: a leak is due at its first sighting
    assert [r["handle"] for r in g1["released"]] == ["k8s-pod-network.c3"]
    run("ipam", "check", "--live-handles-file", str(live), "--live-node", "node-a")
    assert "(none)" in run("ipam", "gc", "--live-handles-file", str(live), "--live-node", "node-a",
                           "--dry-run")

    out = json.loads(run("ipam", "release", "--handle", "k8s-pod-network.c1", "-o", "json"))
    assert out == [{"ip": ips["k8s-pod-network.c1"], "released": True}]
    table = run("ipam", "release", "--ip", ips["k8s-pod-network.c2"])
    assert ips["k8s-pod-network.c2"] in table
    assert "(none)" in run("ipam", "release", "--ip", ips["k8s-pod-network.c2"])
    assert "exactly one" in run("ipam", "release", code=2)
    assert "--force" in run("pool", "delete", "198.19.0.0/16", code=1)
    assert json.loads(run("pool", "delete", "198.19.0.0/16", "--force", "-o", "json"))["released"] == 1


def test_unreachable_etcd_is_a_clear_failure(run, etcd_server):
    res = CliRunner().invoke(main, ["pool", "list", "--etcd-endpoints", "127.0.0.1:1",
                                    "--etcd-timeout", "1"])
    assert res.exit_code == 1
    assert "did not answer" in res.output and "127.0.0.1:1" in res.output
