"""IPIP (tunl0) pod-to-pod across two underlay subnets, inside a UML kernel."""

from __future__ import annotations

import re

import pytest

from lab.uml import REPO_ROOT, VENV_PYTHON

from .ipip_lab import GUEST_PROBE, IPIP_MTU, NODE_A, NODE_B, TEST_ROUTE_PROTOCOL, IpipLab

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


@pytest.fixture(params=["fallback-tunl0", "fb_tunnels_only_for_init_net"])
def tunl0_situation(request, uml_kernel):
    """Both ways a node can meet IPIP: the kernel's fallback tunl0 already in
    every namespace (the default), or none at all, so ensure_ipip must create it."""
    if request.param == "fb_tunnels_only_for_init_net":
        uml_kernel.run("sysctl -qw net.core.fb_tunnels_only_for_init_net=1", check=True)
    try:
        yield request.param
    finally:
        uml_kernel.run("sysctl -qw net.core.fb_tunnels_only_for_init_net=0", check=True)


def test_pod_to_pod_over_ipip_with_our_tunnels_and_routes(uml_kernel, guest_netns,
                                                          tunl0_situation):
    """tunnels/ (probe, CrossSubnet decision, MTU, ensure_ipip) and felix_like
    (RouteTable) build the IPIP data path in a kernel that really has ipip."""
    lab = IpipLab(uml_kernel, guest_netns)
    lab.build_underlay_and_pods()
    reports = lab.dataplane_with_our_code(TEST_ROUTE_PROTOCOL, pool_ipip="CrossSubnet")

    for node, rep in zip((NODE_A, NODE_B), reports, strict=True):
        had_tunl0 = "tunl0" in rep["links_before"]
        assert had_tunl0 == (tunl0_situation == "fallback-tunl0"), rep
        # Without a tunl0 the probe had to create (and delete) a throwaway ipip
        # link: this is the capability probe answering "available" for real.
        assert rep["probe_ipip"] == "ok", rep
        peer = NODE_B if node is NODE_A else NODE_A
        # Different underlay subnets + CrossSubnet -> IPIP via the peer, onlink.
        assert rep["routes"] == [{"dst": peer.block, "encap": "ipip", "gateway": peer.underlay_ip,
                                  "ifname": "tunl0", "onlink": True}], rep
        assert rep["mtu"] == IPIP_MTU, rep
        first, second = rep["ensure"]
        # The fallback device is reused (never `ip link add`); otherwise it is created.
        assert first["created"] is (not had_tunl0) and not first["recreated"], rep
        assert f"address {node.tunnel_ip}/32" in first["changed"], rep
        assert "up" in first["changed"], rep
        assert second["changed"] == [] and not second["created"], rep  # idempotent
        applied, resynced = rep["apply"]
        assert applied["added"] == 1 and applied["failed"] == 0, rep
        assert resynced["resynced"] and resynced["added"] == resynced["replaced"] == 0, rep

    for node in (NODE_A, NODE_B):
        link = uml_kernel.run(["ip", "-n", lab.node(node), "-d", "link", "show", "tunl0"],
                              check=True).stdout
        # iproute2 prints the fallback's proto as "any", a created device's as "ipip".
        assert f"mtu {IPIP_MTU}" in link, link
        assert re.search(r"ipip (any|ipip) remote any local any", link), link
        assert re.search(r"<[^>]*\bUP\b", link), link
    shown = uml_kernel.run(
        ["ip", "-n", lab.node(NODE_A), "route", "show", "proto", str(TEST_ROUTE_PROTOCOL)],
        check=True,
    ).stdout
    assert re.search(
        rf"^{re.escape(NODE_B.block)} via {re.escape(NODE_B.underlay_ip)} dev tunl0 .*\bonlink\b",
        shown, re.M), shown

    ping, capture = lab.ping_with_capture(NODE_A, NODE_B)
    assert ping.ok, f"pod-to-pod ping over IPIP failed:\n{ping.stdout}\n{ping.stderr}\n{capture}"
    assert_ipip_on_underlay(capture)


def test_capability_probe_refuses_ipip_when_the_module_is_missing(uml_kernel, guest_netns):
    """Unload ipip and forbid autoloading: the probe must name the mode and the
    module in one clear error. The guest kernel is ours, so this is safe; the
    module is loaded again afterwards for the tests that follow."""
    ns = guest_netns.add("nomod")
    uml_kernel.run("echo /bin/false > /proc/sys/kernel/modprobe && rmmod ipip", check=True)
    try:
        assert "ipip" not in uml_kernel.run(["ip", "-n", ns, "-d", "link", "show"]).stdout
        res = uml_kernel.run(
            ["ip", "netns", "exec", ns, str(VENV_PYTHON), str(GUEST_PROBE), "ipip"],
            env={"PYTHONPATH": str(REPO_ROOT)}, cwd=REPO_ROOT, check=True,
        )
    finally:
        uml_kernel.run(f"echo {uml_kernel.scratch}/modprobe > /proc/sys/kernel/modprobe && "
                       f"{uml_kernel.scratch}/modprobe ipip", check=True)
    out = res.stdout.strip()
    assert out.startswith("TunnelUnsupported: "), out + res.stderr
    assert "IPIP" in out and "'ipip'" in out, out
