"""IPIP (tunl0) pod-to-pod across two underlay subnets, inside a UML kernel."""

from __future__ import annotations

import re

import pytest

from .ipip_lab import NODE_A, NODE_B, TEST_ROUTE_PROTOCOL, IpipLab

pytestmark = [pytest.mark.integration, pytest.mark.uml]


def test_guest_kernel_has_ipip(uml_kernel):
    assert "ipip" in uml_kernel.loaded_modules
    res = uml_kernel.run("grep -w ipip /proc/modules; ip -d link show tunl0", check=True)
    assert re.search(r"^ipip\s", res.stdout, re.M), res.stdout
    assert "link/ipip" in res.stdout


def test_every_new_netns_gets_fallback_tunl0(uml_kernel, guest_netns):
    """The kernel behaviour tunnels/ must cope with: once ipip is loaded each
    new namespace already has tunl0, and creating one fails with EEXIST."""
    ns = guest_netns.add("fb")
    shown = uml_kernel.run(["ip", "-n", ns, "-d", "link", "show", "tunl0"], check=True)
    assert "ipip any remote any local any" in shown.stdout
    add = uml_kernel.run(["ip", "-n", ns, "link", "add", "tunl0", "type", "ipip"])
    assert add.returncode != 0
    assert "File exists" in add.stderr


def test_pod_to_pod_over_ipip_with_plain_ip(uml_kernel, guest_netns):
    lab = IpipLab(uml_kernel, guest_netns)
    lab.build_underlay_and_pods()
    lab.configure_tunl0_with_ip()
    lab.route_blocks_via_tunl0()

    # The router has no route to the pod pool: only encapsulated traffic can cross.
    routes = uml_kernel.run(["ip", "-n", lab.router, "route", "get", NODE_B.pod_ip])
    assert routes.returncode != 0, routes.stdout

    ping, capture = lab.ping_with_capture(NODE_A, NODE_B)
    assert ping.ok, f"pod-to-pod ping over IPIP failed:\n{ping.stdout}\n{ping.stderr}\n{capture}"
    assert re.search(r"\b3 received\b", ping.stdout), ping.stdout

    # On the underlay: outer header node-a -> node-b, IP protocol 4, inner pod -> pod.
    assert_ipip_on_underlay(capture)


def assert_ipip_on_underlay(capture: str) -> None:
    outer_in = rf"IP {re.escape(NODE_A.underlay_ip)} > {re.escape(NODE_B.underlay_ip)}: "
    inner_in = rf"IP {re.escape(NODE_A.pod_ip)} > {re.escape(NODE_B.pod_ip)}: ICMP echo request"
    assert re.search(outer_in + inner_in, capture), capture
    outer_back = rf"IP {re.escape(NODE_B.underlay_ip)} > {re.escape(NODE_A.underlay_ip)}: "
    inner_back = rf"IP {re.escape(NODE_B.pod_ip)} > {re.escape(NODE_A.pod_ip)}: ICMP echo reply"
    assert re.search(outer_back + inner_back, capture), capture


def test_pod_to_pod_over_ipip_routes_from_felix_like(uml_kernel, guest_netns):
    """Our route reconciler programs `via <peer> dev tunl0 onlink` in a kernel
    that really has ipip, and pods ping across through it."""
    lab = IpipLab(uml_kernel, guest_netns)
    lab.build_underlay_and_pods()
    lab.configure_tunl0_with_ip()
    results = lab.route_blocks_with_felix_like(TEST_ROUTE_PROTOCOL)
    for key, res in results.items():
        assert res["first"]["added"] == 1 and res["first"]["failed"] == 0, (key, res)
        # A full resync reads the onlink route back as identical: no churn.
        second = res["second"]
        assert second["resynced"] and second["added"] == second["replaced"] == 0, (key, res)

    shown = uml_kernel.run(
        ["ip", "-n", lab.node(NODE_A), "route", "show", "proto", str(TEST_ROUTE_PROTOCOL)],
        check=True,
    )
    assert re.search(
        rf"^{re.escape(NODE_B.block)} via {re.escape(NODE_B.underlay_ip)} dev tunl0 .*\bonlink\b",
        shown.stdout, re.M), shown.stdout

    ping, capture = lab.ping_with_capture(NODE_A, NODE_B)
    assert ping.ok, f"pod-to-pod ping over IPIP failed:\n{ping.stdout}\n{ping.stderr}\n{capture}"
    assert_ipip_on_underlay(capture)
