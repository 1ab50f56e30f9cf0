"""Keep an in-memory view of one etcd prefix in sync (networking-calico's pattern).

Sequence: range the prefix at revision N (a snapshot), hand it over whole, then
watch from N+1 and hand over each event. On any watch failure — compaction,
etcd restart, a broken stream — start the whole sequence again with a fresh
snapshot, so a missed event can never leave the view wrong. Deletions are
reconciled by the snapshot itself: the consumer replaces its view with it.

Runs in its own thread and only calls ``on_snapshot``/``on_event``, which the
daemon implements by putting a message on its queue: the loop does the work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from config.logs import get_logger
from ipam.store import KV, Store, WatchEvent


class PrefixSyncer:
    """``store`` must be dedicated to this syncer: its channel is replaced after failures."""

    def __init__(self, store: Store, prefix: str,
                 on_snapshot: Callable[[int, list[KV]], None],
                 on_event: Callable[[WatchEvent], None],
                 on_error: Callable[[str], None] | None = None,
                 retry_interval: float = 1.0) -> None:
        self.store = store
        self.prefix = prefix
        self.on_snapshot = on_snapshot
        self.on_event = on_event
        self.on_error = on_error or (lambda msg: None)
        self.retry_interval = retry_interval
        self.log = get_logger("bgpd.node.syncer", prefix=prefix)
        self._stop = threading.Event()
        self._cancel: Callable[[], None] | None = None
        self._thread = threading.Thread(target=self._run, name=f"sync{prefix}", daemon=True)
        self.resyncs = 0

    def start(self) -> PrefixSyncer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._cancel:
            try:
                self._cancel()
            except Exception:  # noqa: BLE001 - the stream may already be dead
                pass
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                revision, kvs = self.store.range(self.prefix)
                self.on_snapshot(revision, kvs)
                self.resyncs += 1
                events, self._cancel = self.store.watch(self.prefix, revision + 1)
                for ev in events:
                    if self._stop.is_set():
                        return
                    self.on_event(ev)
                # The iterator ending means the stream closed: snapshot again.
                if not self._stop.is_set():
                    self.log.info("watch_closed_resyncing")
            except Exception as exc:  # noqa: BLE001 - any failure → fresh snapshot
                if self._stop.is_set():
                    return
                self.log.warning("sync_failed_retrying", error=str(exc),
                                 error_type=type(exc).__name__)
                self.on_error(str(exc))
                # A broken watch stream can leave the gRPC channel unusable after etcd
                # returns (measured with etcd3 0.12); the syncer's store is its own.
                reconnect = getattr(self.store, "_connect", None)
                if reconnect is not None:
                    self.store.close()
                    reconnect()
                self._stop.wait(self.retry_interval)
            finally:
                if self._cancel:
                    try:
                        self._cancel()
                    except Exception:  # noqa: BLE001
                        pass
                    self._cancel = None
