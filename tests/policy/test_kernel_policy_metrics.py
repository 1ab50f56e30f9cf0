"""Policy metrics move when their events happen (issue 14): real denied packets in a
throwaway node namespace, read from the drop rules' nft counters by the PolicyManager
on its counter timer, exported by the node's ``Metrics`` and scraped by value.

Three pods on one node: web (app=web), db (app=db) and a pod whose interface the
node has not programmed. Denied traffic must show up under the policy that denied
it and the direction it was denied in -- a Deny rule's policy, the end of tier, or
the fail-closed drop -- at least as many packets as were sent, and survive a full
reload of the table (counters restart in the kernel, the metric never goes down).
"""

from __future__ import annotations

import os

import pytest

from bgpd.node.metrics import Metrics
from felix_like.policy import PolicyManager, chain_rule_counts
from felix_like.policy_counters import END_OF_TIER, NOT_PROGRAMMED
from felix_like.policy_model import load_yaml
from felix_like.policy_nft import render_structure
from lab.netns import NetnsSet, run_prefix, sh, sysctl, veth_pair

pytestmark = pytest.mark.kernel

WEB, DB, STRANGER = "198.19.210.1", "198.19.210.2", "198.19.210.3"
PODS = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: noderouter.io/v1
kind: WorkloadEndpoint
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {node: n1, interface: nrwweb, ips: [198.19.210.1]}
---
apiVersion: noderouter.io/v1
kind: WorkloadEndpoint
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {node: n1, interface: nrwdb, ips: [198.19.210.2]}
"""
DENY_WEB_TO_DB = """\
apiVersion: noderouter.io/v1
kind: NetworkPolicy
metadata: {name: deny-web, namespace: shop}
spec:
  order: 10
  podSelector: {matchLabels: {app: db}}
  ingress:
  - action: Deny
    from: [{podSelector: {matchLabels: {app: web}}}]
  - {}
"""
WEB_NO_EGRESS = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-no-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
"""


@pytest.fixture(scope="module")
def node():
    if os.geteuid() != 0:
        pytest.fail("kernel tests need root (they create network namespaces)")
    owned = NetnsSet()
    prefix = run_prefix("nrm")
    try:
        node = owned.add(f"{prefix}-node")
        sysctl(node, "net.ipv4.ip_forward", "1")
        pods = {}
        for tag, ifname, ip in (("web", "nrwweb", WEB), ("db", "nrwdb", DB),
                                ("str", "nrwstr", STRANGER)):
            ns = owned.add(f"{prefix}-{tag}")
            veth_pair("eth0", ns, ifname, node)
            sh(["ip", "addr", "add", f"{ip}/32", "dev", "eth0"], netns=ns)
            sh(["ip", "route", "add", "default", "dev", "eth0"], netns=ns)
            sysctl(node, f"net.ipv4.conf.{ifname}.proxy_arp", "1")
            sh(["ip", "route", "add", f"{ip}/32", "dev", ifname], netns=node)
            pods[tag] = ns
        yield node, pods
    finally:
        errors = owned.delete_all()
        assert not errors, f"namespace teardown failed: {errors}"


def ping(netns: str, dst: str, count: int) -> int:
    """Send ``count`` echo requests (84 bytes each at IP level); returns replies."""
    res = sh(["ping", "-n", "-q", "-c", str(count), "-i", "0.01", "-W", "1", dst],
             netns=netns, check=False, timeout=60)
    for line in res.stdout.splitlines():
        if "received" in line:
            return int(line.split(",")[1].split()[0])
    raise AssertionError(f"no ping summary: {res.stdout} {res.stderr}")


def scrape(metrics: Metrics, name: str, **labels) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def denied(metrics: Metrics, namespace: str, policy: str, direction: str) -> tuple[float, float]:
    labels = {"namespace": namespace, "policy": policy, "direction": direction}
    return (scrape(metrics, "noderouter_policy_denied_packets_total", **labels),
            scrape(metrics, "noderouter_policy_denied_bytes_total", **labels))


