"""Denied-traffic counters, pure (issue 14 metrics): parsing ``nft -j list table``
output, naming each drop rule's counter after its policy, and monotonic totals over
kernel counters that restart when rules are replaced."""

from __future__ import annotations

import json

import pytest

from felix_like.policy import chain_rule_counts
from felix_like.policy_calc import calculate
from felix_like.policy_counters import (
    END_OF_TIER,
    NOT_PROGRAMMED,
    DenyCounters,
    DenyKey,
    RuleCounter,
    attribution,
    parse_drop_counters,
)
from felix_like.policy_model import load_yaml
from felix_like.policy_nft import render_structure, ruleset_size

pytestmark = pytest.mark.unit


def rule(chain, handle, *expr, comment=None):
    r = {"family": "inet", "table": "noderouter", "chain": chain, "handle": handle,
         "expr": list(expr)}
    if comment:
        r["comment"] = comment
    return {"rule": r}


# The shapes nft 1.0.6 prints for `nft -j -t list table inet noderouter` (seen on this
# machine): metainfo, table, set, chain objects, then rules with their expressions.
LISTING = {"nftables": [
    {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5",
                  "json_schema_version": 1}},
    {"table": {"family": "inet", "name": "noderouter", "handle": 1}},
    {"set": {"family": "inet", "name": "s-4", "table": "noderouter", "type": "ipv4_addr",
             "handle": 3, "flags": ["interval"]}},
    {"chain": {"family": "inet", "table": "noderouter", "name": "tw-x", "handle": 1}},
    rule("tw-x", 5, {"match": {"op": "in", "left": {"ct": {"key": "state"}},
                               "right": ["established", "related"]}}, {"accept": None}),
    rule("pi-abc", 6, {"match": {"op": "==", "left": {"payload": {"protocol": "ip",
                                                                  "field": "saddr"}},
                                 "right": "@s-4"}},
         {"counter": {"packets": 7, "bytes": 588}}, {"drop": None}),
    rule("tw-x", 7, {"counter": {"packets": 3, "bytes": 180}}, {"drop": None},
         comment="no policy allowed it"),
    rule("pi-abc", 8, {"counter": {"packets": 9, "bytes": 900}}, {"accept": None}),
    rule("to-wl-dispatch", 9, {"vmap": {"key": {"meta": {"key": "oifname"}},
                                        "data": "@to-wl"}}),
    rule("to-wl-dispatch", 10, {"counter": {"packets": 2, "bytes": 120}}, {"drop": None}),
]}


def test_parse_keeps_drop_rules_with_a_counter_only():
    assert parse_drop_counters(json.dumps(LISTING)) == [
        RuleCounter("pi-abc", 6, 7, 588), RuleCounter("tw-x", 7, 3, 180),
        RuleCounter("to-wl-dispatch", 10, 2, 120)]


@pytest.mark.parametrize("text", ["[]", '{"x": 1}', "not json"])
def test_parse_refuses_what_is_not_nft_json(text):
    with pytest.raises(ValueError):
        parse_drop_counters(text)


POLICIES = """\
apiVersion: noderouter.io/v1
kind: NetworkPolicy
metadata: {name: deny-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - action: Deny
    from: [{podSelector: {matchLabels: {app: web}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: no-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Egress]
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: noderouter.io/v1
kind: WorkloadEndpoint
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {node: n1, interface: nrwdb, ips: [198.19.0.2]}
---
apiVersion: noderouter.io/v1
kind: WorkloadEndpoint
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {node: n1, interface: nrwweb, ips: [198.19.0.3]}
"""


def plan():
    res = load_yaml(POLICIES)
    pick = lambda kind: [r for r in res if type(r).__name__ == kind]  # noqa: E731
    return calculate(pick("NetworkPolicy"), pick("Namespace"), pick("WorkloadEndpoint"),
                     node="n1")


