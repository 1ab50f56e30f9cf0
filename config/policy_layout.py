"""Network policy resources in etcd: the key layout, the wire form of a
WorkloadEndpoint, and the Kubernetes name rules (issue 14). Pure, no I/O.

Layout under the config's ``etcd.prefix`` (default ``/noderouter``)::

    <prefix>/policy/v1/networkpolicies/<namespace>/<name>       a NetworkPolicy
    <prefix>/policy/v1/namespaces/<name>                        a Namespace (its labels)
    <prefix>/policy/v1/workloadendpoints/<node>/<namespace>/<pod>
                                                                a pod's labels, named ports,
                                                                IPs, host interface

Why here, in ``config``: three rooms write these keys -- the node's policy store and
the CLI (``bgpd.node.policy_store``), and the CNI plugin, which writes a pod's
WorkloadEndpoint on ADD and may import only ``ipam`` and ``config`` (setup.cfg
[importlinter] cni-room). One layout and one set of name rules for all of them;
``felix_like.policy_model`` validates with the same rules when it reads the records.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

POLICY_KINDS = ("networkpolicies", "namespaces", "workloadendpoints")
NAMESPACE_API = ("v1", "Namespace")
ENDPOINT_API = ("noderouter.io/v1", "WorkloadEndpoint")
DEFAULT_ETCD_PREFIX = "/noderouter"
DEFAULT_NAMESPACE = "default"
PROTOCOLS = ("TCP", "UDP", "SCTP")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def policy_root(prefix: str) -> str:
    return f"{prefix.rstrip('/')}/policy/v1/"


@dataclass(frozen=True)
class PolicyKeys:
    """Key names under one etcd prefix (the config's ``etcd.prefix``)."""

    prefix: str = DEFAULT_ETCD_PREFIX

    def kind(self, kind: str) -> str:
        if kind not in POLICY_KINDS:
            raise ValueError(f"unknown policy kind {kind!r}; known: {POLICY_KINDS}")
        return f"{policy_root(self.prefix)}{kind}/"

    def policy(self, namespace: str, name: str) -> str:
        return f"{self.kind('networkpolicies')}{namespace}/{name}"

    def namespace(self, name: str) -> str:
        return f"{self.kind('namespaces')}{name}"

    def endpoint(self, node: str, namespace: str, pod: str) -> str:
        return f"{self.kind('workloadendpoints')}{node}/{namespace}/{pod}"


def encode(document: Mapping) -> bytes:
    """The stored value: the document as given (plain JSON, keys sorted)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


# --- Kubernetes name rules (k8s.io/apimachinery validation) ---------------------------------
def dns_label_problem(value) -> str | None:
    """A namespace name: RFC 1123 label, at most 63 characters."""
    if not isinstance(value, str) or len(value) > 63 or not _DNS_LABEL.match(value):
        return f"{value!r} is not a valid namespace (lowercase RFC 1123 label, max 63)"
    return None


def dns_subdomain_problem(value) -> str | None:
    """A pod name: RFC 1123 subdomain, at most 253 characters."""
    if not isinstance(value, str) or len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        return f"{value!r} is not a valid name (lowercase DNS subdomain, max 253)"
    return None


def label_key_problem(key) -> str | None:
    if not isinstance(key, str) or not key:
        return "label key must be a non-empty string"
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return f"label key prefix {prefix!r} is not a DNS subdomain"
    if len(name) > 63 or not _LABEL_NAME.match(name):
        return f"label key {key!r} is not a valid label name"
    return None


def label_value_problem(value) -> str | None:
    if not isinstance(value, str):
        return f"label value {value!r} must be a string (quote it in YAML)"
    if value and (len(value) > 63 or not _LABEL_NAME.match(value)):
        return f"label value {value!r} is not valid (max 63 of [A-Za-z0-9-_.], alphanumeric ends)"
    return None


def port_name_problem(value) -> str | None:
    """A named port (IANA_SVC_NAME, as a containerPort's name)."""
    if (not isinstance(value, str) or len(value) > 15 or not _PORT_NAME.match(value)
            or "--" in value or not re.search(r"[a-z]", value)):
        return (f"port name {value!r} is not valid (1-15 lowercase letters, digits, '-', "
                f"at least one letter, no '--')")
    return None


def port_number_problem(value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"expected a port number, got {value!r}"
    if not 1 <= value <= 65535:
        return f"port {value} is outside 1-65535"
    return None


# --- the WorkloadEndpoint document --------------------------------------------------------
def endpoint_document(namespace: str, pod: str, node: str, labels: Iterable[tuple[str, str]],
                      ips: Iterable[str], interface: str = "",
                      ports: Iterable[tuple[str, str, int]] = (),
                      container_id: str = "") -> dict:
    """A ``noderouter.io/v1 WorkloadEndpoint`` as stored. ``container_id`` names the CNI
    attachment that wrote it: DEL removes the record only while it still names its own
    container (a newer sandbox of the same pod may have replaced it)."""
    spec: dict = {"node": node, "ips": list(ips)}
    if interface:
        spec["interface"] = interface
    ports = list(ports)
    if ports:
        spec["ports"] = [{"name": n, "protocol": proto, "port": p} for n, proto, p in ports]
    if container_id:
        spec["containerID"] = container_id
    return {"apiVersion": ENDPOINT_API[0], "kind": ENDPOINT_API[1],
            "metadata": {"name": pod, "namespace": namespace,
                         "labels": dict(sorted(labels))},
            "spec": spec}


def endpoint_container_id(value: bytes) -> str | None:
    """The ``spec.containerID`` of a stored WorkloadEndpoint (None: none, or unreadable)."""
    try:
        doc = json.loads(value)
        cid = doc["spec"].get("containerID")
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        return None
    return cid if isinstance(cid, str) and cid else None
