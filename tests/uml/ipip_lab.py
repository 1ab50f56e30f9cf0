"""A two-subnet IPIP topology built inside the UML guest with plain `ip` commands.

    pod-a ── node-a ── router ── node-b ── pod-b
    (veth)  198.18.1.0/24   198.18.2.0/24  (veth)

Each node is a namespace with an uplink to the router and one pod namespace
wired the Calico way: /32 pod address, the pod's default route via the
link-local 169.254.1.1 (answered by proxy ARP on the host side), a /32 route
to the pod on the host side. The router knows only the underlay subnets, so a
pod packet can only cross it encapsulated: that is what the tests prove.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from lab.uml import REPO_ROOT, VENV_PYTHON, UmlKernel, UmlResult

from .conftest import GuestNetns


@dataclass(frozen=True)
class Node:
    key: str  # "a" / "b": short, because Linux interface names are <= 15 chars
    underlay_ip: str
    gateway: str
    block: str  # the node's pod /26
    tunnel_ip: str  # the /32 on tunl0, taken from the node's block
    pod_ip: str


NODE_A = Node("a", "198.18.1.10", "198.18.1.1", "198.19.0.0/26", "198.19.0.1", "198.19.0.5")
NODE_B = Node("b", "198.18.2.10", "198.18.2.1", "198.19.0.64/26", "198.19.0.65", "198.19.0.70")
GUEST_PING = Path(__file__).with_name("guest_ping.py")
GUEST_TUNNELS = Path(__file__).with_name("guest_tunnels_ipip.py")
GUEST_PROBE = Path(__file__).with_name("guest_probe.py")
TEST_ROUTE_PROTOCOL = 201  # any number no other route source in the guest uses
IPIP_MTU = 1480  # veth 1500 - 20 bytes of outer IPv4 header


def sh(script: list[str]) -> str:
    return "set -eux\n" + "\n".join(script) + "\n"


@dataclass
class IpipLab:
    kernel: UmlKernel
    netns: GuestNetns
    router: str = ""
    nodes: dict[str, str] | None = None
    pods: dict[str, str] | None = None

    def build_underlay_and_pods(self) -> None:
        """Router, two nodes on different subnets, one pod per node. No tunnel yet."""
        self.router, na, nb, pa, pb = self.netns.add_many("r", "na", "nb", "pa", "pb")
        self.nodes = {NODE_A.key: na, NODE_B.key: nb}
        self.pods = {NODE_A.key: pa, NODE_B.key: pb}
        r = shlex.quote(self.router)
        script = [f"ip netns exec {r} sysctl -qw net.ipv4.ip_forward=1"]
        for n in (NODE_A, NODE_B):
            node, pod = shlex.quote(self.nodes[n.key]), shlex.quote(self.pods[n.key])
            cali = f"cali{n.key}"
            script += [
                # Underlay: node uplink <-> router, one /24 per rack.
                f"ip link add up{n.key} netns {node} type veth peer name r{n.key} netns {r}",
                f"ip -n {r} addr add {n.gateway}/24 dev r{n.key}",
                f"ip -n {r} link set r{n.key} up",
                f"ip -n {node} addr add {n.underlay_ip}/24 dev up{n.key}",
                f"ip -n {node} link set up{n.key} up",
                f"ip -n {node} route add default via {n.gateway}",
                f"ip netns exec {node} sysctl -qw net.ipv4.ip_forward=1",
                # Pod: /32 on eth0, default via 169.254.1.1 answered by proxy ARP.
                f"ip link add {cali} netns {node} type veth peer name eth0 netns {pod}",
                f"ip -n {pod} addr add {n.pod_ip}/32 dev eth0",
                f"ip -n {pod} link set eth0 up",
                f"ip -n {pod} route add 169.254.1.1 dev eth0 scope link",
                f"ip -n {pod} route add default via 169.254.1.1 dev eth0",
                f"ip netns exec {node} sysctl -qw net.ipv4.conf.{cali}.proxy_arp=1",
                # Answer proxy ARP at once (the default delays up to 0.8 s).
                f"ip netns exec {node} sysctl -qw net.ipv4.neigh.{cali}.proxy_delay=0",
                f"ip -n {node} link set {cali} up",
                f"ip -n {node} route add {n.pod_ip}/32 dev {cali} scope link",
            ]
        self.kernel.run(sh(script), check=True)

    def configure_tunl0_with_ip(self) -> None:
        """tunl0 by hand: the fallback device every namespace already has."""
        script = []
        for n in (NODE_A, NODE_B):
            node = shlex.quote(self.node(n))
            script += [
                f"ip -n {node} link set tunl0 mtu {IPIP_MTU} up",
                f"ip -n {node} addr add {n.tunnel_ip}/32 dev tunl0",
            ]
        self.kernel.run(sh(script), check=True)

    def route_blocks_via_tunl0(self) -> None:
        """Each node routes the peer's pod /26 via the peer's underlay IP, onlink."""
        script = []
        for local, peer in ((NODE_A, NODE_B), (NODE_B, NODE_A)):
            script.append(
                f"ip -n {shlex.quote(self.node(local))} route add {peer.block} "
                f"via {peer.underlay_ip} dev tunl0 onlink"
            )
        self.kernel.run(sh(script), check=True)

    def dataplane_with_our_code(self, protocol: int = TEST_ROUTE_PROTOCOL,
                                pool_ipip: str = "CrossSubnet") -> list[dict]:
        """tunl0 and the block routes made by tunnels/ + felix_like, not by `ip`:
        one venv Python in the guest reaches both node namespaces by name."""
        config = {
            "protocol": protocol,
            "pool": {"ipip": pool_ipip},
            "nodes": [
                {
                    "netns": self.node(local),
                    "uplink": f"up{local.key}",
                    "underlay": f"{local.underlay_ip}/24",
                    "tunnel_address": local.tunnel_ip,
                    "peers": [{"address": peer.underlay_ip, "block": peer.block}],
                }
                for local, peer in ((NODE_A, NODE_B), (NODE_B, NODE_A))
            ],
        }
        res = self.kernel.run(
            [str(VENV_PYTHON), str(GUEST_TUNNELS), json.dumps(config)],
            env={"PYTHONPATH": str(REPO_ROOT)},
            cwd=REPO_ROOT,
            timeout=90,
            check=True,
        )
        return json.loads(res.stdout.strip().splitlines()[-1])

    def node(self, n: Node) -> str:
        assert self.nodes is not None
        return self.nodes[n.key]

    def pod(self, n: Node) -> str:
        assert self.pods is not None
        return self.pods[n.key]

    def ping_with_capture(self, src: Node, dst: Node, count: int = 3) -> tuple[UmlResult, str]:
        """Ping pod to pod while tcpdump on the router's side of src's uplink
        records IP protocol 4; returns (ping result, tcpdump output)."""
        r = shlex.quote(self.router)
        cap = self.kernel.scratch / "out" / f"tcpdump-{self.router}.txt"
        script = f"""
ip netns exec {r} tcpdump -i r{src.key} -n -l -c {2 * count} 'ip proto 4' > {cap} 2>&1 &
tp=$!
# Start pinging only once tcpdump listens, so no packet goes unseen.
i=0
until grep -q 'listening on' {cap}; do
    i=$((i + 1)); [ $i -lt 200 ] || {{ echo 'tcpdump never listened' >&2; kill $tp; exit 90; }}
    sleep 0.05
done
ip netns exec {shlex.quote(self.pod(src))} {VENV_PYTHON} {GUEST_PING} {dst.pod_ip} {count} 20
rc=$?
# tcpdump exits by itself after 2*count packets (requests and replies); give
# it a bounded chance to, then stop it by the PID we hold.
i=0
while kill -0 $tp 2>/dev/null && [ $i -lt 100 ]; do i=$((i + 1)); sleep 0.05; done
kill $tp 2>/dev/null
wait $tp
exit $rc
"""
        res = self.kernel.run(script, timeout=60)
        return res, cap.read_text(errors="replace") if cap.exists() else ""
