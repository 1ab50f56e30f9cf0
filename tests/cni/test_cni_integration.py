"""The real ``noderouter-cni`` executable against a real etcd and real netlink.

Every run happens inside a throwaway "node" namespace (``ip netns exec``); pods are
throwaway namespaces too. Each test checks the kernel with iproute2 and IPAM through
etcd, and that a failed request leaves nothing behind.
"""

from __future__ import annotations

import ipaddress
import json
import os

import pytest

from bgpd.cni.protocol import SUPPORTED_VERSIONS, host_veth_name
from bgpd.cni.records import LOCK_DIR

from .conftest import NODE_ADDR, POOL, CniBench

pytestmark = pytest.mark.integration

GW = "169.254.1.1"


# ------------------------------------------------------------------ helpers

def assert_valid_result(doc: dict, version: str, netns: str, ifname: str = "eth0") -> str:
    """The ADD result per the spec of ``version``; returns the pod address (no /32)."""
    assert doc["cniVersion"] == version
    assert set(doc) <= {"cniVersion", "interfaces", "ips", "routes", "dns"}
    ifaces = doc["interfaces"]
    assert isinstance(ifaces, list) and len(ifaces) == 2
    for it in ifaces:
        assert isinstance(it["name"], str) and it["name"]
        assert len(it["mac"].split(":")) == 6
    host_if, pod_if = ifaces
    assert "sandbox" not in host_if                       # host interfaces have none
    assert pod_if["name"] == ifname and pod_if["sandbox"] == netns
    assert len(doc["ips"]) == 1
    ip = doc["ips"][0]
    net = ipaddress.ip_interface(ip["address"])
    assert net.network.prefixlen == 32 and net.ip in ipaddress.ip_network(POOL)
    assert ip["gateway"] == GW
    assert ip["interface"] == 1 and 0 <= ip["interface"] < len(ifaces)
    if version in ("0.3.0", "0.3.1", "0.4.0"):
        assert ip["version"] == "4"
    else:
        assert "version" not in ip                        # removed in 1.0.0
    assert doc["routes"] == [{"dst": "0.0.0.0/0", "gw": GW}]
    for r in doc["routes"]:
        ipaddress.ip_network(r["dst"])
    return str(net.ip)


def links(bench: CniBench) -> set[str]:
    out = bench.node_sh("ip", "-j", "link", "show").stdout
    return {link["ifname"] for link in json.loads(out)}


def our_routes(bench: CniBench) -> list[dict]:
    # Filtered here, not with `ip route show proto 73`, which drops the field it filters on.
    out = bench.node_sh("ip", "-j", "-4", "route", "show", "table", "all").stdout
    return [r for r in json.loads(out or "[]") if str(r.get("protocol")) == "73"]


def records(bench: CniBench) -> list[str]:
    """Every file in the state dir (temp files included), but the lock directory."""
    if not os.path.isdir(bench.state_dir):
        return []
    return sorted(n for n in os.listdir(bench.state_dir) if n != LOCK_DIR)


def lock_files(bench: CniBench) -> list[str]:
    path = os.path.join(bench.state_dir, LOCK_DIR)
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def endpoints(bench: CniBench) -> dict:
    """Every WorkloadEndpoint in etcd (key -> document), as the CNI wrote them."""
    return bench.ipam("get-prefix", "/noderouter/policy/v1/workloadendpoints/")


def assert_nothing_left(bench: CniBench, cid: str = "c1") -> None:
    """No veth, no route of ours, no record (temp files included), no lock file, no
    address, no WorkloadEndpoint."""
    assert endpoints(bench) == {}
    assert host_veth_name("nrw", cid) not in links(bench)
    assert not [link for link in links(bench) if link.startswith("nrw")]
    assert our_routes(bench) == []
    assert records(bench) == []
    assert lock_files(bench) == []
    assert bench.ipam("handles") == {}


def pod_sh(netns: str, *argv: str) -> str:
    from lab.netns import sh

    return sh(list(argv), netns=os.path.basename(netns)).stdout


# ------------------------------------------------------------------ round trip

