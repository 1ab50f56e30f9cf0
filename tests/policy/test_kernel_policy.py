"""Policy in a real kernel: the PolicyManager loads the rendered table with `nft -f -`
in a throwaway "node" namespace wired by veths to nine "pod" namespaces (the
upstream e2e model, 198.19.200.1-9/32 with host routes and proxy ARP), and real
TCP connects / UDP echoes between the pods must give the oracle's matrix.

Also: incremental updates, drift repair of a hand-flushed chain, fail-closed for
an unprogrammed workload interface, the node reaching its own pods, and bad input
leaving the loaded ruleset unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from felix_like.policy import NftCli, PolicyApplyError, PolicyManager, Removed
from felix_like.policy_model import PolicyError, WorkloadEndpoint, load_documents, load_yaml
from lab.netns import NetnsSet, run_prefix, sh, sysctl, veth_pair
from lab.procs import Daemon, wait_for
from tests.policy import model
from tests.policy.oracle import PORTS, PROTOCOLS, Oracle, explain_mismatch
from tests.policy.test_policy_truth import CASES

pytestmark = pytest.mark.kernel

PROBE = str(Path(__file__).with_name("probe.py"))
TIMEOUT = 1.5
NODE_ADDR = "198.19.255.1"
# UDP probes get source ports from here, below the ephemeral range (32768-60999), each
# used once per namespace and module: no probe meets an earlier probe's conntrack
# entry or its late echo (a reused random port once made a denied UDP cell pass).
UDP_SOURCE_PORTS = range(20000, 32768)


class Topology:
    def __init__(self) -> None:
        self.owned = NetnsSet()
        self.prefix = run_prefix("nrp")
        self.node = ""
        self.pod_ns: dict[str, str] = {}
        self.servers: list[Daemon] = []
        self.pods = model.pods()
        self._next_udp_port: dict[str, int] = {}

    def build(self) -> None:
        self.node = self.owned.add(f"{self.prefix}-node")
        sysctl(self.node, "net.ipv4.ip_forward", "1")
        # The node's own address (pods reach it by ARP on their default route).
        sh(["ip", "addr", "add", NODE_ADDR + "/32", "dev", "lo"], netns=self.node)
        for pod in self.pods:
            self.add_pod(f"{pod.namespace}{pod.name}", model.interface(pod), pod.ip)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
        for pod in self.pods:
            d = Daemon(f"serve-{pod.id}", [sys.executable, PROBE, "serve"],
                       netns=self.pod_ns[pod.id], env=env)
            self.servers.append(d.start())
        # The node reaches every pod whatever the policy: use it to wait for the servers.
        targets = [[p.ip, port, proto] for p in self.pods for port in PORTS for proto in PROTOCOLS]
        wait_for(lambda: all(self.probe_from(self.node, targets)), 20, 0.2, "pod servers")

    def add_pod(self, tag: str, ifname: str, ip: str) -> str:
        ns = self.owned.add(f"{self.prefix}-{tag}")
        veth_pair("eth0", ns, ifname, self.node)
        sh(["ip", "addr", "add", f"{ip}/32", "dev", "eth0"], netns=ns)
        sh(["ip", "route", "add", "default", "dev", "eth0"], netns=ns)
        sysctl(self.node, f"net.ipv4.conf.{ifname}.proxy_arp", "1")
        sh(["ip", "route", "add", f"{ip}/32", "dev", ifname], netns=self.node)
        self.pod_ns[f"{tag[0]}/{tag[1:]}"] = ns
        return ns

    def teardown(self) -> list[str]:
        for d in self.servers:
            d.stop()
        return self.owned.delete_all()

    def udp_source_ports(self, netns: str, count: int) -> int:
        """The first of ``count`` source ports never handed out in ``netns`` before."""
        base = self._next_udp_port.get(netns, UDP_SOURCE_PORTS.start)
        if base + count > UDP_SOURCE_PORTS.stop:
            raise RuntimeError(f"UDP probe source ports exhausted in {netns}")
        self._next_udp_port[netns] = base + count
        return base

    def _probe_cmd(self, netns: str, targets: list) -> subprocess.Popen:
        base = self.udp_source_ports(netns, len(targets))
        return subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, PROBE, "probe",
                                 json.dumps(targets), str(TIMEOUT), str(base)],
                                stdout=subprocess.PIPE, text=True)

    def probe_from(self, netns: str, targets: list) -> list[bool]:
        out, _ = self._probe_cmd(netns, targets).communicate(timeout=60)
        return json.loads(out)

    def matrix(self) -> dict:
        """Every (src, dst, port, proto) probed for real, all sources in parallel."""
        jobs = {}
        for s in self.pods:
            cells = [(d, port, proto) for d in self.pods if d is not s
                     for port in PORTS for proto in PROTOCOLS]
            targets = [[d.ip, port, proto] for d, port, proto in cells]
            jobs[s.id] = (cells, self._probe_cmd(self.pod_ns[s.id], targets))
        table = {}
        for sid, (cells, proc) in jobs.items():
            out, _ = proc.communicate(timeout=60)
            for (d, port, proto), ok in zip(cells, json.loads(out), strict=True):
                table[(sid, d.id, port, proto)] = ok
        return table

    def stable_matrix(self, expected: dict) -> dict:
        # Calico's conncheck retries until stable: a loaded 2-core machine can lose
        # a UDP echo to a timeout, never turn a drop into a pass. Re-probe misses only.
        table = self.matrix()
        if table == expected:
            return table
        again = self.matrix()
        return {k: table[k] or again[k] for k in table}

    def nft_list(self) -> str:
        return sh(["nft", "list", "table", "inet", "noderouter"], netns=self.node).stdout


@pytest.fixture(scope="module")
def topo():
    if os.geteuid() != 0:
        pytest.fail("kernel tests need root (they create network namespaces)")
    t = Topology()
    try:
        t.build()
        yield t
    finally:
        errors = t.teardown()
        assert not errors, f"namespace teardown failed: {errors}"


def resources(policies, pods=None, ns_labels=None):
    return load_documents(model.resource_docs(pods or model.pods(),
                                              ns_labels or model.namespace_labels())
                          + policies, "case")


def assert_probed_equals_oracle(topo: Topology, policies, pods=None) -> None:
    pods = pods or topo.pods
    expected = Oracle(model.namespace_labels(), pods, policies).table()
    actual = topo.stable_matrix(expected)
    if actual != expected:
        pytest.fail(f"{explain_mismatch(topo.pods, expected, actual)}\n\n{topo.nft_list()}")


KERNEL_CASES = ["deny-all-ingress", "allow-from-pod-in-other-namespace-AND", "named-port-ingress",
                "ipblock-with-except", "egress-to-port-only", "deny-by-order-before-allow",
                "multiple-policies-unioned", "named-port-egress", "egress-allow-then-ingress-deny",
                "endport-range-udp"]


def test_probed_matrix_equals_oracle(topo):
    mgr = PolicyManager("n1", netns=topo.node)
    mgr.replace_all(resources([]))
    assert mgr.complete_deferred_work(0.0) == "full"
    assert_probed_equals_oracle(topo, [])           # no policy: everything open
    failures = []
    for i, name in enumerate(KERNEL_CASES):
        mgr.replace_all(resources(CASES[name]))
        assert mgr.complete_deferred_work(1.0 + i) == "incremental"
        expected = Oracle(model.namespace_labels(), topo.pods, CASES[name]).table()
        actual = topo.stable_matrix(expected)
        if actual != expected:
            failures.append(f"case {name}:\n{explain_mismatch(topo.pods, expected, actual)}")
    assert not failures, "\n\n".join(failures) + "\n\n" + topo.nft_list()
    mgr.remove()


def test_incremental_label_change_and_drift_repair(topo):
    policies = CASES["allow-from-namespace"]          # x/a accepts only namespace y
    mgr = PolicyManager("n1", netns=topo.node, resync_interval=1000, drift_check_interval=5)
    mgr.replace_all(resources(policies))
    assert mgr.complete_deferred_work(0.0) == "full"
    assert_probed_equals_oracle(topo, policies)

    # A pod label change that only moves an address into a peer set: no chain, set or
    # map entry changes, so the manager applies element updates only.
    both = CASES["allow-from-pod-in-other-namespace-AND"]     # x/a accepts only y/b
    mgr.replace_all(resources(both))
    assert mgr.complete_deferred_work(1.0) == "incremental"
    relabelled = model.pods({("y", "c"): {"pod": "b"}})       # y/c now also matches pod=b
    mgr.on_update(next(r for r in resources(both, relabelled)
                       if isinstance(r, WorkloadEndpoint) and r.key == ("y", "c")))
    assert mgr.complete_deferred_work(2.0) == "incremental"
    assert_probed_equals_oracle(topo, both, relabelled)

    # Someone flushes x/a's ingress chain by hand: x/a is wide open ...
    sh(["nft", "flush", "chain", "inet", "noderouter", "tw-nrwxa"], netns=topo.node)
    assert topo.probe_from(topo.pod_ns["z/a"], [["198.19.200.1", 80, "TCP"]]) == [True]
    # ... until the next drift check replaces the table.
    assert mgr.complete_deferred_work(3.0) is None           # not yet due
    assert mgr.complete_deferred_work(10.0) == "full"
    assert_probed_equals_oracle(topo, both, relabelled)

    # A deleted endpoint: its chains and map entries go, incrementally; its interface
    # is then unprogrammed and fails closed.
    mgr.on_update(Removed(WorkloadEndpoint, ("n1", "y", "c")))
    assert mgr.complete_deferred_work(11.0) == "incremental"
    assert "tw-nrwyc" not in topo.nft_list()
    assert topo.probe_from(topo.pod_ns["y/c"], [["198.19.200.9", 80, "TCP"]]) == [False]
    # The periodic full resync comes resync_interval after the last full apply (10.0).
    assert mgr.complete_deferred_work(1009.0) is None
    assert mgr.complete_deferred_work(1010.0) == "full"
    mgr.remove()


FOREIGN = """table ip nrforeign {
  set s { type ipv4_addr; elements = { 198.18.9.9 } }
  chain c {
    ip saddr @s counter accept
  }
}
"""


def test_fail_closed_and_node_reaches_pods(topo):
    # Another component's table in the same namespace: we never touch it.
    sh(["nft", "-f", "-"], netns=topo.node, input=FOREIGN)
    foreign = sh(["nft", "list", "table", "ip", "nrforeign"], netns=topo.node).stdout
    mgr = PolicyManager("n1", netns=topo.node)
    mgr.replace_all(resources(CASES["deny-all-both"]))        # y closed both ways
    mgr.complete_deferred_work(0.0)
    assert sh(["nft", "list", "table", "ip", "nrforeign"], netns=topo.node).stdout == foreign
    # The node itself always reaches its own pods, even those denying all ingress.
    targets = [[p.ip, 80, "TCP"] for p in topo.pods]
    assert topo.probe_from(topo.node, targets) == [True] * len(topo.pods)
    # A workload interface (our prefix) not programmed yet passes nothing, either way,
    # while every programmed pod outside y is open.
    ns = topo.add_pod("wn", "nrwwn", "198.19.200.20")
    server = Daemon("serve-new", [sys.executable, PROBE, "serve"], netns=ns,
                    env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}).start()
    try:
        wait_for(lambda: topo.probe_from(topo.node, [["198.19.200.20", 80, "TCP"]]) == [True],
                 20, 0.2, "new pod's server")
        assert topo.probe_from(topo.pod_ns["x/a"], [["198.19.200.20", 80, "TCP"],
                                                   ["198.19.200.2", 80, "TCP"]]) == [False, True]
        assert topo.probe_from(ns, [["198.19.200.1", 80, "TCP"],
                                    ["198.19.200.1", 80, "UDP"]]) == [False, False]
        # Once its endpoint is known (no policy selects it), it is open.
        mgr.on_update(load_documents([{
            "apiVersion": "noderouter.io/v1", "kind": "WorkloadEndpoint",
            "metadata": {"name": "wn", "namespace": "w"},
            "spec": {"node": "n1", "interface": "nrwwn", "ips": ["198.19.200.20"]}}])[0])
        assert mgr.complete_deferred_work(1.0) == "incremental"
        assert topo.probe_from(topo.pod_ns["x/a"], [["198.19.200.20", 80, "TCP"]]) == [True]
        assert topo.probe_from(ns, [["198.19.200.1", 80, "TCP"]]) == [True]
    finally:
        server.stop()
        mgr.remove()
    assert sh(["nft", "list", "table", "ip", "nrforeign"], netns=topo.node).stdout == foreign
    sh(["nft", "delete", "table", "ip", "nrforeign"], netns=topo.node)


BAD_DOC = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: open-x, namespace: x}
spec: {podSelector: {}, ingress: [{}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: broken, namespace: y}
spec: {podSelector: {}, ingress: [{ports: [{port: 70000}]}]}
"""


