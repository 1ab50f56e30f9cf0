"""Network policy resources in etcd (issue 14): key layout, encoding, and the writes.

Layout under the config's ``etcd.prefix`` (default ``/noderouter``; the layout itself
lives in ``config.policy_layout``, shared with the CNI plugin, which writes a pod's
WorkloadEndpoint on ADD and removes it on DEL)::

    <prefix>/policy/v1/networkpolicies/<namespace>/<name>       a NetworkPolicy
    <prefix>/policy/v1/namespaces/<name>                        a Namespace (its labels)
    <prefix>/policy/v1/workloadendpoints/<node>/<namespace>/<pod>
                                                                a pod's labels, named ports
                                                                (and IPs, when known)

Each value is the resource's document as JSON, verbatim (``apiVersion``, ``kind``,
``metadata``, ``spec``): any Kubernetes NetworkPolicy applies unchanged, and reading
it back runs the same validation as ``noderouter policy apply``
(``felix_like.policy_model.load_documents``). A ``noderouter.io/v1`` NetworkPolicy and
a Kubernetes one of the same namespace and name share one key: the last applied wins,
as with one object of one name in Kubernetes.

Writes of one ``apply`` go in one etcd transaction: all or nothing. The node reads
these prefixes with ``PrefixSyncer`` (``NodeState``), the CLI writes them.

The values' types stay in ``felix_like.policy_model``; this module only places them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from config.policy_layout import (
    ENDPOINT_API,
    NAMESPACE_API,
    POLICY_KINDS,
    encode,
    policy_root,
)
from config.policy_layout import PolicyKeys as _LayoutKeys
from config.policy_layout import endpoint_document as _endpoint_document
from felix_like.policy_model import (
    Namespace,
    NetworkPolicy,
    PolicyError,
    Resource,
    WorkloadEndpoint,
    load_documents,
)
from ipam.store import Delete, Put, Store

__all__ = ["ENDPOINT_API", "NAMESPACE_API", "POLICY_KINDS", "PolicyKeys", "PolicyStore",
           "decode", "encode", "endpoint_document", "namespace_document", "policy_root"]


class PolicyKeys(_LayoutKeys):
    """The shared key layout (``config.policy_layout``) plus placing a resource."""

    def key_of(self, resource: Resource) -> str:
        if isinstance(resource, NetworkPolicy):
            return self.policy(resource.namespace, resource.name)
        if isinstance(resource, Namespace):
            return self.namespace(resource.name)
        if not resource.node:
            raise PolicyError([f"WorkloadEndpoint {resource.namespace}/{resource.pod}: "
                               "spec.node: required to store it (the key names the node)"])
        return self.endpoint(resource.node, resource.namespace, resource.pod)


def decode(key: str, value: bytes) -> Resource:
    """The resource stored at ``key``; PolicyError (naming the key) when it is not valid
    or does not belong under that key."""
    try:
        doc = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PolicyError([f"{key}: (json): {exc}"]) from None
    resources = load_documents([doc], source=key)
    res = resources[0]
    want = _expected_key_tail(res)
    if not key.endswith("/" + want):
        raise PolicyError([f"{key}: metadata: the record is {want}, not the resource its key "
                           "names"])
    return res


def _expected_key_tail(res: Resource) -> str:
    if isinstance(res, NetworkPolicy):
        return f"networkpolicies/{res.namespace}/{res.name}"
    if isinstance(res, Namespace):
        return f"namespaces/{res.name}"
    return f"workloadendpoints/{res.node}/{res.namespace}/{res.pod}"


def namespace_document(name: str, labels: Mapping[str, str]) -> dict:
    return {"apiVersion": NAMESPACE_API[0], "kind": NAMESPACE_API[1],
            "metadata": {"name": name, "labels": dict(sorted(labels.items()))}}


def endpoint_document(ep: WorkloadEndpoint) -> dict:
    return _endpoint_document(ep.namespace, ep.pod, ep.node, ep.labels, ep.ips,
                              ep.host_interface,
                              [(p.name, p.protocol, p.port) for p in ep.named_ports],
                              ep.container_id)


def _strip_lines(doc):
    """A plain copy of a parsed document (the YAML loader's LinedDict/LinedList carry
    line numbers; JSON needs only the values)."""
    if isinstance(doc, Mapping):
        return {str(k): _strip_lines(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_strip_lines(v) for v in doc]
    return doc


class PolicyStore:
    """Reads and writes the policy resources through an IPAM ``Store`` (etcd)."""

    def __init__(self, store: Store, prefix: str = "/noderouter") -> None:
        self.store = store
        self.keys = PolicyKeys(prefix)

    # ---- writes
    def apply_documents(self, docs: Iterable, source: str = "<input>") -> list[tuple[str, Resource]]:
        """Validate every document (PolicyError refuses them all, nothing written), then
        put them all in ONE transaction. Returns (key, resource) per document."""
        docs = list(docs)
        resources = load_documents(docs, source)       # raises on any problem
        # Keep only documents that produced resources: load_documents keeps the order.
        plain = [_strip_lines(d) for d in docs]
        placed = [(self.keys.key_of(r), r, d) for r, d in zip(resources, plain, strict=True)]
        self.store.txn([], [Put(k, encode(d)) for k, _, d in placed])
        return [(k, r) for k, r, _ in placed]

    def delete_policy(self, namespace: str, name: str) -> bool:
        key = self.keys.policy(namespace, name)
        if self.store.get(key) is None:
            return False
        self.store.txn([], [Delete(key)])
        return True

    def put_namespace(self, name: str, labels: Mapping[str, str]) -> Namespace:
        doc = namespace_document(name, labels)
        (_, res), = self.apply_documents([doc], source=f"namespace {name}")
        return res

    def put_endpoint(self, ep: WorkloadEndpoint) -> WorkloadEndpoint:
        (_, res), = self.apply_documents([endpoint_document(ep)],
                                         source=f"workload {ep.namespace}/{ep.pod}")
        return res

    # ---- reads
    def list(self, kind: str) -> list[tuple[str, Resource | None, str | None]]:
        """(key, resource, problem) of every record of ``kind``; a bad record is listed
        with its problem (and resource None), never hidden."""
        _, kvs = self.store.range(self.keys.kind(kind))
        out = []
        for kv in sorted(kvs, key=lambda kv: kv.key):
            try:
                out.append((kv.key, decode(kv.key, kv.value), None))
            except PolicyError as exc:
                out.append((kv.key, None, str(exc)))
        return out

    def get(self, key: str) -> tuple[Resource, dict] | None:
        kv = self.store.get(key)
        if kv is None:
            return None
        return decode(key, kv.value), json.loads(kv.value)