def test_add_check_del_round_trip(cni: CniBench):
    netns = cni.pod()
    res = cni.run("ADD", netns=netns, args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1;"
                                           "IgnoreUnknown=1")
    assert res.code == 0, res.stdout + res.stderr
    doc = res.doc
    ip = assert_valid_result(doc, "1.0.0", netns)
    host = host_veth_name("nrw", "c1")
    assert doc["interfaces"][0]["name"] == host

    # Pod side: the /32, MTU, the link-scope gateway route and the default route.
    addrs = json.loads(pod_sh(netns, "ip", "-j", "-4", "addr", "show", "eth0"))
    assert [(a["local"], a["prefixlen"]) for a in addrs[0]["addr_info"]] == [(ip, 32)]
    assert addrs[0]["mtu"] == 1450
    routes = json.loads(pod_sh(netns, "ip", "-j", "-4", "route", "show"))
    assert {"dst": GW, "dev": "eth0", "scope": "link"}.items() <= \
        next(r for r in routes if r["dst"] == GW).items()
    default = next(r for r in routes if r["dst"] == "default")
    assert default["gateway"] == GW and default["dev"] == "eth0"
    pod_link = json.loads(pod_sh(netns, "ip", "-j", "link", "show", "eth0"))[0]
    assert doc["interfaces"][1]["mac"] == pod_link["address"]

    # Host side: veth up, no address, proxy ARP, our /32 with protocol 73.
    hl = json.loads(cni.node_sh("ip", "-j", "addr", "show", host).stdout)[0]
    assert "UP" in hl["flags"] and not [a for a in hl["addr_info"] if a["family"] == "inet"]
    assert cni.node_sh("cat", f"/proc/sys/net/ipv4/conf/{host}/proxy_arp").stdout.strip() == "1"
    assert [(r["dst"], r["dev"], r.get("scope")) for r in our_routes(cni)] == [(ip, host, "link")]

    # The pod reaches the node (proxy ARP answers for 169.254.1.1).
    pod_sh(netns, "ping", "-c", "1", "-W", "5", NODE_ADDR)

    # The record the daemon reads.
    with open(os.path.join(cni.state_dir, "c1.json")) as f:
        rec = json.load(f)
    assert rec["container_id"] == "c1" and rec["ip"] == ip and rec["host_ifname"] == host
    assert rec["handle"] == "k8s-pod-network.c1" and rec["netns"] == netns
    assert rec["attrs"] == {"namespace": "default", "pod": "web-1", "node": "node-a",
                            "ifname": "eth0"}
    assert rec["route_protocol"] == 73 and rec["version"] == 1
    assert cni.ipam("handle-ips", "k8s-pod-network.c1") == [ip]

    # CHECK with the prevResult the runtime caches.
    chk = cni.run("CHECK", netns=netns, conf=cni.conf(prevResult=doc))
    assert chk.code == 0 and chk.stdout == "", chk.stdout + chk.stderr

    # DEL: everything goes, the address is released in etcd.
    d = cni.run("DEL", netns=netns, conf=cni.conf(prevResult=doc))
    assert d.code == 0 and d.stdout == "", d.stdout + d.stderr
    assert_nothing_left(cni)
    assert json.loads(pod_sh(netns, "ip", "-j", "link", "show"))[0]["ifname"] == "lo"
    assert len(json.loads(pod_sh(netns, "ip", "-j", "link", "show"))) == 1

    # DEL again: still success (spec: DEL is idempotent).
    again = cni.run("DEL", netns=netns)
    assert again.code == 0 and again.stdout == "", again.stdout + again.stderr


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.1.0"])
def test_add_result_shape_per_version(cni: CniBench, version: str):
    netns = cni.pod()
    res = cni.run("ADD", netns=netns, conf=cni.conf(cniVersion=version))
    assert res.code == 0, res.stdout + res.stderr
    assert_valid_result(res.doc, version, netns)
    if version == "1.1.0":
        assert res.doc["interfaces"][1]["mtu"] == 1450
    assert cni.run("DEL", netns=netns, conf=cni.conf(cniVersion=version)).code == 0
    assert_nothing_left(cni)


def test_two_pods_get_distinct_addresses(cni: CniBench):
    a, b = cni.pod("a"), cni.pod("b")
    ra, rb = cni.run("ADD", cid="pa", netns=a), cni.run("ADD", cid="pb", netns=b)
    assert ra.code == 0 and rb.code == 0, ra.stdout + rb.stdout
    ipa, ipb = assert_valid_result(ra.doc, "1.0.0", a), assert_valid_result(rb.doc, "1.0.0", b)
    assert ipa != ipb
    # Pod to pod on the same node: routed by the node's two /32 host routes.
    pod_sh(a, "ping", "-c", "1", "-W", "5", ipb)
    for cid, ns in (("pa", a), ("pb", b)):
        assert cni.run("DEL", cid=cid, netns=ns).code == 0
    assert_nothing_left(cni, "pa")


# ------------------------------------------------------------------ repeated ADD

