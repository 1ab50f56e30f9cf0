"""The upstream e2e model (kubernetes test/e2e/network/netpol/model.go), for tests.

Namespaces x, y, z with label ns=<name>; pods a, b, c in each with label
pod=<name>; servers on 80 and 81 over TCP and UDP, named serve-<port>-<proto>.
One addition makes named ports depend on the destination: ``web`` is 80 on a,
81 on b and absent on c. Addresses are 198.19.200.1-9 (benchmark range),
host interfaces nrw<ns><pod>.
"""

from __future__ import annotations

from tests.policy.oracle import Pod

NAMESPACES = ("x", "y", "z")
POD_NAMES = ("a", "b", "c")
WEB_PORT = {"a": 80, "b": 81}


def pods(labels_override: dict | None = None) -> list[Pod]:
    out = []
    n = 0
    for ns in NAMESPACES:
        for name in POD_NAMES:
            n += 1
            named = {(f"serve-{p}-{proto.lower()}", proto): p
                     for p in (80, 81) for proto in ("TCP", "UDP")}
            if name in WEB_PORT:
                named[("web", "TCP")] = WEB_PORT[name]
            labels = {"pod": name}
            if labels_override and (ns, name) in labels_override:
                labels = labels_override[(ns, name)]
            out.append(Pod(ns, name, f"198.19.200.{n}", labels, named))
    return out


def interface(pod: Pod) -> str:
    return f"nrw{pod.namespace}{pod.name}"


def namespace_labels(override: dict | None = None) -> dict[str, dict]:
    base = {ns: {"ns": ns} for ns in NAMESPACES}
    base.update(override or {})
    return base


def resource_docs(pod_list: list[Pod], ns_labels: dict[str, dict]) -> list[dict]:
    """Namespace and WorkloadEndpoint documents the product loads."""
    docs: list[dict] = [{"apiVersion": "v1", "kind": "Namespace",
                         "metadata": {"name": ns, "labels": labels}}
                        for ns, labels in ns_labels.items()]
    for p in pod_list:
        docs.append({
            "apiVersion": "noderouter.io/v1", "kind": "WorkloadEndpoint",
            "metadata": {"name": p.name, "namespace": p.namespace, "labels": p.labels},
            "spec": {"node": "n1", "interface": interface(p), "ips": [p.ip],
                     "ports": [{"name": k[0], "protocol": k[1], "port": v}
                               for k, v in sorted(p.named_ports.items())]},
        })
    return docs


def k8s(name: str, ns: str, spec: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def ours(name: str, ns: str, spec: dict) -> dict:
    return {"apiVersion": "noderouter.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}
