"""IPAM under churn in the lab: 8 nodes create and delete pods through the real CNI plugin
at the same time; one CNI ADD is SIGKILLed in flight (the node dies mid-allocation).
No address is ever held by two live pods; `ipam check` accounts for every address;
`ipam gc` reclaims the leak and nothing that is live."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from lab.topology import Lab

pytestmark = pytest.mark.e2e

CYCLES = 12


@pytest.fixture(scope="module")
def lab():
    the_lab = Lab(nodes_per_rack=4, design="tor")
    try:
        the_lab.up()
        # No daemons here (they would seed it): the operator creates the pool.
        the_lab.nr("node-a1", "pool", "add", the_lab.pool_cidr, "--block-size", "26",
                   "--etcd-endpoints", the_lab.etcd_endpoint, check=True)
        yield the_lab
    finally:
        assert the_lab.down() == []


def test_churn_with_a_killed_allocation(lab):
    holders: dict[str, str] = {}
    duplicates: list[str] = []
    errors: list[str] = []
    live: dict[str, str] = {}            # handle -> ip of pods left running at the end
    killed: list[str] = []
    lock = threading.Lock()

    def worker(node: str, kill_at: int | None) -> None:
        short = node.removeprefix("node-")
        for i in range(CYCLES):
            ns = lab.netns_set.add(lab.ns(f"c{short}-{i}"))
            cid = f"churn{short}{i:04d}".ljust(16, "0")
            if i == kill_at:
                # Start ADD and kill it in flight: what a node crash leaves behind.
                exe = os.path.join(os.path.dirname(sys.executable), "noderouter-cni")
                env = {"PATH": os.environ["PATH"], "CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid,
                       "CNI_IFNAME": "eth0", "CNI_NETNS": f"/run/netns/{ns}",
                       "CNI_PATH": "/opt/cni/bin"}
                proc = subprocess.Popen(["ip", "netns", "exec", lab.node(node).netns, exe],
                                        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, env=env, text=True)
                proc.stdin.write(json.dumps(lab.cni_conf(node)))
                proc.stdin.close()
                time.sleep(0.25)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                with lock:
                    killed.append(f"k8s-pod-network.{cid}")
                return                   # the node is gone
            res = lab.cni(node, "ADD", cid, ns)
            if res.returncode != 0:
                with lock:
                    errors.append(f"{node} ADD {i}: {res.stdout} {res.stderr}")
                continue
            ip = json.loads(res.stdout)["ips"][0]["address"].split("/")[0]
            with lock:
                if ip in holders:
                    duplicates.append(f"{ip} held by {holders[ip]} and {cid}")
                holders[ip] = cid
            if i == CYCLES - 1:
                with lock:
                    live[f"k8s-pod-network.{cid}"] = ip
                continue                 # left running for check/gc
            with lock:
                holders.pop(ip, None)    # released from here on (conservative)
            res = lab.cni(node, "DEL", cid, ns)
            if res.returncode != 0:
                with lock:
                    errors.append(f"{node} DEL {i}: {res.stdout} {res.stderr}")

    threads = [threading.Thread(target=worker, args=(n.name, 5 if n.name == "node-b3" else None))
               for n in lab.nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"churn: {len(lab.nodes)} nodes x {CYCLES} pods, {len(duplicates)} duplicates, "
          f"{len(errors)} errors, killed {killed}")
    assert duplicates == []
    assert errors == []
    assert len(live) == len(lab.nodes) - 1

    handles = os.path.join(lab.workdir, "live.json")
    with open(handles, "w") as f:
        json.dump(sorted(live), f)
    ep = ["--etcd-endpoints", lab.etcd_endpoint]
    check = lab.nr("node-a1", "ipam", "check", "-o", "json", "--live-handles-file", handles, *ep)
    report = json.loads(check.stdout)
    leaked = {leak["handle"] for leak in report["leaks"]}
    assert leaked <= set(killed), leaked          # the only possible leak is the killed ADD
    assert report["double_allocations"] == []
    # Every address in etcd is a live pod or the killed allocation.
    assert report["allocations"] == len(live) + len(leaked)
    gc = ["ipam", "gc", "-o", "json", "--grace", "1s", "--live-handles-file", handles, *ep]
    json.loads(lab.nr("node-a1", *gc, check=True).stdout)
    time.sleep(1.5)
    second = json.loads(lab.nr("node-a1", *gc, check=True).stdout)
    assert {r["handle"] for r in second["released"]} == leaked
    shown = lab.nr("node-a1", "ipam", "show", "--allocations", "-o", "json", *ep,
                   check=True).stdout
    for handle, ip in live.items():
        assert ip in shown, f"gc reclaimed live {handle} ({ip})"
    final = lab.nr("node-a1", "ipam", "check", "-o", "json", "--live-handles-file", handles, *ep)
    assert final.returncode == 0, final.stdout
