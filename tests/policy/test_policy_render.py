"""Renderer and calculation details beyond the truth tables: incremental updates,
conflicting endpoints, drift counting, nothing outside our table."""

from __future__ import annotations

import re

import pytest

from felix_like.policy import NftCli, PolicyManager, chain_rule_counts
from felix_like.policy_calc import calculate
from felix_like.policy_model import Namespace, NetworkPolicy, WorkloadEndpoint, load_documents
from felix_like.policy_nft import render_full, render_structure, render_update
from tests.policy import model
from tests.policy.nft_eval import Packet, Ruleset
from tests.policy.test_policy_truth import CASES

pytestmark = pytest.mark.unit


def plan_for(policies, pods=None, extra=()):
    res = load_documents(model.resource_docs(pods or model.pods(), model.namespace_labels())
                         + policies + list(extra))
    return calculate([r for r in res if isinstance(r, NetworkPolicy)],
                     [r for r in res if isinstance(r, Namespace)],
                     [r for r in res if isinstance(r, WorkloadEndpoint)], node="n1")


def test_label_change_is_an_element_update_only():
    policies = CASES["allow-from-pod-in-other-namespace-AND"]
    old = plan_for(policies)
    new = plan_for(policies, model.pods({("y", "c"): {"pod": "b"}}))
    script = render_update(old, new)
    set_name = next(name for name, items in new.address_sets if "198.19.200.6" in items)
    assert script == f"add element inet noderouter {set_name}-4 {{ 198.19.200.6 }}\n"
    back = render_update(new, old)
    assert back == f"delete element inet noderouter {set_name}-4 {{ 198.19.200.6 }}\n"
    assert render_update(old, old) == ""


def test_new_policy_adds_its_chain_and_rewrites_only_the_chains_it_changes():
    script = render_update(plan_for([]), plan_for(CASES["deny-all-ingress"]))
    added = re.findall(r"^add chain inet noderouter (\S+)$", script, flags=re.M)
    flushed = re.findall(r"^flush chain inet noderouter (\S+)$", script, flags=re.M)
    assert len(added) == 1 and added[0].startswith("pi-")
    assert sorted(flushed) == ["tw-nrwxa", "tw-nrwxb", "tw-nrwxc"]
    assert "delete" not in script and "table" not in script.replace("inet noderouter", "")


def test_full_script_touches_only_our_table():
    script = render_full(plan_for(CASES["multiple-policies-unioned"]))
    tables = set(re.findall(r"\btable (\w+) (\w+)", script))
    assert tables == {("inet", "noderouter")}
    assert script.startswith("table inet noderouter {}\ndelete table inet noderouter\n")
    elements = re.findall(r"^add element inet (\w+) ", script, flags=re.M)
    assert elements and set(elements) == {"noderouter"}


def test_interface_claimed_twice_is_programmed_for_neither():
    twin = {"apiVersion": "noderouter.io/v1", "kind": "WorkloadEndpoint",
            "metadata": {"name": "twin", "namespace": "y"},
            "spec": {"node": "n1", "interface": "nrwxa", "ips": ["198.19.200.30"]}}
    plan = plan_for([], extra=[twin])
    assert plan.conflicts == ("interface nrwxa claimed by x/a, y/twin",)
    assert "nrwxa" not in {ep.interface for ep in plan.endpoints}
    rules = Ruleset(render_full(plan))
    to_xa = Packet("nrwya", "nrwxa", "198.19.200.4", "198.19.200.1", "tcp", 80)
    to_xb = Packet("nrwya", "nrwxb", "198.19.200.4", "198.19.200.2", "tcp", 80)
    assert (rules.forward(to_xa), rules.forward(to_xb)) == (False, True)


def test_unknown_workload_interface_fails_closed_other_interfaces_untouched():
    rules = Ruleset(render_full(plan_for([])))
    assert rules.forward(Packet("nrwya", "nrwnew", "198.19.200.4", "198.19.200.50", "tcp", 80)) \
        is False
    assert rules.forward(Packet("nrwnew", "nrwya", "198.19.200.50", "198.19.200.4", "udp", 80)) \
        is False
    # Not a workload interface (the uplink to another node): not ours to judge.
    assert rules.forward(Packet("eth0", "eth1", "198.18.1.1", "198.18.2.1", "tcp", 80)) is True