def test_attribution_names_policies_end_of_tier_and_not_programmed():
    p = plan()
    names = attribution(p)
    by_policy = {c.policy[2]: c.name for c in p.chains}
    assert names[by_policy["deny-web"]] == DenyKey("shop", "deny-web", "ingress")
    assert names[by_policy["no-egress"]] == DenyKey("shop", "no-egress", "egress")
    assert names["tw-nrwdb"] == DenyKey("shop", END_OF_TIER, "ingress")
    assert names["fw-nrwdb"] == DenyKey("shop", END_OF_TIER, "egress")
    assert names["to-wl-dispatch"] == DenyKey("", NOT_PROGRAMMED, "ingress")
    assert names["from-wl-dispatch"] == DenyKey("", NOT_PROGRAMMED, "egress")


def test_totals_are_monotonic_over_resets_and_new_rules():
    key = DenyKey("shop", "deny-web", "ingress")
    names = {"pi-abc": key}
    c = DenyCounters()
    c.absorb([RuleCounter("pi-abc", 6, 7, 588)], names)
    c.absorb([RuleCounter("pi-abc", 6, 10, 840)], names)          # +3
    assert c.totals[key] == (10, 840)
    # The chain was flushed and its rule re-added: a new handle counts from zero.
    c.absorb([RuleCounter("pi-abc", 11, 2, 168)], names)
    assert c.totals[key] == (12, 1008)
    # A rule reset under the same handle (fewer than before): all of it is new.
    c.absorb([RuleCounter("pi-abc", 11, 1, 84)], names)
    assert c.totals[key] == (13, 1092)
    # After a full reload handles may repeat: forget_rules makes them count from zero.
    c.forget_rules()
    c.absorb([RuleCounter("pi-abc", 11, 5, 420)], names)
    assert c.totals[key] == (18, 1512)
    # A chain the plan does not name (someone else's rule) is not counted.
    c.absorb([RuleCounter("hand-made", 1, 99, 99)], names)
    assert c.totals == {key: (18, 1512)}


def test_a_reading_of_some_chains_keeps_what_is_known_of_the_others():
    """Right before an incremental apply flushes a chain, only that chain is read;
    the next whole-table reading must not count the other chains' packets again."""
    deny, tier = DenyKey("shop", "deny-web", "ingress"), DenyKey("shop", END_OF_TIER, "ingress")
    names = {"pi-abc": deny, "tw-nrw1": tier}
    c = DenyCounters()
    c.absorb([RuleCounter("pi-abc", 6, 7, 588), RuleCounter("tw-nrw1", 9, 4, 336)], names)
    c.absorb([RuleCounter("tw-nrw1", 9, 5, 420)], names, chains=["tw-nrw1"])        # +1
    assert c.totals == {deny: (7, 588), tier: (5, 420)}
    # tw-nrw1 flushed and refilled (new handle); pi-abc counted 1 more meanwhile.
    c.absorb([RuleCounter("pi-abc", 6, 8, 672), RuleCounter("tw-nrw1", 14, 2, 168)], names)
    assert c.totals == {deny: (8, 672), tier: (7, 588)}
    # A chain read one by one that is gone: its rules are forgotten, not the others'.
    c.absorb([], names, chains=["tw-nrw1"])
    c.absorb([RuleCounter("pi-abc", 6, 8, 672), RuleCounter("tw-nrw1", 14, 3, 252)], names)
    assert c.totals == {deny: (8, 672), tier: (10, 840)}


def test_ruleset_size_is_what_the_renderer_produced():
    p = plan()
    rules, sets = ruleset_size(p)
    structure = render_structure(p)
    assert rules == sum(chain_rule_counts(structure).values())
    assert sets == sum(1 for line in structure.splitlines() if line.startswith("  set "))
    assert rules > 10 and sets > 0


def test_deny_rules_and_end_of_tier_drops_carry_counters():
    structure = render_structure(plan())
    drops = [line.strip() for line in structure.splitlines() if line.strip().endswith("drop")
             or "drop comment" in line]
    assert drops and all("counter drop" in line for line in drops
                         if not line.startswith("ct state invalid")), drops
