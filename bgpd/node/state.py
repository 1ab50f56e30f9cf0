"""The daemon's cache of etcd: the node registry, the pools and the blocks.

The syncers (``bgpd.node.syncer``, one thread per prefix) only put messages on the
daemon's queue; the loop thread hands them to ``NodeState.apply`` -- the only writer and
the only reader of these maps. Other threads (status API, metrics) never see them: they
read the cycle's published ``NodeSnapshot``.

Review notes (invariants)
- A snapshot replaces a kind whole (deletions made while we were not watching go too);
  an event patches one key. A kind counts as in sync from its first snapshot on.
- One bad record is skipped (logged), never fatal: it must not hide the others.
- Pool and block keys encode the CIDR (``ipam.model.cidr_key``); a delete is resolved
  with ``ipam.model.key_cidr``, the one parser of that form.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from bgpd.node.registry import NodeInfo, RegistryError
from config.logs import get_logger
from ipam.model import Block, Pool, key_cidr

KINDS = ("nodes", "pools", "blocks")


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
        self.synced = dict.fromkeys(KINDS, False)

    @property
    def in_sync(self) -> bool:
        return all(self.synced.values())

    def apply(self, msg: tuple) -> Applied:
        """One message from the syncers' queue: ("snapshot", kind, rev, kvs),
        ("event", kind, event), ("sync_error", kind, text); anything else is ignored."""
        kind = msg[0]
        if kind == "snapshot":
            _, name, _rev, kvs = msg
            target = self._target(name)
            new = dict(filter(None, (self._parse(name, kv.key, kv.value) for kv in kvs)))
            target.clear()
            target.update(new)
            self.synced[name] = True
            return Applied(changed=True)
        if kind == "event":
            _, name, ev = msg
            self._patch(name, ev)
            return Applied(changed=True)
        if kind == "sync_error":
            _, name, err = msg
            return Applied(error=f"etcd {name}: {err}")
        return Applied()

    def _target(self, name: str) -> dict:
        if name not in KINDS:
            raise ValueError(f"unknown datastore kind {name!r}; known: {KINDS}")
        return getattr(self, name)

    def _parse(self, name: str, key: str, value: bytes):
        """(map key, record) of one etcd entry, or None (logged) when it is unusable."""
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
