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
* One call at a time per container (issue 12): ADD, DEL and GC hold
  ``container_lock`` from reading the record to writing or removing it. Two ADDs of
  one container (a runtime retrying while its first call still runs) used to both see
  "no record", both allocate the same address (idempotent per handle), and the loser's
  rollback released the winner's address. The lock is an ``flock`` on
  ``<state_dir>/.locks/<containerID>.lock``: it works across plugin processes and the
  daemon's worker threads alike (each caller opens its own file description), and the
  kernel drops it when a killed plugin's fd closes. The locks live in a subdirectory so
  taking one does not change the state dir's mtime, which the daemon polls.

Record format (JSON object, ``version`` 1)::

    {"version": 1, "container_id": "...", "ifname": "eth0", "netns": "/run/netns/x",
     "host_ifname": "nrw0123456789a", "ip": "198.19.0.5", "handle": "k8s-pod-network.<id>",
     "mtu": 1450, "route_protocol": 73, "node": "node-a", "network": "k8s-pod-network",
     "attrs": {"namespace": "...", "pod": "...", "node": "...", "ifname": "eth0"},
     "endpoint_revision": 1234}

``attrs`` ``namespace``/``pod`` are the pod's identity (``protocol.pod_identity``), the
key of its WorkloadEndpoint in etcd, which the node joins the record with.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from bgpd.cni.protocol import CniError, Code

RECORD_VERSION = 1
SUFFIX = ".json"
LOCK_DIR = ".locks"              # starts with '.': list_records never looks inside
LOCK_SUFFIX = ".lock"
# How long a call waits for another call of the same container before answering
# "try again later": an ADD is bounded by its etcd timeouts, far below this.
LOCK_TIMEOUT = 60.0


class StateError(CniError):
    """The state dir could not be read or written (the message names the path)."""

    def __init__(self, msg: str, code: int = Code.STATE) -> None:
        super().__init__(code, msg)


class LockTimeout(StateError):
    """Another call for the same container held its lock for too long: try again."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, Code.TRY_AGAIN_LATER)


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
    # The etcd revision at which ADD wrote the pod's WorkloadEndpoint (its labels):
    # the node programs the pod's policy only once its watch has seen that revision,
    # so a pod is never enforced without its labels (issue 14). 0 = none written.
    endpoint_revision: int = 0
    version: int = RECORD_VERSION
    # The pod's IPv6 address of a dual-stack attachment (issue 15); "" = IPv4 only
    # (records written before issue 15 have none and read as IPv4 only).
    ip6: str = ""

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


def lock_path(state_dir: str, container_id: str) -> str:
    return os.path.join(state_dir, LOCK_DIR, container_id + LOCK_SUFFIX)


def _flock_until(fd: int, deadline: float) -> bool:
    """Exclusive flock on ``fd``, polling (a blocking flock could not be bounded, and
    a worker thread of the daemon must not hang on a wedged call); False at deadline."""
    delay = 0.005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise
        now = time.monotonic()
        if now >= deadline:
            return False
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 2, 0.1)


def acquire_lock(state_dir: str, container_id: str, timeout: float = LOCK_TIMEOUT) -> int:
    """Take the per-container lock (see the module notes); returns the fd to hand
    to ``release_lock``. Raises StateError (LockTimeout after ``timeout`` seconds)."""
    path = lock_path(state_dir, container_id)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    except OSError as exc:
        raise StateError(f"cannot create the lock directory in {state_dir}: {exc}; check "
                         f"that it is writable by root (conf key state_dir)") from None
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(f"cannot open lock file {path}: {exc}") from None
        try:
            if not _flock_until(fd, deadline):
                raise LockTimeout(f"another call for container {container_id} has held "
                                  f"{path} for {timeout:g}s; try again later")
            held = os.fstat(fd)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
        except BaseException:
            os.close(fd)
            raise
        if current is not None and (current.st_dev, current.st_ino) == (held.st_dev,
                                                                         held.st_ino):
            return fd
        # The previous holder removed the file after we opened it (release_lock):
        # our lock guards nothing anyone else can see. Lock the file now at the path.
        os.close(fd)


def release_lock(state_dir: str, container_id: str, fd: int) -> None:
    """Drop the lock. Its file is removed first when the container has no record
    (after DEL, a failed ADD), so the directory does not keep a file per container
    ever seen; waiters that locked the removed file start over (``acquire_lock``)."""
    try:
        if not os.path.exists(record_path(state_dir, container_id)):
            os.unlink(lock_path(state_dir, container_id))
    except OSError:
        pass                      # best effort: a leftover lock file is harmless
    finally:
        os.close(fd)


@contextmanager
def container_lock(state_dir: str, container_id: str,
                   timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the per-container lock for the block."""
    fd = acquire_lock(state_dir, container_id, timeout)
    try:
        yield
    finally:
        release_lock(state_dir, container_id, fd)