def test_add_twice_is_idempotent(cni: CniBench):
    netns = cni.pod()
    first = cni.run("ADD", netns=netns)
    second = cni.run("ADD", netns=netns)
    assert first.code == 0 and second.code == 0, second.stdout + second.stderr
    assert second.doc == first.doc                          # same IP, same macs
    ip = assert_valid_result(first.doc, "1.0.0", netns)
    assert cni.ipam("handle-ips", "k8s-pod-network.c1") == [ip]   # no second allocation
    assert cni.ipam("handles") == {"k8s-pod-network.c1": [ip]}
    assert cni.run("DEL", netns=netns).code == 0
    assert_nothing_left(cni)


def test_add_twice_with_different_ifname_is_an_error(cni: CniBench):
    netns = cni.pod()
    first = cni.run("ADD", netns=netns)
    assert first.code == 0
    other = cni.run("ADD", netns=netns, ifname="eth1")
    assert other.code != 0
    assert other.doc["code"] == 102 and "DEL it first" in other.doc["msg"]
    assert "eth0" in other.doc["details"] and "eth1" in other.doc["details"]
    # The first attachment is untouched.
    assert cni.run("CHECK", netns=netns, conf=cni.conf(prevResult=first.doc)).code == 0
    assert cni.run("DEL", netns=netns).code == 0
    assert_nothing_left(cni)


def test_add_twice_after_drift_is_an_error(cni: CniBench):
    netns = cni.pod()
    assert cni.run("ADD", netns=netns).code == 0
    pod_sh(netns, "ip", "route", "del", "default")
    again = cni.run("ADD", netns=netns)
    assert again.doc["code"] == 102 and "default route" in again.doc["details"]
    assert cni.run("DEL", netns=netns).code == 0
    assert_nothing_left(cni)


def test_add_when_ifname_taken_by_someone_else(cni: CniBench):
    netns = cni.pod()
    pod_sh(netns, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "x0")
    res = cni.run("ADD", netns=netns)
    assert res.doc["code"] == 102 and "already exists" in res.doc["msg"]
    assert_nothing_left(cni)


# ------------------------------------------------------------------ CHECK

def test_check_reports_drift(cni: CniBench):
    netns = cni.pod()
    add = cni.run("ADD", netns=netns)
    ip = assert_valid_result(add.doc, "1.0.0", netns)
    cni.node_sh("ip", "route", "del", f"{ip}/32", "proto", "73")
    chk = cni.run("CHECK", netns=netns, conf=cni.conf(prevResult=add.doc))
    assert chk.code != 0 and chk.doc["code"] == 104
    assert f"host route {ip}/32" in chk.doc["details"]
    assert cni.run("DEL", netns=netns).code == 0
    assert_nothing_left(cni)


def test_check_unknown_container_and_old_version(cni: CniBench):
    netns = cni.pod()
    res = cni.run("CHECK", cid="nope", netns=netns)
    assert res.doc["code"] == 3
    old = cni.run("CHECK", netns=netns, conf=cni.conf(cniVersion="0.3.1"))
    assert old.doc["code"] == 1 and "0.4.0" in old.doc["details"]


# ------------------------------------------------------------------ DEL corner cases

def test_del_unknown_container_succeeds(cni: CniBench):
    netns = cni.pod()
    res = cni.run("DEL", cid="never-added", netns=netns)
    assert res.code == 0 and res.stdout == "", res.stdout + res.stderr
    assert_nothing_left(cni)


def test_del_with_netns_gone_cleans_up(cni: CniBench):
    netns = cni.pod()
    assert cni.run("ADD", netns=netns).code == 0
    name = os.path.basename(netns)
    cni.netns_set.names.remove(name)
    from lab.netns import sh
    sh(["ip", "netns", "delete", name])
    # Deleting the namespace destroyed the pod end, and with it the veth pair.
    res = cni.run("DEL", netns=netns)
    assert res.code == 0, res.stdout + res.stderr
    res = cni.run("DEL", netns=None)                        # and with no CNI_NETNS at all
    assert res.code == 0, res.stdout + res.stderr
    assert_nothing_left(cni)


def test_del_without_netns_releases_everything(cni: CniBench):
    netns = cni.pod()
    assert cni.run("ADD", netns=netns).code == 0
    res = cni.run("DEL", netns=None)
    assert res.code == 0, res.stdout + res.stderr
    assert_nothing_left(cni)


# ------------------------------------------------------------------ bad requests

def test_bad_json_is_code_6(cni: CniBench):
    netns = cni.pod()
    res = cni.run("ADD", netns=netns, stdin='{"cniVersion": "1.0.0", ')
    assert res.code != 0
    assert res.doc["code"] == 6 and "not valid JSON" in res.doc["msg"]
    assert set(res.doc) == {"cniVersion", "code", "msg", "details"}
    assert_nothing_left(cni)


