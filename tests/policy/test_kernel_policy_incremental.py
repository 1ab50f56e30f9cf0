"""Incremental updates in a real kernel: after every change applied as a delta
(``render_update``), our table must list exactly as if the new plan had been
loaded whole (``render_full``) — sets, elements, map entries, chains, rules."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from felix_like.policy_nft import render_full, render_update
from lab.netns import NetnsSet, run_prefix, sh
from tests.policy import model
from tests.policy.test_policy_render import plan_for
from tests.policy.test_policy_truth import CASES, _scenario

pytestmark = pytest.mark.kernel


def normalized_table(netns: str) -> dict:
    data = json.loads(sh(["nft", "-j", "list", "table", "inet", "noderouter"],
                         netns=netns).stdout)["nftables"]
    out: dict = {"set": {}, "map": {}, "chain": {}, "rules": {}}
    for obj in data:
        (kind, body), = obj.items()
        body = {k: v for k, v in body.items() if k != "handle"}
        if kind in ("set", "map"):
            body["elem"] = sorted(json.dumps(e, sort_keys=True) for e in body.get("elem", []))
            out[kind][body["name"]] = body
        elif kind == "chain":
            out["chain"][body["name"]] = body
        elif kind == "rule":
            out["rules"].setdefault(body["chain"], []).append(
                json.dumps(body["expr"], sort_keys=True) + json.dumps(body.get("comment")))
    return out


@pytest.fixture(scope="module")
def scratch():
    owned = NetnsSet()
    try:
        yield owned.add(f"{run_prefix('nrq')}-inc")
    finally:
        assert not owned.delete_all()


def _apply(netns: str, script: str) -> None:
    if script:
        sh(["nft", "-f", "-"], netns=netns, input=script)


def _check_transition(netns: str, old, new) -> None:
    _apply(netns, render_full(old))
    _apply(netns, render_update(old, new))
    incremental = normalized_table(netns)
    _apply(netns, render_full(new))
    assert incremental == normalized_table(netns)


def test_named_transitions(scratch):
    pods = model.pods()
    fewer = [p for p in pods if p.id != "y/b"]
    relabelled = model.pods({("y", "c"): {"pod": "b"}, ("x", "b"): {"pod": "a"}})
    plans = [plan_for([]), plan_for(CASES["deny-all-ingress"]),
             plan_for(CASES["multiple-policies-unioned"]),
             plan_for(CASES["multiple-policies-unioned"], fewer),      # endpoint removed
             plan_for(CASES["multiple-policies-unioned"], relabelled),  # labels changed
             plan_for(CASES["named-port-egress"], relabelled),
             plan_for(CASES["ipblock-with-except"], fewer), plan_for([])]
    for old, new in zip(plans, plans[1:], strict=False):
        _check_transition(scratch, old, new)
        _check_transition(scratch, new, old)


@settings(max_examples=40, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(sorted(CASES)), min_size=1, max_size=3),
       st.lists(st.sampled_from(sorted(CASES)), min_size=0, max_size=3),
       st.sets(st.sampled_from([f"{ns}/{p}" for ns in "xyz" for p in "abc"]), max_size=3),
       st.sets(st.sampled_from([f"{ns}/{p}" for ns in "xyz" for p in "abc"]), max_size=3))
def test_random_transitions(scratch, cases_a, cases_b, gone_a, gone_b):
    def plan(cases, gone):
        pods = [p for p in model.pods() if p.id not in gone]
        policies = {}
        for name in cases:
            for doc in CASES[name]:
                key = (doc["apiVersion"], doc["metadata"]["namespace"], doc["metadata"]["name"])
                policies[key] = doc
        return plan_for(list(policies.values()), pods)
    _check_transition(scratch, plan(cases_a, gone_a), plan(cases_b, gone_b))


@settings(max_examples=40, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(_scenario(), _scenario())
def test_random_policy_transitions(scratch, a, b):
    # Random policies (every selector, ipBlock incl. 0.0.0.0/0, port and action form
    # the truth tests generate) must load, and deltas must land on the full table.
    def plan(scenario):
        policies, overrides, _ = scenario
        return plan_for(policies, model.pods(overrides))
    _check_transition(scratch, plan(a), plan(b))
