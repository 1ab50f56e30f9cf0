"""The incremental calculator against the reference: after every update of a random
sequence (policies, namespaces and endpoints added, changed, removed), its plan
must equal ``calculate`` over the same resources. And the delta renderer, which
renders only what changed, against the one that rendered both plans whole."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from felix_like.policy import chain_rule_counts
from felix_like.policy_calc import calculate
from felix_like.policy_incremental import IncrementalPolicyCalculator
from felix_like.policy_model import (
    NamedPort,
    Namespace,
    NetworkPolicy,
    WorkloadEndpoint,
    load_documents,
)
from felix_like.policy_nft import render_structure, render_update, ruleset_size
from tests.policy.render_reference import render_update_reference
from tests.policy.test_policy_truth import _policy

pytestmark = pytest.mark.unit

NODE = "n1"
_NAMESPACES = ("x", "y", "z", "w")            # w: no Namespace record at first


@st.composite
def _namespace(draw):
    name = draw(st.sampled_from(_NAMESPACES))
    labels = {"ns": draw(st.sampled_from(["x", "y", "z"]))}
    if draw(st.booleans()):
        labels["team"] = draw(st.sampled_from(["red", "blue"]))
    return Namespace(name, tuple(sorted(labels.items())))


@st.composite
def _endpoint(draw):
    ns = draw(st.sampled_from(_NAMESPACES))
    pod = draw(st.sampled_from(["a", "b", "c"]))
    labels = {"pod": draw(st.sampled_from(["a", "b", "c"]))}
    if draw(st.booleans()):
        labels["tier"] = draw(st.sampled_from(["web", "db"]))
    ips = tuple(draw(st.lists(st.sampled_from(
        ["198.19.200.1", "198.19.200.5", "198.19.200.9", "198.19.200.12", "2001:2::7"]),
        min_size=1, max_size=2, unique=True)))
    ports = tuple(NamedPort(name, proto, port) for name, proto, port in draw(st.lists(
        st.sampled_from([("web", "TCP", 80), ("web", "TCP", 81), ("serve-80-tcp", "TCP", 80),
                         ("serve-81-udp", "UDP", 81), ("serve-80-udp", "UDP", 80)]),
        max_size=2, unique_by=lambda t: t[0])))
    # A small interface pool: two local endpoints may claim one (a conflict).
    ifname = draw(st.sampled_from(["nrw1", "nrw2", "nrw3", "nrw4", f"nrw{ns}{pod}"]))
    node = draw(st.sampled_from([NODE, NODE, "n2"]))
    return WorkloadEndpoint(ns, pod, tuple(sorted(labels.items())), ips, ifname, node, ports)


@st.composite
def _update(draw, state: dict):
    """One update; removals and changes mostly hit resources that exist, so that
    a policy changes what it selects, a namespace relabels pods in and out of sets."""
    kind = draw(st.sampled_from(["policy", "policy", "namespace", "endpoint", "endpoint",
                                 "remove"]))
    if kind == "policy":
        doc = draw(_policy(draw(st.integers(0, 2))))
        return ("upsert", load_documents([doc], "case")[0])
    if kind == "namespace":
        return ("upsert", draw(_namespace()))
    if kind == "endpoint":
        return ("upsert", draw(_endpoint()))
    if not state:
        return ("remove", Namespace, "x")
    (res_kind, key), _ = draw(st.sampled_from(sorted(state.items(), key=repr)))
    return ("remove", res_kind, key)


def _key(res):
    if isinstance(res, Namespace):
        return res.name
    if isinstance(res, WorkloadEndpoint):
        return (res.node, res.namespace, res.pod)
    return res.key


def apply_update(calc: IncrementalPolicyCalculator, state: dict, update) -> None:
    if update[0] == "upsert":
        res = update[1]
        state[(type(res), _key(res))] = res
        if isinstance(res, NetworkPolicy):
            calc.upsert_policy(res)
        elif isinstance(res, Namespace):
            calc.upsert_namespace(res)
        else:
            calc.upsert_endpoint(res)
        return
    _, kind, key = update
    state.pop((kind, key), None)
    {NetworkPolicy: calc.remove_policy, Namespace: calc.remove_namespace,
     WorkloadEndpoint: calc.remove_endpoint}[kind](key)


def reference(state: dict):
    def of(kind):
        return [r for (k, _), r in state.items() if k is kind]
    return calculate(of(NetworkPolicy), of(Namespace), of(WorkloadEndpoint), node=NODE)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.integers(min_value=1, max_value=40))
def test_incremental_equals_full_calculation(data, steps):
    calc = IncrementalPolicyCalculator(NODE)
    state: dict = {}
    for i in range(steps):
        update = data.draw(_update(state), label=f"update {i}")
        apply_update(calc, state, update)
        # Not after every update: a plan() in between must not hide work left undone.
        if i % 3 == 2 or i == steps - 1:
            assert calc.plan() == reference(state), f"after update {i}: {update}"


def test_namespace_relabel_moves_pods_between_sets():
    doc = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": "from-red", "namespace": "x"},
           "spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {
               "matchLabels": {"team": "red"}}}]}]}}
    calc = IncrementalPolicyCalculator(NODE)
    state: dict = {}
    for update in [("upsert", load_documents([doc], "case")[0]),
                   ("upsert", WorkloadEndpoint("x", "a", (), ("198.19.200.1",), "nrw1", NODE)),
                   ("upsert", WorkloadEndpoint("y", "b", (), ("198.19.200.2",), "nrw2", "n2")),
                   ("upsert", Namespace("y", (("team", "red"),)))]:
        apply_update(calc, state, update)
    (name, members), = calc.plan().address_sets
    assert members == {"198.19.200.2"}
    apply_update(calc, state, ("upsert", Namespace("y", (("team", "blue"),))))
    assert calc.plan().address_set(name) == frozenset()
    assert calc.plan() == reference(state)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.integers(min_value=1, max_value=6))
def test_manager_replace_all_is_incremental_and_equal(data, rounds):
    """The daemon hands the manager every resource on each change (replace_all):
    applied as differences, the plan must still be the reference's."""
    from felix_like.policy import PolicyManager

    mgr = PolicyManager(NODE)
    state: dict = {}
    for i in range(rounds):
        # Each round: a few updates to the whole input, handed over whole.
        for j in range(data.draw(st.integers(1, 6), label=f"round {i} size")):
            update = data.draw(_update(state), label=f"round {i} update {j}")
            if update[0] == "upsert":
                state[(type(update[1]), _key(update[1]))] = update[1]
            else:
                state.pop((update[1], update[2]), None)
        mgr.replace_all(list(state.values()))
        assert mgr.plan() == reference(state), f"after round {i}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.integers(min_value=1, max_value=20))
def test_delta_render_equals_rendering_everything(data, steps):
    """render_update renders only changed chains and sets: its script must be the one
    the whole-plan diff (the previous implementation) gives, between every two plans.
    And ruleset_size, which counts rules without rendering, the rendered count."""
    calc = IncrementalPolicyCalculator(NODE)
    state: dict = {}
    before = calc.plan()
    for i in range(steps):
        apply_update(calc, state, data.draw(_update(state), label=f"update {i}"))
        after = calc.plan()
        assert render_update(before, after) == render_update_reference(before, after)
        # ruleset_size counts without rendering: it must count what is rendered.
        assert ruleset_size(after)[0] == sum(chain_rule_counts(render_structure(after)).values())
        before = after