def test_unknown_version_is_code_1(cni: CniBench):
    netns = cni.pod()
    res = cni.run("ADD", netns=netns, conf=cni.conf(cniVersion="9.9.9"))
    assert res.code != 0 and res.doc["code"] == 1
    assert "9.9.9" in res.doc["msg"] and "1.0.0" in res.doc["details"]
    assert_nothing_left(cni)


def test_missing_netns_env_is_code_4(cni: CniBench):
    res = cni.run("ADD", netns=None)
    assert res.code != 0 and res.doc["code"] == 4 and "CNI_NETNS" in res.doc["msg"]
    assert_nothing_left(cni)


def test_netns_path_that_does_not_exist_is_code_3(cni: CniBench):
    path = f"/run/netns/{cni.node}-gone"
    res = cni.run("ADD", netns=path)
    assert res.code != 0 and res.doc["code"] == 3 and path in res.doc["msg"]
    assert not os.path.exists(path)             # not created as a side effect
    assert_nothing_left(cni)


def test_netns_path_that_is_not_a_namespace_is_code_3(cni: CniBench, tmp_path):
    fake = tmp_path / "not-a-netns"
    fake.write_text("")
    res = cni.run("ADD", netns=str(fake))
    assert res.doc["code"] == 3 and "not a network namespace" in res.doc["msg"]
    assert_nothing_left(cni)


def test_missing_container_id_is_code_4(cni: CniBench):
    netns = cni.pod()
    res = cni.run("ADD", cid=None, netns=netns)
    assert res.code != 0 and res.doc["code"] == 4 and "CNI_CONTAINERID" in res.doc["msg"]
    assert_nothing_left(cni)


def test_invalid_config_is_code_7(cni: CniBench):
    netns = cni.pod()
    res = cni.run("ADD", netns=netns, conf=cni.conf(mtu=70000))
    assert res.doc["code"] == 7 and "mtu" in res.doc["msg"]
    assert_nothing_left(cni)


def test_version_command(cni: CniBench):
    res = cni.run("VERSION", cid=None, netns=None, ifname=None, stdin='{"cniVersion":"0.4.0"}')
    assert res.code == 0
    assert res.doc == {"cniVersion": "0.4.0", "supportedVersions": list(SUPPORTED_VERSIONS)}
    assert {"0.3.1", "0.4.0", "1.0.0"} <= set(res.doc["supportedVersions"])