def test_chain_rule_counts_reads_listing_and_structure_alike():
    structure = render_structure(plan_for(CASES["deny-all-ingress"]))
    counts = chain_rule_counts("table inet noderouter {\n" + structure + "}\n")
    assert counts["forward"] == 2 and counts["tw-nrwxa"] == 6 and counts["tw-nrwya"] == 4
    listing = ("table inet noderouter {\n\tchain tw-nrwxa {\n\t}\n"
               "\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n"
               '\t\tiifname "nrw*" jump from-wl-dispatch\n\t}\n}\n')
    assert chain_rule_counts(listing) == {"tw-nrwxa": 0, "forward": 1}


@pytest.mark.parametrize("name", sorted(CASES))
def test_plan_allows_agrees_with_the_rendered_rules(name):
    from felix_like.policy_calc import plan_allows

    plan = plan_for(CASES[name])
    rules = Ruleset(render_full(plan))
    pods = model.pods()
    for s in pods:
        for d in pods:
            if s is d:
                continue
            for port in (80, 81):
                for proto in ("tcp", "udp"):
                    pkt = Packet(model.interface(s), model.interface(d), s.ip, d.ip, proto, port)
                    assert plan_allows(plan, s.ip, d.ip, proto, port) == rules.forward(pkt), \
                        (s.id, d.id, port, proto)


def test_denied_flows_only_local_tcp_udp_sctp_and_newly_denied():
    from felix_like.policy import Flow, denied_flows

    plan = plan_for(CASES["allow-from-pod-in-other-namespace-AND"])      # x/a: only y/b
    flows = [Flow("198.19.200.4", "198.19.200.1", 17, 80),   # y/a -> x/a: denied now
             Flow("198.19.200.5", "198.19.200.1", 6, 80),    # y/b -> x/a: allowed
             Flow("198.19.200.4", "198.19.200.2", 6, 80),    # y/a -> x/b: open
             Flow("198.19.200.4", "198.19.200.1", 1, 0),     # ICMP: not a port flow
             Flow("198.18.5.1", "198.18.5.2", 6, 80)]        # no local endpoint
    assert denied_flows(plan, flows) == [flows[0]]


def test_manager_cuts_conntrack_in_its_nft_namespace():
    # Given only an nft, the manager used to cut conntrack in the caller's namespace.
    assert PolicyManager("n1", nft=NftCli("nrp-node")).conntrack.netns == "nrp-node"
    assert PolicyManager("n1", netns="nrp-node").conntrack.netns == "nrp-node"
    with pytest.raises(ValueError, match="netns 'a' differs from its nft's namespace 'b'"):
        PolicyManager("n1", netns="a", nft=NftCli("b"))


def test_a_dual_stack_pods_named_port_renders_in_both_families():
    """A dual-stack pod (issue 15) puts an IPv4 and an IPv6 address into one named-port set;
    the renderer sorted the set before splitting it by family and raised TypeError (IPv4 and
    IPv6 addresses do not compare), found by the incremental-render hypothesis test."""
    from felix_like.policy_model import NamedPort

    [pol] = load_documents([{
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "p0", "namespace": "x"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                 "ingress": [{"ports": [{"protocol": "TCP", "port": "web"}]}]}}])
    ep = WorkloadEndpoint(namespace="x", pod="a", labels=(("pod", "a"),),
                          ips=("2001:2::7", "198.19.200.1"), host_interface="nrw1", node="n1",
                          named_ports=(NamedPort(name="web", protocol="TCP", port=80),))
    plan = calculate([pol], [], [ep], node="n1")
    script = render_full(plan)
    assert "198.19.200.1 . tcp . 80" in script and "2001:2::7 . tcp . 80" in script
    empty = calculate([pol], [], [], node="n1")
    update = render_update(empty, plan)
    assert "198.19.200.1 . tcp . 80" in update and "2001:2::7 . tcp . 80" in update
