"""The pod's WorkloadEndpoint in etcd, written by ADD and removed by DEL (issue 14).

Key and document: ``config.policy_layout`` (shared with the node and the CLI; the
CNI room may import only ipam and config). Written through the IPAM's etcd ``Store``
(one connection per plugin call, or the daemon's long-lived one on the fast path).

* ADD puts the record (labels and named ports from the network config, the pod's
  IPs and host interface, and ``spec.containerID``) before the workload record that
  makes the node program the pod, and returns the etcd revision of the put: the
  workload record carries it, and the node programs the pod's policy only once its
  watch has seen it (``bgpd.node.calculator.policy_endpoints``). A fresh ADD owns the
  record: it overwrites one left by an earlier sandbox of the same pod, or labels
  set with the CLI before the pod existed (the network config is the pod's spec).
* Labels set later with ``noderouter workload label`` stay: CHECK only reads, a
  repeated ADD of an attachment that exists writes nothing.
* DEL (and ADD's rollback) deletes the record only while it names this container
  (compare on its mod revision): a newer sandbox of the same pod may have replaced it
  meanwhile, and a record written by the CLI alone (no containerID) is not ours.
"""

from __future__ import annotations

import json

from bgpd.cni.protocol import CniError, Code
from config.policy_layout import PolicyKeys, encode, endpoint_container_id, endpoint_document
from ipam.store import KV, Delete, Expect, Put, Store

# Bounded retries of the compare-and-delete (a CLI label write between our read and
# our delete moves the revision; the record is re-read and still checked).
_DELETE_ATTEMPTS = 5


def endpoint_key(prefix: str, node: str, namespace: str, pod: str) -> str:
    return PolicyKeys(prefix).endpoint(node, namespace, pod)


def put_endpoint(store: Store, key: str, document: dict) -> int:
    """Write the record; the etcd revision of the write."""
    return store.txn([], [Put(key, encode(document))]).revision


def read_endpoint(store: Store, key: str) -> dict | None:
    kv = store.get(key)
    if kv is None:
        return None
    try:
        doc = json.loads(kv.value)
    except (ValueError, UnicodeDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def remove_endpoint(store: Store, key: str, container_id: str) -> bool:
    """Delete the record if it names ``container_id``; True if this call deleted it.
    Idempotent: no record, or another container's, is False and no error. A record
    rewritten under us at every attempt is code 11: the runtime retries DEL."""
    for _ in range(_DELETE_ATTEMPTS):
        kv: KV | None = store.get(key)
        if kv is None or endpoint_container_id(kv.value) != container_id:
            return False
        if store.txn([Expect(key, kv.mod_revision)], [Delete(key)]).succeeded:
            return True
    raise CniError(Code.TRY_AGAIN_LATER, f"{key} kept changing while DEL removed it",
                   f"{_DELETE_ATTEMPTS} compare-and-delete attempts failed")


__all__ = ["endpoint_document", "endpoint_key", "put_endpoint", "read_endpoint",
           "remove_endpoint"]