class FaultOnceNft(NftCli):
    """The real nft, with one bad line appended to the next script: the transaction
    must be refused whole."""

    def __init__(self, netns: str) -> None:
        super().__init__(netns)
        self.armed = False

    def apply(self, script: str) -> None:
        if self.armed:
            self.armed = False
            script += "add element inet noderouter no-such-set { 198.19.200.1 }\n"
        super().apply(script)


def test_bad_input_leaves_the_loaded_ruleset_unchanged(topo):
    nft = FaultOnceNft(topo.node)
    mgr = PolicyManager("n1", nft=nft)      # the cutter follows nft into topo.node
    mgr.replace_all(resources(CASES["deny-all-ingress"]))
    mgr.complete_deferred_work(0.0)
    before = topo.nft_list()
    # A refused file: nothing of it reaches the manager (its good document neither).
    with pytest.raises(PolicyError, match=r"policy.yaml:9: .*port 70000 is outside 1-65535"):
        load_yaml(BAD_DOC, "policy.yaml")
    assert topo.nft_list() == before
    # A script nft refuses in its last line: nothing of it applies (one transaction),
    # and the manager replaces the whole table on its next run.
    mgr.replace_all(resources(CASES["deny-all-egress"]))
    nft.armed = True
    with pytest.raises(PolicyApplyError, match="nft refused .*no-such-set|No such file"):
        mgr.complete_deferred_work(1.0)
    assert topo.nft_list() == before
    assert_probed_equals_oracle(topo, CASES["deny-all-ingress"])
    assert mgr.complete_deferred_work(2.0) == "full"
    assert_probed_equals_oracle(topo, CASES["deny-all-egress"])
    mgr.remove()


