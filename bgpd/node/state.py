"""The daemon's cache of etcd: the node registry, the pools, the blocks, and the
network policy resources (``bgpd.node.policy_store``: policies, namespaces, workload
endpoint records).

The syncers (``bgpd.node.syncer``, one thread per prefix) only put messages on the
daemon's queue; the loop thread hands them to ``NodeState.apply`` -- the only writer and
the only reader of these maps. Other threads (status API, metrics) never see them: they
read the cycle's published ``NodeSnapshot``.

Review notes (invariants)
- A snapshot replaces a kind whole (deletions made while we were not watching go too);
  an event patches one key. A kind counts as in sync from its first snapshot on.
- One bad record is skipped (logged), never fatal: it must not hide the others.
- The policy kinds do not gate ``in_sync`` (routes never wait for policy):
  ``policy_in_sync`` says when all three had their first snapshot; until then the
  cycle hands the policy manager nothing and the kernel keeps the table it has. They
  are keyed by their etcd key, so a delete needs no parsing.
- Pool and block keys encode the CIDR (``ipam.model.cidr_key``); a delete is resolved
  with ``ipam.model.key_cidr``, the one parser of that form.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from bgpd.node.policy_store import POLICY_KINDS, decode
from bgpd.node.registry import NodeInfo, RegistryError
from config.logs import get_logger
from felix_like.policy_model import PolicyError
from ipam.model import Block, Pool, key_cidr

KINDS = ("nodes", "pools", "blocks")
ALL_KINDS = KINDS + POLICY_KINDS


@dataclass(frozen=True)
class Applied:
    """What one queue message did: ``changed`` the cached data, or an ``error`` to show."""

    changed: bool = False
    error: str | None = None


class NodeState:
    def __init__(self, node: str = "") -> None:
        self.log = get_logger("bgpd.node.state", node=node)
        self.nodes: dict[str, NodeInfo] = {}
        self.pools: dict[str, Pool] = {}
        self.blocks: dict[str, Block] = {}
        # Policy resources by etcd key (felix_like.policy_model values).
        self.networkpolicies: dict = {}
        self.namespaces: dict = {}
        self.workloadendpoints: dict = {}
        self.synced = dict.fromkeys(ALL_KINDS, False)
        # The etcd revision each kind's cache has reached (snapshot revision, then each
        # event's): a pod's workload record names the revision of its WorkloadEndpoint,
        # and its policy waits until ``revisions["workloadendpoints"]`` got there.
        self.revisions = dict.fromkeys(ALL_KINDS, 0)

    @property
    def in_sync(self) -> bool:
        return all(self.synced[k] for k in KINDS)

    @property
    def policy_in_sync(self) -> bool:
        return all(self.synced[k] for k in POLICY_KINDS)

    def apply(self, msg: tuple) -> Applied:
        """One message from the syncers' queue: ("snapshot", kind, rev, kvs),
        ("event", kind, event), ("sync_error", kind, text); anything else is ignored."""
        kind = msg[0]
        if kind == "snapshot":
            _, name, rev, kvs = msg
            target = self._target(name)
            new = dict(filter(None, (self._parse(name, kv.key, kv.value) for kv in kvs)))
            target.clear()
            target.update(new)
            self.synced[name] = True
            self.revisions[name] = max(self.revisions[name], int(rev or 0))
            return Applied(changed=True)
        if kind == "event":
            _, name, ev = msg
            self._patch(name, ev)
            self.revisions[name] = max(self.revisions[name], int(ev.mod_revision or 0))
            return Applied(changed=True)
        if kind == "sync_error":
            _, name, err = msg
            return Applied(error=f"etcd {name}: {err}")
        return Applied()

    def _target(self, name: str) -> dict:
        if name not in ALL_KINDS:
            raise ValueError(f"unknown datastore kind {name!r}; known: {ALL_KINDS}")
        return getattr(self, name)

    def _parse(self, name: str, key: str, value: bytes):
        """(map key, record) of one etcd entry, or None (logged) when it is unusable."""
        if name in POLICY_KINDS:
            try:
                return key, decode(key, value)
            except PolicyError as exc:
                self.log.warning("datastore_record_skipped", kind=name, key=key, error=str(exc))
                return None
        try:
            if name == "nodes":
                return key.rsplit("/", 1)[1], NodeInfo.from_json(value)
            if name == "pools":
                p = Pool.from_dict(json.loads(value))
                return str(p.cidr), p
            b = Block.from_json(value)
            return str(b.cidr), b
        except (RegistryError, ValueError, KeyError, TypeError) as exc:
            self.log.warning("datastore_record_skipped", kind=name, key=key, error=str(exc))
            return None

    def _patch(self, name: str, ev) -> None:
        target = self._target(name)
        if ev.kind == "delete" and name in POLICY_KINDS:
            target.pop(ev.key, None)
            return
        if ev.kind == "delete":
            segment = ev.key.rsplit("/", 1)[1]
            if name == "nodes":
                target.pop(segment, None)
                return
            try:
                target.pop(str(key_cidr(segment)), None)
            except ValueError as exc:
                self.log.warning("datastore_delete_skipped", kind=name, key=ev.key,
                                 error=str(exc))
            return
        parsed = self._parse(name, ev.key, ev.value)
        if parsed is not None:
            target[parsed[0]] = parsed[1]
        elif name in POLICY_KINDS:
            # The valid record this replaced is gone from etcd: keeping it would enforce
            # a policy nobody can see any more.
            target.pop(ev.key, None)
