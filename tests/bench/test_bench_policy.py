"""The policy benchmark (bench/bench_policy.py) at a tiny size, and the pieces its
figures rest on: the probe-fate arithmetic, the workload mix, and the Calico-style
iptables reference -- which must enforce the same semantics as ours, or the load-time
ratio would compare different rulesets. The full-size run stays out of the tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from bench import bench_policy as bp
from felix_like.policy_calc import calculate
from felix_like.policy_model import Namespace, NetworkPolicy, WorkloadEndpoint, load_documents

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _plan(docs):
    res = load_documents(docs, "<test>")
    return calculate([r for r in res if isinstance(r, NetworkPolicy)],
                     [r for r in res if isinstance(r, Namespace)],
                     [r for r in res if isinstance(r, WorkloadEndpoint)], node="n1")


@pytest.mark.unit
def test_fate_latencies_from_send_and_receive_logs():
    deny = {"t0": 10.0, "t_applied": 10.03, "expect": "deny", "since": 9.9}
    allow = {"t0": 20.0, "t_applied": 20.03, "expect": "allow", "since": 19.9}
    sent = [9.95, 9.99, 10.005, 10.012, 10.013, 10.014, 19.95, 20.01, 20.021, 20.022]
    received = [9.95, 9.99, 10.005, 10.012, 20.021, 20.022]
    lat, gap = bp._fate_latencies([deny, allow], sent, received, [19.9, 30.0])
    # Deny: the first datagram dropped after the last that passed (sent 13 ms after the
    # hand-over, 1 ms after that last pass); allow: the first that passed again (21 ms,
    # 11 ms after the dropped one before it).
    assert lat == pytest.approx([13.0, 21.0]) and gap == pytest.approx([1.0, 11.0])
    # Nothing passed after t0: the first send after t0 already met the deny.
    assert bp._fate_latencies([deny], [9.95, 10.004], [9.95], [19.9])[0] == pytest.approx([4.0])
    # A datagram dropped early but later ones passing: only the drop after the last pass
    # counts (a lost datagram is not the policy).
    assert bp._fate_latencies([deny], [10.001, 10.002, 10.02], [10.002],
                              [19.9])[0] == pytest.approx([20.0])
    # The fate did not change as expected: None.
    assert bp._fate_latencies([deny], [10.1, 10.2], [10.1, 10.2], [19.9])[0] == [None]
    assert bp._fate_latencies([allow], [19.95, 20.01], [19.95, 20.01], [30.0])[0] == [None]
    assert bp._fate_latencies([allow], [20.01], [], [30.0])[0] == [None]


@pytest.mark.unit
def test_workload_mix_sizes_and_shapes():
    docs = bp.workload(100, 150)
    kinds = [d["kind"] for d in docs]
    assert kinds.count("WorkloadEndpoint") == 100 and kinds.count("NetworkPolicy") == 150
    assert kinds.count("Namespace") == bp.NAMESPACES
    res = load_documents(docs, "<mix>")           # every document valid
    assert len(res) == len(docs)
    specs = [json.dumps(d["spec"]) for d in docs if d["kind"] == "NetworkPolicy"]
    for shape in ('"namespaceSelector"', '"ipBlock"', '"except"', '"endPort"', '"http"',
                  '"matchExpressions"', '"Egress"', '"Deny"', '"order"', '"podSelector": {}'):
        assert any(shape in s for s in specs), shape
    ips = [d["spec"]["ips"][0] for d in docs if d["kind"] == "WorkloadEndpoint"]
    ifaces = [d["spec"]["interface"] for d in docs if d["kind"] == "WorkloadEndpoint"]
    assert len(set(ips)) == len(ips) and len(set(ifaces)) == len(ifaces)
    with pytest.raises(ValueError, match="at least 3 pods"):
        bp.workload(2, 10)


@pytest.mark.unit
def test_iptables_reference_names_fit_and_mirror_the_plan():
    plan = _plan(bp.workload(120, 150))
    sets, rules = bp.render_iptables(plan)
    created = re.findall(r"^create (\S+) (\S+)", sets, flags=re.M)
    assert len(created) == len(plan.address_sets) + len(plan.named_port_sets)
    assert max(len(name) for name, _ in created) <= 31          # ipset's limit
    chains = re.findall(r"^:(\S+) ", rules, flags=re.M)
    assert max(len(c) for c in chains) <= 28                     # iptables' limit
    # One to- and one from-workload chain per endpoint, one chain per policy chain.
    assert sum(c.startswith("cali-tw-") for c in chains) == len(plan.endpoints)
    assert sum(c.startswith("cali-fw-") for c in chains) == len(plan.endpoints)
    assert {c[len("cali-"):] for c in chains if c.startswith(("cali-pi-", "cali-pe-"))} == {
        c.name for c in plan.chains}
    # Fail closed, like ours: each dispatch chain ends in a DROP.
    for dispatch in ("cali-from-wl-dispatch", "cali-to-wl-dispatch"):
        last = [line for line in rules.splitlines() if line.startswith(f"-A {dispatch} ")][-1]
        assert last == f"-A {dispatch} -j DROP"


# ----------------------------------------------------------------- kernel: same semantics

@pytest.fixture(scope="module")
def ref_topo():
    from tests.policy.test_kernel_policy import Topology

    if os.geteuid() != 0:
        pytest.fail("kernel tests need root (they create network namespaces)")
    if not bp.iptables_variants() or not os.path.exists("/usr/sbin/ipset"):
        pytest.fail("the reference needs ipset and iptables-legacy/-nft (scripts/setup)")
    t = Topology()
    try:
        t.build()
        yield t
    finally:
        errors = t.teardown()
        assert not errors, f"namespace teardown failed: {errors}"


def _load_reference(netns: str, variant: str, plan) -> None:
    from lab.netns import sh

    sets, rules = bp.render_iptables(plan)
    # Replace: an empty filter table first (drops every reference to a set), then the
    # sets, then the rules.
    sh([f"iptables-{variant}-restore"], netns=netns,
       input="*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
             "COMMIT\n")
    sh(["ipset", "destroy"], netns=netns)
    sh(["ipset", "restore"], netns=netns, input=sets)
    sh([f"iptables-{variant}-restore"], netns=netns, input=rules)


REFERENCE_CASES = ["deny-all-ingress", "allow-from-pod-in-other-namespace-AND",
                   "named-port-ingress", "ipblock-with-except", "deny-by-order-before-allow",
                   "named-port-egress", "egress-allow-then-ingress-deny", "endport-range-udp"]


@pytest.mark.kernel
def test_iptables_reference_enforces_the_oracle(ref_topo):
    """The reference ruleset, probed pair by pair in a real kernel, gives the same
    matrix as the independent oracle (and so as our nft table, which the policy
    kernel tests hold to the same oracle)."""
    from lab.netns import sh
    from tests.policy import model
    from tests.policy.oracle import Oracle, explain_mismatch
    from tests.policy.test_policy_render import plan_for
    from tests.policy.test_policy_truth import CASES

    variant = bp.iptables_variants()[0]
    failures = []
    try:
        for name in REFERENCE_CASES:
            _load_reference(ref_topo.node, variant, plan_for(CASES[name]))
            expected = Oracle(model.namespace_labels(), ref_topo.pods, CASES[name]).table()
            actual = ref_topo.stable_matrix(expected)
            if actual != expected:
                failures.append(f"case {name}:\n"
                                f"{explain_mismatch(ref_topo.pods, expected, actual)}")
        assert not failures, "\n\n".join(failures) + "\n\n" + sh(
            [f"iptables-{variant}-save"], netns=ref_topo.node).stdout[-4000:]
    finally:
        _load_reference(ref_topo.node, variant, plan_for([]))


# ----------------------------------------------------------------- the whole benchmark, tiny

@pytest.mark.integration
def test_bench_policy_quick_run(tmp_path):
    res = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "policy",
                          "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    (run_dir,) = list(tmp_path.iterdir())
    data = json.loads((run_dir / "results.json").read_text())
    assert not data["errors"]
    rows = {row["id"]: row for row in data["table"]}
    for fid in ("policy.calc", "policy.render", "policy.manager_full",
                "policy.change.kernel_p99", "policy.change.apply_p99",
                "policy.add.kernel_p99", "policy.add.apply_p99", "policy.tcp",
                "policy.tcp_vs_empty"):
        assert rows[fid]["ours"] is not None and rows[fid]["ours"]["median"] > 0, fid
    assert any(fid.startswith("policy.load_") for fid in rows)
    assert rows["policy.tcp"]["ref"]["median"] > 0
    (run,) = data["runs"]["policy"]
    live = run["raw"]["live"]
    # Every change and every ADD changed the probe's fate, as expected, in the kernel.
    assert None not in live["change"]["kernel_ms"] and len(live["change"]["kernel_ms"]) == 6
    assert None not in live["add"]["kernel_ms"] and len(live["add"]["kernel_ms"]) == 4
    assert live["change"]["actions"] == ["incremental"] * 6
    sizes = run["raw"]["full"]["sizes"]
    assert sizes["endpoints"] == 60 and sizes["policies"] == 60
    assert sizes["iptables_rules"] > 0 and sizes["nft_rules"] > 0