def test_interface_claimed_twice_is_left_closed(topo):
    mgr = PolicyManager("n1", netns=topo.node)
    twin = load_documents([{
        "apiVersion": "noderouter.io/v1", "kind": "WorkloadEndpoint",
        "metadata": {"name": "twin", "namespace": "x"},
        "spec": {"node": "n1", "interface": "nrwxa", "ips": ["198.19.200.30"]}}])[0]
    mgr.replace_all([*resources([]), twin])
    mgr.complete_deferred_work(0.0)
    # nft would have merged the two endpoints' chains silently; instead x/a's
    # interface is unprogrammed, so fail-closed drops its traffic, and only its.
    assert topo.probe_from(topo.pod_ns["y/a"], [["198.19.200.1", 80, "TCP"],
                                               ["198.19.200.2", 80, "TCP"]]) == [False, True]
    mgr.on_update(Removed(WorkloadEndpoint, ("n1", "x", "twin")))
    assert mgr.complete_deferred_work(1.0) == "incremental"
    assert topo.probe_from(topo.pod_ns["y/a"], [["198.19.200.1", 80, "TCP"]]) == [True]
    mgr.remove()


class UdpHolder:
    """A process in a pod namespace keeping one UDP socket per destination."""

    def __init__(self, netns: str) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, PROBE, "hold",
                                      str(TIMEOUT)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def send(self, addr: str, port: int) -> bool:
        self.proc.stdin.write(f"{addr} {port}\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip() == "1"

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


@pytest.mark.parametrize(("cut", "nft_only"), [(True, False), (False, False), (True, True)],
                         ids=["cut", "no-cut-control", "cut-manager-given-only-nft"])
def test_established_flow_newly_denied_is_cut(topo, cut, nft_only):
    # nft_only: a manager given its nft and no netns must cut in the nft's namespace
    # (it used to cut in the caller's, the root namespace, and the flow lived on).
    mgr = (PolicyManager("n1", nft=NftCli(topo.node), cut_denied_flows=cut) if nft_only
           else PolicyManager("n1", netns=topo.node, cut_denied_flows=cut))
    mgr.replace_all(resources([]))
    mgr.complete_deferred_work(0.0)
    holder = UdpHolder(topo.pod_ns["y/a"])
    try:
        # Two flows from y/a, established while everything is open.
        assert holder.send("198.19.200.1", 80) and holder.send("198.19.200.2", 80)
        # x/a now accepts only y/b; x/b stays open.
        mgr.replace_all(resources(CASES["allow-from-pod-in-other-namespace-AND"]))
        mgr.complete_deferred_work(1.0)
        # With the cut, the flow to x/a dies at once; without it (the control), its
        # conntrack entry keeps it alive, which is what the cut is for.
        assert holder.send("198.19.200.1", 80) is (not cut)
        assert holder.send("198.19.200.2", 80) is True      # still allowed: untouched
        # A new flow to x/a is denied either way.
        assert topo.probe_from(topo.pod_ns["y/a"], [["198.19.200.1", 80, "UDP"]]) == [False]
    finally:
        holder.close()
        mgr.remove()


def test_drift_repair_cuts_the_flows_the_drift_let_in(topo):
    policies = CASES["allow-from-pod-in-other-namespace-AND"]     # x/a accepts only y/b
    mgr = PolicyManager("n1", netns=topo.node, resync_interval=1000, drift_check_interval=5)
    mgr.replace_all(resources(policies))
    assert mgr.complete_deferred_work(0.0) == "full"
    holder = UdpHolder(topo.pod_ns["y/a"])
    try:
        assert holder.send("198.19.200.1", 80) is False
        # A hand-flushed ingress chain lets y/a's flow in and conntrack records it ...
        sh(["nft", "flush", "chain", "inet", "noderouter", "tw-nrwxa"], netns=topo.node)
        assert holder.send("198.19.200.1", 80) is True
        # ... the repair restores the same plan, and must still cut that flow, or
        # "ct state established" keeps it alive past the repair.
        assert mgr.complete_deferred_work(10.0) == "full"
        assert holder.send("198.19.200.1", 80) is False
    finally:
        holder.close()
        mgr.remove()
