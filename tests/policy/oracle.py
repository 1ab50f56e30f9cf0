"""An independent policy evaluator written from the Kubernetes API text (networking/v1
types.go comments) and Calico's ordering rules — the truth the product is compared with.

It reads the RAW policy documents (dicts as a user writes them) and decides one
connection at a time; it shares no code with ``felix_like`` (do not import it here).

- A pod is isolated for ingress (egress) iff some policy in its namespace whose
  podSelector matches it has Ingress (Egress) in policyTypes; policyTypes unset =
  [Ingress] plus Egress when the egress list is non-empty.
- Policies apply in (order, name) order — Kubernetes policies at 1000, noderouter
  policies without order last — and the first rule that matches decides
  (``action`` Allow, the only action of Kubernetes rules, or Deny). No match in an
  isolated direction = deny. For Kubernetes policies alone this is the union.
- A rule without from/to matches every peer, without ports every port.
- Peer: ipBlock = inside cidr and outside every except (pods and non-pods alike);
  podSelector alone = pods of the policy's namespace; namespaceSelector alone =
  every pod of matching namespaces; both = AND.
- Port: protocol (default TCP) must match; no port = every port; a number
  (with endPort: the inclusive range); a name = the destination pod's container
  port of that name and protocol.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field

PORTS = (80, 81)
PROTOCOLS = ("TCP", "UDP")


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    ip: str
    labels: dict = field(default_factory=dict, hash=False, compare=False)
    named_ports: dict = field(default_factory=dict, hash=False, compare=False)  # (name, proto) -> port

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.name}"


def selector_matches(sel: dict | None, labels: dict) -> bool:
    sel = sel or {}
    for k, v in (sel.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in sel.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def _types(spec: dict) -> list[str]:
    if spec.get("policyTypes"):
        return list(spec["policyTypes"])
    return ["Ingress"] + (["Egress"] if spec.get("egress") else [])


def _order(doc: dict) -> float:
    if doc["apiVersion"] == "networking.k8s.io/v1":
        return 1000.0
    order = doc["spec"].get("order")
    return math.inf if order is None else float(order)


class Oracle:
    def __init__(self, namespaces: dict[str, dict], pods: list[Pod], policies: list[dict]):
        self.namespaces = namespaces
        self.pods = pods
        self.policies = sorted(policies, key=lambda d: (_order(d), d["metadata"]["name"],
                                                        d["metadata"].get("namespace", "default")))

    def ns_labels(self, ns: str) -> dict:
        return {**self.namespaces.get(ns, {}), "kubernetes.io/metadata.name": ns}

    def _peer_matches(self, policy_ns: str, peer: dict, other: Pod | str) -> bool:
        if "ipBlock" in peer:
            ip = ipaddress.ip_address(other.ip if isinstance(other, Pod) else other)
            block = peer["ipBlock"]
            if ip not in ipaddress.ip_network(block["cidr"]):
                return False
            return not any(ip in ipaddress.ip_network(e) for e in block.get("except") or [])
        if not isinstance(other, Pod):
            return False
        if "namespaceSelector" in peer:
            if not selector_matches(peer["namespaceSelector"], self.ns_labels(other.namespace)):
                return False
        elif other.namespace != policy_ns:
            return False
        if "podSelector" in peer:
            return selector_matches(peer["podSelector"], other.labels)
        return True

    @staticmethod
    def _port_matches(spec: dict, dst: Pod | str, port: int, proto: str) -> bool:
        if spec.get("protocol", "TCP") != proto:
            return False
        p = spec.get("port")
        if p is None:
            return True
        if isinstance(p, str):
            return isinstance(dst, Pod) and dst.named_ports.get((p, proto)) == port
        return p <= port <= spec.get("endPort", p)

    def _direction_allows(self, pod: Pod, direction: str, other: Pod | str, dst: Pod | str,
                          port: int, proto: str) -> bool:
        isolated = False
        for doc in self.policies:
            ns = doc["metadata"].get("namespace", "default")
            spec = doc["spec"]
            if ns != pod.namespace or not selector_matches(spec.get("podSelector"), pod.labels):
                continue
            if direction not in _types(spec):
                continue
            isolated = True
            peer_key = "from" if direction == "Ingress" else "to"
            for rule in spec.get(direction.lower()) or []:
                rule = rule or {}
                peers = rule.get(peer_key) or []
                if peers and not any(self._peer_matches(ns, p, other) for p in peers):
                    continue
                ports = rule.get("ports") or []
                if ports and not any(self._port_matches(s, dst, port, proto) for s in ports):
                    continue
                return rule.get("action", "Allow") == "Allow"
        return not isolated

    def allowed(self, src: Pod, dst: Pod, port: int, proto: str) -> bool:
        return (self._direction_allows(src, "Egress", dst, dst, port, proto)
                and self._direction_allows(dst, "Ingress", src, dst, port, proto))

    def table(self) -> dict[tuple[str, str, int, str], bool]:
        return {(s.id, d.id, port, proto): self.allowed(s, d, port, proto)
                for s in self.pods for d in self.pods if s is not d
                for port in PORTS for proto in PROTOCOLS}


def grid(pods: list[Pod], table: dict, port: int, proto: str) -> str:
    """cyclonus's truth-table form: rows = source, columns = destination, '.' allowed."""
    ids = [p.id for p in pods]
    width = max(len(i) for i in ids)
    lines = [f"{proto}/{port}".ljust(width) + " " + " ".join(i.ljust(width) for i in ids)]
    for s in ids:
        cells = []
        for d in ids:
            v = table.get((s, d, port, proto))
            cells.append(("-" if v is None else "." if v else "X").ljust(width))
        lines.append(s.ljust(width) + " " + " ".join(cells))
    return "\n".join(lines)


def explain_mismatch(pods: list[Pod], expected: dict, actual: dict) -> str:
    out = []
    for port in PORTS:
        for proto in PROTOCOLS:
            exp = grid(pods, expected, port, proto)
            act = grid(pods, actual, port, proto)
            if exp != act:
                out.append(f"expected (oracle):\n{exp}\nactual:\n{act}")
    wrong = sorted(k for k in expected if expected[k] != actual.get(k))
    return "\n\n".join(out) + f"\n{len(wrong)} cells differ, e.g. {wrong[:5]}"
