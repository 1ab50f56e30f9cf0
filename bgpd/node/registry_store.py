"""Registering this node in etcd under a lease, and keeping the lease alive.

The record disappears when the lease expires: a node that stops for good is
removed from every other node's mesh and its blocks are withdrawn. A restart
within the TTL keeps the record (and nobody flaps). If etcd was away longer
than the TTL, the keepalive finds the lease gone and registers again.
"""

from __future__ import annotations

import threading

from bgpd.node.registry import NodeInfo
from config.logs import get_logger
from ipam.store import EtcdStore

DEFAULT_TTL = 20


def node_key(prefix: str, name: str) -> str:
    return f"{prefix.rstrip('/')}/nodes/{name}"


def nodes_prefix(prefix: str) -> str:
    return f"{prefix.rstrip('/')}/nodes/"


def _reconnect(store: EtcdStore) -> None:
    store.close()
    store._connect()  # noqa: SLF001 - the adapter has no public reconnect yet


class NodeRegistration:
    """Keeps ``info`` registered. ``store`` must be dedicated to this object: its
    channel is replaced after failures (other users would see it closed under them)."""

    def __init__(self, store: EtcdStore, prefix: str, info: NodeInfo,
                 ttl: int = DEFAULT_TTL) -> None:
        self.store = store
        self.key = node_key(prefix, info.name)
        self.info = info
        self.ttl = ttl
        self.log = get_logger("bgpd.registry", node=info.name)
        self._lease = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keepalive, name="lease", daemon=True)
        self.registered = False

    def _client(self):
        # The lease verbs are etcd specifics the IPAM store does not need; we use the
        # store's connected client (same endpoints, TLS and timeouts).
        return self.store._client  # noqa: SLF001

    def register(self) -> None:
        client = self._client()
        self._lease = client.lease(self.ttl)
        client.put(self.key, self.info.to_json(), lease=self._lease)
        self.registered = True
        self.log.info("node_registered", key=self.key, ttl=self.ttl, lease=self._lease.id)

    def update(self, info: NodeInfo) -> None:
        self.info = info
        if self._lease is not None:
            self._client().put(self.key, info.to_json(), lease=self._lease)

    def start(self) -> NodeRegistration:
        self.register()
        self._thread.start()
        return self

    def _keepalive(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                if self._lease is None:
                    self.register()
                    continue
                remaining = self._lease.remaining_ttl
                if remaining is None or remaining <= 0:
                    self.log.warning("lease_expired_reregistering")
                    self.register()
                else:
                    self._lease.refresh()
            except Exception as exc:  # noqa: BLE001 - etcd away: try again next tick
                self.log.warning("lease_keepalive_failed", error=str(exc))
                # Measured with etcd3 0.12 + grpcio 1.66: after LeaseKeepAlive streams fail
                # during an outage the channel never recovers, even once etcd is back.
                # This store is ours alone (see __init__), so a fresh channel is safe.
                _reconnect(self.store)
                self._lease = None

    def stop(self, deregister: bool = False) -> None:
        """Stop keeping the lease alive; ``deregister`` deletes the record now
        (a permanent removal), otherwise it expires after the TTL."""
        self._stop.set()
        self._thread.join(timeout=5)
        if deregister and self._lease is not None:
            try:
                self._lease.revoke()
            except Exception as exc:  # noqa: BLE001
                self.log.warning("lease_revoke_failed", error=str(exc))
