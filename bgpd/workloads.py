"""Local workloads, as the CNI plugin records them in its state directory.

The plugin writes ``<state_dir>/<containerID>.json`` (atomically) before it
programs the pod's host route, and removes it after DEL. The daemon treats the
directory as the source of truth for the ``workload`` route class, so a resync
never sweeps a pod route whose record exists, and ``ipam check`` uses the same
records as the list of live workloads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from bgpd.calculator import Workload
from config.logs import get_logger

log = get_logger("bgpd.workloads")

HANDLE_PREFIX = "k8s-pod-network."


@dataclass(frozen=True)
class WorkloadRecord:
    container_id: str
    ip: str
    host_ifname: str
    handle: str


def _field(rec: dict, *names: str) -> str | None:
    for n in names:
        if isinstance(rec.get(n), str) and rec[n]:
            return rec[n]
    return None


def read_records(state_dir: str) -> list[WorkloadRecord]:
    """Every readable record; a corrupt one is logged and skipped, never fatal."""
    out = []
    try:
        names = sorted(os.listdir(state_dir))
    except FileNotFoundError:
        return []
    for name in names:
        if not name.endswith(".json"):
            continue
        path = os.path.join(state_dir, name)
        try:
            with open(path) as f:
                rec = json.load(f)
            cid = _field(rec, "container_id", "containerID") or name[:-5]
            ip = _field(rec, "ip", "address")
            ifname = _field(rec, "host_ifname", "host_veth", "host_if")
            if ip is None or ifname is None:
                raise ValueError("record lacks ip or host interface")
            ip = ip.split("/")[0]
            handle = _field(rec, "handle") or f"{HANDLE_PREFIX}{cid}"
            out.append(WorkloadRecord(cid, ip, ifname, handle))
        except (OSError, ValueError) as exc:
            log.warning("workload_record_unreadable", path=path, error=str(exc))
    return out


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
        self.records = read_records(self.state_dir)
        return True

    def workloads(self) -> tuple[Workload, ...]:
        return tuple(Workload(r.container_id, r.ip, r.host_ifname) for r in self.records)

    def live_handles(self) -> set[str]:
        return {r.handle for r in self.records}
