"""Local workloads, as the CNI plugin records them in its state directory.

The plugin writes ``<state_dir>/<containerID>.json`` (``bgpd.cni.records``, atomically)
before it programs the pod's host route, and removes it after DEL. The daemon treats
the directory as the source of truth for the ``workload`` route class, so a resync
never sweeps a pod route whose record exists, and ``ipam check`` can use the same
records as the list of live workloads.
"""

from __future__ import annotations

import os

from bgpd.cni.records import WorkloadRecord, list_records
from bgpd.node.calculator import Workload
from config.logs import get_logger

log = get_logger("bgpd.node.workloads")


class WorkloadDir:
    """Re-reads the directory only when its mtime changed (cheap to poll every loop)."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self._mtime: int | None = None
        self.records: list[WorkloadRecord] = []

    def poll(self) -> bool:
        try:
            mtime = os.stat(self.state_dir).st_mtime_ns
        except FileNotFoundError:
            mtime = -1
        if mtime == self._mtime:
            return False
        self._mtime = mtime
        records = []
        for cid, rec, error in list_records(self.state_dir):
            if rec is None:
                # A corrupt record is skipped, never fatal; its pod keeps its route
                # only until the next resync, so say so loudly.
                log.warning("workload_record_unreadable", container_id=cid, error=error)
                continue
            records.append(rec)
        self.records = records
        return True

    def workloads(self) -> tuple[Workload, ...]:
        # The pod's identity comes from CNI_ARGS (K8S_POD_NAMESPACE / K8S_POD_NAME, in
        # ``attrs``); without it the pod is its container id in namespace default.
        # Since issue 14 the CNI records the pod's identity (``pod_identity``) and the
        # etcd revision of the WorkloadEndpoint it wrote for it.
        return tuple(Workload(r.container_id, r.ip, r.host_ifname,
                              namespace=r.attrs.get("namespace") or "default",
                              pod=r.attrs.get("pod") or r.container_id,
                              endpoint_revision=r.endpoint_revision, ip6=r.ip6)
                     for r in self.records)

    def live_handles(self) -> set[str]:
        return {r.handle for r in self.records}