def test_denied_packets_per_policy_and_direction_and_table_gauges(node):
    node_ns, pods = node
    metrics = Metrics()
    # Counters read on the manager's own timer (every 5 s of the caller's clock).
    mgr = PolicyManager("n1", netns=node_ns, resync_interval=1000, drift_check_interval=1000,
                        counter_read_interval=5.0)
    base = load_yaml(PODS)
    mgr.replace_all([*base, *load_yaml(DENY_WEB_TO_DB)])
    assert mgr.complete_deferred_work(0.0) == "full"
    metrics.export_policy_stats(mgr.stats())

    # Table gauges: what the renderer produced and what the kernel holds.
    listing = sh(["nft", "-t", "list", "table", "inet", "noderouter"], netns=node_ns).stdout
    kernel_rules = sum(chain_rule_counts(listing).values())
    assert scrape(metrics, "noderouter_policy_rules") == kernel_rules == sum(
        chain_rule_counts(render_structure(mgr.plan())).values())
    assert scrape(metrics, "noderouter_policy_sets") == listing.count("\n\tset ") > 0
    assert scrape(metrics, "noderouter_policy_last_apply_seconds") > 0
    assert scrape(metrics, "noderouter_policy_applies_total", kind="full") == 1
    assert denied(metrics, "shop", "deny-web", "ingress") == (0, 0)

    # web -> db: the Deny rule of deny-web drops them, in db's ingress.
    sent = 25
    assert ping(pods["web"], DB, sent) == 0
    assert ping(pods["str"], DB, 5) == 0              # the unprogrammed interface
    assert mgr.complete_deferred_work(1.0) is None    # counter timer not due yet
    metrics.export_policy_stats(mgr.stats())
    assert denied(metrics, "shop", "deny-web", "ingress") == (0, 0)
    mgr.complete_deferred_work(5.0)                    # due: one nft -j listing
    metrics.export_policy_stats(mgr.stats())
    packets, nbytes = denied(metrics, "shop", "deny-web", "ingress")
    assert packets >= sent and nbytes >= sent * 84, (packets, nbytes)
    assert denied(metrics, "", NOT_PROGRAMMED, "egress")[0] >= 5
    assert denied(metrics, "shop", END_OF_TIER, "ingress") == (0, 0)
    assert denied(metrics, "shop", "deny-web", "egress") == (0, 0)

    # More denied packets, then a full reload before the timer: the kernel's counters
    # restart, the ones counted before the reload are read first and kept.
    assert ping(pods["web"], DB, 10) == 0
    mgr.queue_resync()
    assert mgr.complete_deferred_work(6.0) == "full"
    metrics.export_policy_stats(mgr.stats())
    after_reload = denied(metrics, "shop", "deny-web", "ingress")[0]
    assert after_reload >= packets + 10, (packets, after_reload)
    assert scrape(metrics, "noderouter_policy_applies_total", kind="full") == 2

    # web may not send at all now: end of tier of web's egress (web is isolated for
    # egress and nothing allows it); deny-web's counter stays where it was.
    mgr.replace_all([*base, *load_yaml(DENY_WEB_TO_DB), *load_yaml(WEB_NO_EGRESS)])
    assert mgr.complete_deferred_work(7.0) == "incremental"
    metrics.export_policy_stats(mgr.stats())
    assert scrape(metrics, "noderouter_policy_applies_total", kind="incremental") == 1
    assert scrape(metrics, "noderouter_policy_rules") == sum(
        chain_rule_counts(render_structure(mgr.plan())).values())
    assert ping(pods["web"], DB, 12) == 0
    mgr.complete_deferred_work(20.0)
    metrics.export_policy_stats(mgr.stats())
    assert denied(metrics, "shop", END_OF_TIER, "egress")[0] >= 12
    assert denied(metrics, "shop", "deny-web", "ingress")[0] == after_reload

    # db -> web is allowed by nothing against it (web is not isolated for ingress).
    assert ping(pods["db"], WEB, 3) == 3
    mgr.remove()
    metrics.export_policy_stats(mgr.stats())
    assert scrape(metrics, "noderouter_policy_rules") == 0
    assert scrape(metrics, "noderouter_policy_sets") == 0
