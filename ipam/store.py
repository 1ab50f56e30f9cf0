"""The thin store adapter: a few key-value verbs over etcd v3.

The allocator only needs ``get``, ``range`` (prefix, at one revision),
``txn`` (all-or-nothing compare-and-swap over several keys, returning the
current values of the named keys when a compare fails) and ``watch``. Any
store with those verbs can replace :class:`EtcdStore`.

etcd specifics handled here:

* Every RPC carries a gRPC deadline, and each verb has an overall deadline:
  an outage makes calls fail within ``timeout`` seconds with
  :class:`IpamStoreUnavailable`, never hang.
* After etcd restarts, the first RPC on the old channel fails with UNAVAILABLE
  (measured with etcd3 0.12 + etcd 3.4); after an outage of a few seconds
  with calls failing during it, the old channel keeps failing fast for a long
  time (gRPC reconnect backoff) although etcd is back. So on UNAVAILABLE the
  adapter drops the channel and retries on a new one (rotating over the
  endpoints) inside the verb's deadline. Watches get their own channel so
  this never cuts a running watch.
* Retrying a ``txn`` after UNAVAILABLE is safe because it is a
  compare-and-swap: if the first attempt was applied, the retry's compare
  fails and the caller sees the current values (the allocator is idempotent
  per handle).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from ipam import wire
from ipam.errors import IpamError, IpamInvalid, IpamStoreUnavailable

# Not bound at import: binding would freeze whatever structlog config exists then.
log = structlog.get_logger("ipam")


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    mod_revision: int
    version: int


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes


@dataclass(frozen=True)
class Delete:
    key: str


@dataclass(frozen=True)
class Expect:
    """Compare: the key's mod revision is ``mod_revision``; 0 means "does not exist"
    (compared as version == 0, the create case)."""

    key: str
    mod_revision: int


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    # On failure: the current value (or None) of every key named in ``read_on_failure``.
    current: dict[str, KV | None] = field(default_factory=dict)


@dataclass(frozen=True)
class WatchEvent:
    kind: str          # "put" | "delete"
    key: str
    value: bytes
    mod_revision: int


class Store(Protocol):
    def get(self, key: str) -> KV | None: ...
    def range(self, prefix: str, keys_only: bool = False) -> tuple[int, list[KV]]: ...
    def txn(self, expect: Sequence[Expect], ops: Sequence[Put | Delete],
            read_on_failure: Sequence[str] = ()) -> TxnResult: ...
    def watch(self, prefix: str, start_revision: int) -> tuple[Iterator[WatchEvent], Callable]: ...
    def close(self) -> None: ...


def _prefix_end(prefix: bytes) -> bytes:
    b = bytearray(prefix)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\0"


class EtcdStore:
    """``Store`` over the ``etcd3`` package (0.12), using its gRPC stubs directly
    so a transaction's header revision is available."""

    def __init__(self, endpoints: str | Sequence[str] = "127.0.0.1:2379", *,
                 ca: str | None = None, cert: str | None = None, key: str | None = None,
                 timeout: float = 5.0, rpc_timeout: float | None = None) -> None:
        import etcd3  # imported here so pure modules never need grpc
        from etcd3 import etcdrpc

        self._etcd3 = etcd3
        self._rpc = etcdrpc
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        if not endpoints:
            raise IpamInvalid("no etcd endpoint given: pass --etcd-endpoints host:port "
                              "(or set NODEROUTER_ETCD_ENDPOINTS)")
        self.endpoints = [self._parse(e) for e in endpoints]
        if (cert is None) != (key is None):
            raise IpamInvalid("etcd TLS: give both --etcd-cert and --etcd-key, or neither")
        if cert is not None and ca is None:
            raise IpamInvalid("etcd TLS: a client certificate needs --etcd-ca as well")
        self._tls = (ca, cert, key)
        self.timeout = float(timeout)
        self.rpc_timeout = float(rpc_timeout) if rpc_timeout else min(self.timeout, 2.0)
        self._idx = 0
        self._client = None
        self._connect()

    @staticmethod
    def _parse(endpoint: str) -> tuple[str, int]:
        e = endpoint.strip()
        for scheme in ("http://", "https://"):
            if e.startswith(scheme):
                e = e[len(scheme):]
        host, sep, port = e.rpartition(":")
        if not sep or not port.isdigit():
            raise IpamInvalid(f"etcd endpoint {endpoint!r} must be host:port, e.g. 127.0.0.1:2379")
        return host.strip("[]"), int(port)

    @property
    def endpoint(self) -> str:
        host, port = self.endpoints[self._idx]
        return f"{host}:{port}"

    def _connect(self) -> None:
        host, port = self.endpoints[self._idx]
        ca, cert, key = self._tls
        opts = [("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000)]
        self._client = self._etcd3.client(host=host, port=port, ca_cert=ca, cert_cert=cert,
                                          cert_key=key, timeout=self.rpc_timeout,
                                          grpc_options=opts)
        # Txn takes pre-encoded bytes (ipam.wire): no request serializer.
        self._txn_rpc = self._client.channel.unary_unary(
            "/etcdserverpb.KV/Txn", request_serializer=None,
            response_deserializer=self._rpc.TxnResponse.FromString)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # ------------------------------------------------------------ retry core

    def _call(self, what: str, fn):
        import grpc

        deadline = time.monotonic() + self.timeout
        attempt = 0
        last = ""
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise IpamStoreUnavailable(
                    f"etcd at {','.join(f'{h}:{p}' for h, p in self.endpoints)} did not answer "
                    f"{what} within {self.timeout:.1f}s ({last}); check that etcd is running "
                    f"and reachable, and --etcd-endpoints / TLS options") from None
            try:
                return fn(min(self.rpc_timeout, max(remaining, 0.05)))
            except grpc.RpcError as exc:
                code = exc.code()
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    last = f"{code.name.lower()} from {self.endpoint}"
                    log.debug("etcd_retry", component="store", op=what, endpoint=self.endpoint,
                              code=code.name, attempt=attempt)
                    # A fresh channel, not the old one: after a longer outage the old
                    # channel sits in gRPC's reconnect backoff (measured: still failing
                    # fast seconds after etcd was back) although the server answers.
                    self.close()
                    if len(self.endpoints) > 1:
                        self._idx = (self._idx + 1) % len(self.endpoints)
                    self._connect()
                    time.sleep(min(0.05 * attempt, 0.5, max(deadline - time.monotonic(), 0)))
                    continue
                if code == grpc.StatusCode.UNAUTHENTICATED or code == grpc.StatusCode.PERMISSION_DENIED:
                    raise IpamError(f"etcd at {self.endpoint} refused {what}: {exc.details()}; "
                                    f"check the client certificate (--etcd-cert/--etcd-key)") from None
                raise IpamError(f"etcd at {self.endpoint} failed {what}: {code.name} "
                                f"{exc.details()}") from None

    def _meta(self):
        c = self._client
        return {"credentials": c.call_credentials, "metadata": c.metadata}

    @staticmethod
    def _kv(kv) -> KV:
        return KV(key=kv.key.decode(), value=kv.value, mod_revision=kv.mod_revision,
                  version=kv.version)

    # ------------------------------------------------------------ verbs

    def get(self, key: str) -> KV | None:
        req = self._rpc.RangeRequest(key=key.encode())

        def fn(t):
            resp = self._client.kvstub.Range(req, t, **self._meta())
            return self._kv(resp.kvs[0]) if resp.kvs else None
        return self._call(f"get {key}", fn)

    def range(self, prefix: str, keys_only: bool = False) -> tuple[int, list[KV]]:
        """All keys under ``prefix`` at one revision (values empty with ``keys_only``)."""
        p = prefix.encode()
        req = self._rpc.RangeRequest(key=p, range_end=_prefix_end(p), keys_only=keys_only)

        def fn(t):
            resp = self._client.kvstub.Range(req, max(t, self.rpc_timeout), **self._meta())
            return resp.header.revision, [self._kv(kv) for kv in resp.kvs]
        return self._call(f"range {prefix}", fn)

    def txn(self, expect: Sequence[Expect], ops: Sequence[Put | Delete],
            read_on_failure: Sequence[str] = ()) -> TxnResult:
        req = wire.txn_request(
            [wire.compare(e.key.encode(), e.mod_revision) for e in expect],
            [wire.put_op(op.key.encode(), op.value) if isinstance(op, Put)
             else wire.delete_op(op.key.encode()) for op in ops],
            [wire.range_op(k.encode()) for k in read_on_failure])

        def fn(t):
            resp = self._txn_rpc(req, t, **self._meta())
            current: dict[str, KV | None] = {}
            if not resp.succeeded:
                for k, r in zip(read_on_failure, resp.responses, strict=True):
                    kvs = r.response_range.kvs
                    current[k] = self._kv(kvs[0]) if kvs else None
            return TxnResult(resp.succeeded, resp.header.revision, current)
        return self._call("txn " + ",".join(e.key for e in expect), fn)

    def watch(self, prefix: str, start_revision: int) -> tuple[Iterator[WatchEvent], Callable]:
        """Events under ``prefix`` from ``start_revision`` on, and a cancel function.

        Raises etcd3's RevisionCompactedError through the iterator when the
        revision is compacted: the caller then snapshots again (networking-calico).
        """
        from etcd3 import events

        host, port = self.endpoints[self._idx]
        ca, cert, key = self._tls
        wclient = self._etcd3.client(host=host, port=port, ca_cert=ca, cert_cert=cert,
                                     cert_key=key, timeout=self.rpc_timeout)
        it, wcancel = wclient.watch_prefix(prefix, start_revision=start_revision)

        def cancel():
            wcancel()
            wclient.close()

        def gen():
            for ev in it:
                kind = "delete" if isinstance(ev, events.DeleteEvent) else "put"
                yield WatchEvent(kind, ev.key.decode(), ev.value, ev.mod_revision)
        return gen(), cancel