def test_unusable_state_dir_fails_before_anything(cni: CniBench, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    netns = cni.pod()
    res = cni.run("ADD", netns=netns, conf=cni.conf(state_dir=str(blocker / "state")))
    assert res.code != 0 and res.doc["code"] == 106, res.stdout + res.stderr
    assert_nothing_left(cni)


def test_failure_mid_add_leaves_nothing(cni: CniBench):
    """The record cannot be written (the state dir is immutable: no new entries, while
    its lock subdirectory, made by a first DEL, still works): ADD fails after the
    address and the veth exist, and undoes both."""
    import subprocess

    netns = cni.pod()
    assert cni.run("DEL", netns=netns).code == 0           # creates the dir and .locks
    subprocess.run(["chattr", "+i", cni.state_dir], check=True)
    try:
        res = cni.run("ADD", netns=netns)
    finally:
        subprocess.run(["chattr", "-i", cni.state_dir], check=True)
    assert res.code != 0 and res.doc["code"] == 106, res.stdout + res.stderr
    assert "cannot write workload record" in res.doc["msg"]
    undo = [json.loads(line) for line in res.stderr.splitlines()
            if "cni_add_failed_undoing" in line]
    assert undo and undo[0]["steps"] == ["release", "veth", "endpoint"]
    assert_nothing_left(cni)
    assert len(json.loads(pod_sh(netns, "ip", "-j", "link", "show"))) == 1   # only lo


def test_stdout_is_only_the_protocol(cni: CniBench):
    netns = cni.pod()
    res = cni.run("ADD", netns=netns)
    json.loads(res.stdout)                                  # exactly one JSON document
    lines = [json.loads(line) for line in res.stderr.splitlines() if line.strip()]
    assert any(line.get("event") == "cni_added" for line in lines)
    assert cni.run("DEL", netns=netns).code == 0


# ------------------------------------------------------------------ etcd outage

def test_etcd_stopped_is_code_11_and_leaves_nothing(cni: CniBench):
    netns = cni.pod()
    cni.etcd.pause()
    try:
        res = cni.run("ADD", netns=netns, conf=cni.conf(etcd_timeout=1.0))
        assert res.code != 0 and res.doc["code"] == 11, res.stdout + res.stderr
        assert "etcd is unreachable" in res.doc["msg"]
        # The message names the endpoint and the bound the plugin waited.
        assert cni.etcd.endpoint in res.doc["details"] and "within 1.0s" in res.doc["details"]
        assert host_veth_name("nrw", "c1") not in links(cni)
        assert records(cni) == [] and our_routes(cni) == []
        print(f"ADD with etcd down failed in {res.seconds:.2f}s (etcd_timeout=1.0)")
        # DEL with etcd down: must not claim success (the address would leak).
        d = cni.run("DEL", netns=netns, conf=cni.conf(etcd_timeout=1.0))
        assert d.doc["code"] == 11
    finally:
        cni.etcd.resume()
    # etcd back: the same plugin works again, no restart of anything.
    ok = cni.run("ADD", netns=netns)
    assert ok.code == 0, ok.stdout + ok.stderr
    assert cni.run("DEL", netns=netns).code == 0
    assert_nothing_left(cni)


def test_del_retried_after_etcd_outage_releases(cni: CniBench):
    netns = cni.pod()
    add = cni.run("ADD", netns=netns)
    ip = assert_valid_result(add.doc, "1.0.0", netns)
    cni.etcd.pause()
    try:
        d = cni.run("DEL", netns=netns, conf=cni.conf(etcd_timeout=1.0))
        assert d.doc["code"] == 11
        # Kernel side is gone, the record stays so the retry knows what to release.
        assert host_veth_name("nrw", "c1") not in links(cni)
        assert records(cni) == ["c1.json"]
    finally:
        cni.etcd.resume()
    assert cni.ipam("handle-ips", "k8s-pod-network.c1") == [ip]
    assert cni.run("DEL", netns=netns).code == 0
    assert_nothing_left(cni)


# ------------------------------------------------------------------ 1.1.0: STATUS, GC

def test_status_and_gc(cni: CniBench):
    cni.version = "1.1.0"
    st = cni.run("STATUS", cid=None, netns=None, ifname=None)
    assert st.code == 0 and st.stdout == "", st.stdout + st.stderr
    old = cni.run("STATUS", cid=None, netns=None, ifname=None, conf=cni.conf(cniVersion="1.0.0"))
    assert old.doc["code"] == 1

    a, b = cni.pod("a"), cni.pod("b")
    assert cni.run("ADD", cid="keep", netns=a).code == 0
    assert cni.run("ADD", cid="stale", netns=b).code == 0
    gc = cni.run("GC", cid=None, netns=None, ifname=None, conf=cni.conf(
        **{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}))
    assert gc.code == 0 and gc.stdout == "", gc.stdout + gc.stderr
    assert records(cni) == ["keep.json"]
    assert host_veth_name("nrw", "stale") not in links(cni)
    assert list(cni.ipam("handles")) == ["k8s-pod-network.keep"]
    # GC without the list refuses rather than deleting everything.
    bad = cni.run("GC", cid=None, netns=None, ifname=None)
    assert bad.doc["code"] == 7 and records(cni) == ["keep.json"]
    assert cni.run("DEL", cid="keep", netns=a).code == 0
    assert_nothing_left(cni, "keep")


def test_status_without_etcd_is_50(cni: CniBench):
    cni.etcd.pause()
    try:
        st = cni.run("STATUS", cid=None, netns=None, ifname=None,
                     conf=cni.conf(cniVersion="1.1.0", etcd_timeout=1.0))
        assert st.doc["code"] == 50 and "etcd" in st.doc["msg"]
    finally:
        cni.etcd.resume()


# ------------------------------------------------------------------ CNI_ARGS (issue 16)

def test_runtime_cni_args_accepted_unknown_keys_refused(cni: CniBench):
    """kubelet/CRI-O/podman send IgnoreUnknown=1 and the K8S_* keys; an unknown key
    without IgnoreUnknown is code 4 before anything is touched (reference plugins)."""
    ns = cni.pod()
    bad = cni.run("ADD", "c1", ns, args="K8S_POD_NAME=web;MYSTERY=1")
    assert bad.code == 1 and (bad.doc["code"], bad.doc["msg"]) == (
        4, "CNI_ARGS has unknown keys: MYSTERY"), bad.stdout
    assert_nothing_left(cni)
    res = cni.run("ADD", "c1", ns, args="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;"
                  "K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=u-1;MYSTERY=1")
    assert res.code == 0, res.stdout + res.stderr
    assert cni.run("DEL", "c1", ns, args="IgnoreUnknown=1;K8S_POD_UID=u-1").code == 0
    assert_nothing_left(cni)
