"""The node-local workload records: ``<state_dir>/<containerID>.json``.

The CNI plugin writes one record per pod attachment; the daemon's route reconciler
reads the directory as the source of truth for workload routes (one /32 per record,
via the record's host veth). Hence the ordering rules:

* ADD writes the record **before** it creates the host route, so a resync that runs
  in between never sweeps a route whose workload exists.
* DEL removes the record **last** (after the veth is gone and the address released),
  so a DEL that fails half-way (etcd down) leaves a record the next DEL finds. A
  record whose host veth does not exist therefore means "being deleted" (or "the
  admin removed the veth"): the reconciler cannot route to a missing device and
  should simply skip it.
* Writes are atomic: a temp file in the same directory, fsync, rename, fsync the
  directory — a reader sees the old record or the new one, never half of one, and a
  power cut cannot leave an empty file behind a rename.

Record format (JSON object, ``version`` 1)::

    {"version": 1, "container_id": "...", "ifname": "eth0", "netns": "/run/netns/x",
     "host_ifname": "nrw0123456789a", "ip": "198.19.0.5", "handle": "k8s-pod-network.<id>",
     "mtu": 1450, "route_protocol": 73, "node": "node-a", "network": "k8s-pod-network",
     "attrs": {"namespace": "...", "pod": "...", "node": "...", "ifname": "eth0"}}
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field

RECORD_VERSION = 1
SUFFIX = ".json"


class StateError(Exception):
    """The state dir could not be read or written (the message names the path)."""


@dataclass(frozen=True)
class WorkloadRecord:
    container_id: str
    ifname: str
    netns: str
    host_ifname: str
    ip: str
    handle: str
    mtu: int
    route_protocol: int
    node: str
    network: str = ""
    attrs: Mapping[str, str] = field(default_factory=dict)
    version: int = RECORD_VERSION

    def to_json(self) -> str:
        doc = asdict(self)
        doc["attrs"] = dict(self.attrs)
        return json.dumps(doc, sort_keys=True, indent=1) + "\n"

    @classmethod
    def from_dict(cls, doc: Mapping) -> WorkloadRecord:
        known = {f for f in cls.__dataclass_fields__}
        rec = cls(**{k: v for k, v in doc.items() if k in known})
        if rec.version != RECORD_VERSION:
            raise ValueError(f"record version {rec.version} (this code reads {RECORD_VERSION})")
        return rec


def record_path(state_dir: str, container_id: str) -> str:
    return os.path.join(state_dir, container_id + SUFFIX)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_record(state_dir: str, rec: WorkloadRecord) -> str:
    """Write ``rec`` atomically (tmp + fsync + rename); returns the path."""
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        final = record_path(state_dir, rec.container_id)
        # The temp name starts with '.', so list_records never sees a half-written file.
        fd, tmp = tempfile.mkstemp(prefix=f".{rec.container_id}.", suffix=".tmp", dir=state_dir)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(rec.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, final)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        _fsync_dir(state_dir)
        return final
    except OSError as exc:
        raise StateError(f"cannot write workload record in {state_dir}: {exc}; check that "
                         f"the directory is writable by root (conf key state_dir)") from None


def read_record(state_dir: str, container_id: str) -> WorkloadRecord | None:
    """The record of one container, or None if there is none."""
    path = record_path(state_dir, container_id)
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot read workload record {path}: {exc}; if it is corrupt, "
                         f"DEL the container or remove the file") from None
    try:
        return WorkloadRecord.from_dict(doc)
    except (TypeError, ValueError) as exc:
        raise StateError(f"workload record {path} is malformed: {exc}") from None


def remove_record(state_dir: str, container_id: str) -> bool:
    """Remove the record; True if there was one."""
    path = record_path(state_dir, container_id)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StateError(f"cannot remove workload record {path}: {exc}") from None
    try:
        _fsync_dir(state_dir)
    except OSError:
        pass  # the unlink happened; durability of the removal is best effort
    return True


def list_records(state_dir: str) -> Iterator[tuple[str, WorkloadRecord | None, str]]:
    """Every record in the dir as (container_id, record or None, error). A corrupt
    file yields None and the reason, so a reader can skip it without losing the rest."""
    try:
        names = sorted(os.listdir(state_dir))
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(".") or not name.endswith(SUFFIX):
            continue
        cid = name[: -len(SUFFIX)]
        try:
            rec = read_record(state_dir, cid)
        except StateError as exc:
            yield cid, None, str(exc)
            continue
        if rec is not None:        # removed between listdir and open: not an error
            yield cid, rec, ""
