"""The CNI commands (ADD, DEL, CHECK, VERSION, STATUS, GC), shared by both callers.

* the plugin's direct path (``main_direct``): ``noderouter-cni`` when no daemon
  answers on its socket (``bgpd.cni.main`` decides, before importing this module);
* the daemon's CNI server (``bgpd.cni.server``), through ``serve_request`` with a
  long-lived ``Datastore`` per worker thread.

See ``bgpd.cni.protocol`` for why the plugin can talk to etcd directly and for the error
codes, and ``bgpd.cni.records`` for the workload record the daemon reads.

ADD order (and its undo, run in reverse on any failure or SIGTERM/SIGINT):

1. validate env + conf, open the pod netns (code 3 if it is gone, code 4 if it is the
   node's own) — nothing touched yet;
2. take the container's lock (``bgpd.cni.records.acquire_lock``), held to the end:
   two ADDs of one container at once (a runtime retrying after a timeout) must not
   both find "no record" and build two attachments on one address (issue 12);
3. refuse a pod netns that already holds an interface of ours for another container
   (code 4): its default route would be replaced;
4. allocate by handle ``k8s-pod-network.<containerID>`` (idempotent per handle) →
   release that exact lease, and only if this call allocated it (an address the
   handle already held, e.g. from a killed ADD, is not this call's to free). A
   requested address (``runtimeConfig.ips``, ``args.cni.ips``, ``CNI_ARGS`` ``IP``;
   issue 16) is assigned exactly, after checking its pool may be used here, or ADD
   fails with code 107 naming why — never another address;
5. veth (peer created inside the pod netns) → delete that host veth, by index (takes
   the peer along);
6. pod side: /32, MTU, 169.254.1.1 scope link, default via it; host side: proxy ARP, up;
7. the pod's WorkloadEndpoint in etcd (issue 14: namespace and name from CNI_ARGS,
   labels and named ports from ``args.cni``, ``bgpd.cni.endpoints``) → delete it if
   it still names this container; its etcd revision goes into the record;
8. workload record (atomic) → remove it;
9. host /32 route with our protocol (after the record: the daemon's sweep keeps it).

Dual stack (issue 15, ``ipam: {"assign_ipv6": "true"}``): step 4 also allocates (or
assigns) an IPv6 address for the same handle, after the IPv4 one, each released on
undo only if this call assigned it; the host veth gets the fixed MAC ``HOST_MAC6`` so
the pod's IPv6 gateway is its known link-local; step 6 adds the /128 (nodad, DAD off
on the pod interface) and ``default via fe80::ecee:eeff:feee:eeee``, and IPv6
forwarding=1/accept_ra=0/accept_dad=0 on the host veth (node namespace); step 9 also
adds the host /128. DEL removes both routes; ``release_handle`` frees both addresses.

DEL order (under the same lock): our host routes through the container's own host
veth → the host veth (its routes would go with it anyway) → release the handle →
the WorkloadEndpoint (only while it names this container) → remove the record. A route of ours to the same /32 through another interface belongs
to a pod that got the address since; it is never touched. The record goes last so a
DEL that fails on etcd (code 11) is retried by the runtime and still knows the veth
name and address.

ADD for a container that already has a record (the spec says a runtime must not do
this without a DEL, but a runtime that lost our answer — timeout, restart — does):
if the request names the same interface and netns and the kernel and IPAM match the
record, the same result is returned and nothing is allocated (a fresh error would make
the runtime DEL and re-ADD, churning the pod's address for nothing). Anything else is
error 102 with the differences listed: we cannot know which side is right, and the
runtime's answer to an error is the DEL that makes the state clean again.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import structlog

# stdout is the CNI protocol and stderr the runtime's log: gRPC's C core must not write
# its own lines there (fork handlers, absl init). Set before grpc is ever imported.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from bgpd.cni.endpoints import (  # noqa: E402 - after the environment above
    endpoint_document,
    endpoint_key,
    put_endpoint,
    read_endpoint,
    remove_endpoint,
)
from bgpd.cni.protocol import (
    HOST_MAC6,
    Attachment,
    CniEnv,
    CniError,
    Code,
    NetConf,
    build_result,
    dumps,
    error_object,
    host_veth_name,
    k8s_attrs,
    parse_conf,
    parse_env,
    pod_handle,
    pod_identity,
    request_version,
    requested_addresses,
    result_ips,
    unknown_keys,
    version_answer,
)
from bgpd.cni.records import (
    LockTimeout,
    StateError,
    WorkloadRecord,
    acquire_lock,
    list_records,
    read_record,
    release_lock,
    remove_record,
    write_record,
)

LOG_ENV = "NODEROUTER_CNI_LOG"          # a file to append JSON log lines to (besides stderr)
NETWORK_NAME = "k8s-pod-network"

# A lazy proxy, never bound at import: a logger bound before setup_logging() would
# keep structlog's default (console) renderer.
log = structlog.get_logger("bgpd.cni.protocol")


def _log(**context):
    return log.bind(component="cni", **context)


class Terminated(BaseException):  # noqa: N818 - a signal, like KeyboardInterrupt
    """SIGTERM/SIGINT during a command: unwind (ADD undoes its work) and report.

    A BaseException on purpose, outside the CniError root: like KeyboardInterrupt it
    must pass every ``except Exception`` on its way up to the undo steps."""


def _on_signal(signum, _frame) -> None:
    raise Terminated(signal.Signals(signum).name)


# ------------------------------------------------------------------ logging

class _LineSink(io.TextIOBase):
    """Writes whole lines, one ``write(2)`` per line and stream: many plugin
    processes append to the same log file at once, and structlog's print() writes
    the message and its newline separately, which would interleave between them."""

    def __init__(self, fds: list[int]) -> None:
        self.fds = fds
        self._buf = ""

    def write(self, s: str) -> int:
        self._buf += s
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            data = (line + "\n").encode("utf-8", "replace")
            for fd in self.fds:
                try:
                    os.write(fd, data)
                except OSError:
                    pass
        return len(s)


_log_fds: dict[str, int] = {}


def setup_logging(level: str = "info", log_file: str | None = None) -> None:
    """JSON lines to stderr (and ``log_file``): stdout is the CNI protocol."""
    import logging

    fds = [2]
    if log_file:
        try:
            if log_file not in _log_fds:
                _log_fds[log_file] = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                                             | os.O_CLOEXEC, 0o640)
            fds.append(_log_fds[log_file])
        except OSError as exc:
            os.write(2, f"noderouter-cni: cannot open log file {log_file}: {exc}\n".encode())
    levels = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
              "error": logging.ERROR}
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars,
                    structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer(sort_keys=True)],
        wrapper_class=structlog.make_filtering_bound_logger(levels.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=_LineSink(fds)),
        cache_logger_on_first_use=False,
    )


# ------------------------------------------------------------------ datastore

def _ipam_errors(what: str, exc: Exception) -> CniError:
    from ipam.errors import (
        IpamConflict,
        IpamExhausted,
        IpamInvalid,
        IpamStoreUnavailable,
    )

    if isinstance(exc, IpamStoreUnavailable):
        return CniError(Code.TRY_AGAIN_LATER, f"{what}: etcd is unreachable", str(exc))
    if isinstance(exc, IpamConflict):
        return CniError(Code.TRY_AGAIN_LATER, f"{what}: the IPAM data is contended", str(exc))
    if isinstance(exc, IpamExhausted):
        return CniError(Code.IPAM_EXHAUSTED, f"{what}: no address available", str(exc))
    if isinstance(exc, IpamInvalid):
        return CniError(Code.INVALID_CONFIG, f"{what}: {exc}", "")
    return CniError(Code.DATASTORE, f"{what}: {exc}", type(exc).__name__)


class Datastore:
    """The IPAM over etcd, opened on first use (VERSION/DEL-without-etcd never pay).

    ``lock``: given when threads share this Datastore (the daemon's CNI server): every
    ``call`` and the connection itself are made under it, one at a time."""

    def __init__(self, conf: NetConf, lock: AbstractContextManager | None = None) -> None:
        self.conf = conf
        self._ipam = None
        self._lock = lock if lock is not None else nullcontext()

    def ipam(self):
        if self._ipam is None:
            from ipam.allocator import DEFAULT_PREFIX, Ipam
            from ipam.errors import IpamError
            from ipam.store import EtcdStore

            try:
                store = EtcdStore(list(self.conf.etcd_endpoints), ca=self.conf.etcd_ca,
                                  cert=self.conf.etcd_cert, key=self.conf.etcd_key,
                                  timeout=self.conf.etcd_timeout)
                self._ipam = Ipam(store, self.conf.node_name,
                                  prefix=self.conf.ipam_prefix or DEFAULT_PREFIX)
            except IpamError as exc:
                raise _ipam_errors("connecting to etcd", exc) from None
        return self._ipam

    def call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        from ipam.errors import IpamError

        with self._lock:
            try:
                return fn(self.ipam())
            except IpamError as exc:
                raise _ipam_errors(what, exc) from None

    def ipam_stats(self) -> dict[str, int]:
        """The IPAM's counters (allocations, conflicts, ...); empty if never opened."""
        return dict(self._ipam.stats) if self._ipam is not None else {}

    def close(self) -> None:
        if self._ipam is not None:
            try:
                self._ipam.store.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass


# ------------------------------------------------------------------ commands

def _state(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except StateError as exc:
        raise CniError(Code.STATE, str(exc)) from None


@contextmanager
def _locked(conf: NetConf, cid: str) -> Iterator[None]:
    """The container's lock (``bgpd.cni.records``), its failures as CNI errors: 106 if
    the state dir is unusable, 11 if another call for the container is still running
    after the lock's timeout."""
    try:
        fd = acquire_lock(conf.state_dir, cid)
    except LockTimeout as exc:
        raise CniError(Code.TRY_AGAIN_LATER, str(exc)) from None
    except StateError as exc:
        raise CniError(Code.STATE, str(exc)) from None
    try:
        yield
    finally:
        release_lock(conf.state_dir, cid, fd)


def _owner_of(conf: NetConf, host_ifname: str) -> str | None:
    """The container whose record names ``host_ifname`` (for an error message)."""
    for cid, rec, _err in list_records(conf.state_dir):
        if rec is not None and rec.host_ifname == host_ifname:
            return cid
    return None


def _attachment(rec: WorkloadRecord, host_mac: str, pod_mac: str) -> Attachment:
    return Attachment(ip=rec.ip, host_ifname=rec.host_ifname, host_mac=host_mac,
                      ifname=rec.ifname, pod_mac=pod_mac, netns=rec.netns, mtu=rec.mtu,
                      ip6=rec.ip6)


def _record_ips(rec: WorkloadRecord) -> list[str]:
    return [rec.ip, rec.ip6] if rec.ip6 else [rec.ip]


def _inspect_all(k, rec: WorkloadRecord):
    """``Kernel.inspect`` plus, for a dual-stack record, its IPv6 half (issue 15)."""
    problems, hl, pl = k.inspect(host=rec.host_ifname, ifname=rec.ifname, ip=rec.ip,
                                 mtu=rec.mtu, protocol=rec.route_protocol)
    if rec.ip6:
        problems += k.inspect6(host=rec.host_ifname, ifname=rec.ifname, ip6=rec.ip6,
                               protocol=rec.route_protocol)
    return problems, hl, pl


def _same_attachment(rec: WorkloadRecord, env: CniEnv) -> list[str]:
    from bgpd.cni.netns import same_netns

    diff = []
    if rec.ifname != env.ifname:
        diff.append(f"attached as {rec.ifname}, request names {env.ifname}")
    if rec.netns != env.netns and not same_netns(rec.netns, env.netns):
        diff.append(f"attached in netns {rec.netns}, request names {env.netns}")
    return diff


def _open_path(path: str) -> int:
    from bgpd.cni.netns import open_netns

    return open_netns(path)


# Opens CNI_NETNS: a pod netns fd the caller closes, or a CniError.
NetnsOpener = Callable[[str], int]


def passed_netns_opener(netns_fd: int | None, netns_errno: int | None) -> NetnsOpener:
    """The daemon's opener for a request from the plugin's fast path (issue 16): the
    plugin's own fd of CNI_NETNS (it sees the runtime's mount namespace, the daemon
    may not), checked as the direct path checks it, or the errno of the plugin's
    failed open. Without either (an older plugin; an fd announced but not received)
    the daemon opens the path itself. Errors read exactly as the direct path's: it
    is the same file, opened by the same process."""
    from bgpd.cni.netns import checked_netns_fd, open_error

    def opener(path: str) -> int:
        if netns_errno is not None:
            raise open_error(path, netns_errno)
        if netns_fd is not None:
            return checked_netns_fd(os.dup(netns_fd), path)
        return _open_path(path)
    return opener


def cmd_add(env: CniEnv, conf: NetConf, ds: Datastore,
            open_pod: NetnsOpener = _open_path) -> dict[str, Any]:
    # validated before anything; by family (issue 15: one per family the conf assigns)
    wanted = requested_addresses(conf.requested_ips, env.args, conf.assign_ipv4,
                                 conf.assign_ipv6)
    pod_identity(env.args, env.container_id)                   # likewise (code 4)
    pod_fd = open_pod(env.netns)
    try:
        with _locked(conf, env.container_id):
            return _add_locked(env, conf, ds, pod_fd, wanted)
    finally:
        os.close(pod_fd)


def _assign_requested(ipam, conf: NetConf, ip: str, handle: str,
                      attrs: Mapping[str, str]) -> bool:
    """Assign exactly ``ip`` to ``handle`` (issue 16: the "ips" capability); True if
    this call assigned it, False if the handle already held it (a killed ADD of this
    container, same address). Any reason it cannot be assigned is a CniError naming
    it: never another address."""
    import ipaddress

    from ipam.errors import IpamAddressInUse, IpamAffinityError, IpamNotFound, IpamReserved
    from ipam.model import eligible_pools

    addr = ipaddress.ip_address(ip)
    pools = ipam.list_pools()
    containing = [p for p in pools if addr in p.cidr]
    if not containing:
        raise CniError(Code.ADDRESS_UNAVAILABLE, f"requested address {ip} is in no IP pool",
                       "pools: " + (", ".join(str(p.cidr) for p in pools) or "none")
                       + "; add a pool containing it first (noderouter pool add)")
    pool = containing[0]
    if conf.ipam_pool is not None and str(pool.cidr) != conf.ipam_pool:
        raise CniError(Code.ADDRESS_UNAVAILABLE, f"requested address {ip} is in pool "
                       f"{pool.cidr}, not in this network's ipam_pool {conf.ipam_pool}")
    usable, reasons = eligible_pools([(pool, 0)], None, ipam.node, ipam.ctx.node_labels)
    if not usable:
        raise CniError(Code.ADDRESS_UNAVAILABLE, f"requested address {ip} is in a pool node "
                       f"{ipam.node} may not use", "; ".join(reasons))
    # This family's only: a dual-stack handle holds one address per family (issue 15).
    held = [h for h in ipam.handle_ips(handle) if ipaddress.ip_address(h).version == addr.version]
    if ip in held:
        return False
    if held:
        # No record (we hold the lock and found none): an ADD of this container was
        # killed after allocating. Its address is not the one asked for now.
        raise CniError(Code.ALREADY_ATTACHED, f"{handle} already holds {', '.join(held)} "
                       f"from an earlier ADD, not the requested {ip}",
                       "DEL the container first")
    try:
        ipam.assign(ip, handle, attrs)
    except (IpamAddressInUse, IpamReserved, IpamAffinityError, IpamNotFound) as exc:
        raise CniError(Code.ADDRESS_UNAVAILABLE, f"requested address {ip} cannot be "
                       f"assigned: {exc}", type(exc).__name__) from None
    return True


def _allocate(conf: NetConf, ds: Datastore, handle: str, attrs: Mapping[str, str],
              family: int, wanted: str | None,
              undo: list[tuple[str, Callable[[], Any]]]) -> tuple[bool, str]:
    """One address of ``family`` for ``handle``: ``wanted`` exactly, or a new lease;
    its release goes onto ``undo`` only if this call assigned it. Returns (new, ip)."""
    if wanted is not None:
        new = ds.call(f"assigning the requested {wanted} to {handle}",
                      lambda ipam: _assign_requested(ipam, conf, wanted, handle, attrs))
        if new:
            # By handle: we hold the container's lock, so nobody else can have
            # released and reassigned it to this handle since.
            undo.append(("release" if family == 4 else "release6", lambda: ds.call(
                f"releasing {wanted} of {handle}",
                lambda ipam: ipam.release_ip(wanted, handle=handle))))
        return new, wanted
    if family == 6:
        # Issue 15: name the missing pool before asking, so the error says what to add.
        pools = ds.call("listing IP pools", lambda ipam: ipam.list_pools())
        if not any(p.cidr.version == 6 and not p.disabled and not p.deleting for p in pools):
            raise CniError(Code.IPAM_EXHAUSTED, "this network assigns IPv6 (ipam.assign_ipv6) "
                           "but no enabled IPv6 IP pool exists",
                           "pools: " + (", ".join(str(p.cidr) for p in pools) or "none")
                           + "; add one: noderouter pool add <IPv6 cidr>")
    lease = ds.call(f"allocating an IPv{family} address for {handle}",
                    lambda ipam: ipam.allocate_lease(handle, attrs,
                                                     pool=conf.ipam_pool if family == 4
                                                     else None, family=family))
    if lease.new:
        # Exactly this lease (seq): never an address the handle held before
        # this call, nor one reused by someone else since.
        undo.append(("release" if family == 4 else "release6", lambda: ds.call(
            f"releasing {lease.ip} of {handle}",
            lambda ipam: ipam.release_ip(lease.ip, seq=lease.seq, handle=handle))))
    if (6 if ":" in lease.ip else 4) != family:
        raise CniError(Code.INVALID_CONFIG, f"IPAM handed out {lease.ip} for IPv{family}",
                       "set ipam_pool to an IPv4 pool")
    return lease.new, lease.ip


def _add_locked(env: CniEnv, conf: NetConf, ds: Datastore, pod_fd: int,
                wanted: dict[int, str]) -> dict[str, Any]:
    from bgpd.cni.netns import Kernel

    cid = env.container_id
    blog = _log(container=cid, ifname=env.ifname)
    handle = pod_handle(cid)
    host = host_veth_name(conf.workload_prefix, cid)
    with Kernel(pod_fd) as k:
        rec = _state(lambda: read_record(conf.state_dir, cid))
        if rec is not None:
            return _add_again(env, conf, ds, k, rec, blog, wanted)
        pod_links = k.pod_links()
        others = [(pod_if, h) for pod_if, h
                  in k.attachments_in_pod(pod_fd, conf.workload_prefix, pod_links) if h != host]
        if others:
            pod_if, other_host = others[0]
            owner = _owner_of(conf, other_host)
            raise CniError(Code.INVALID_ENV,
                           f"network namespace {env.netns} already holds {pod_if} of "
                           f"container {owner or '(no record)'} (host veth {other_host})",
                           "refused before any change: a second attachment would replace "
                           "that pod's default route; CNI_NETNS must be this container's")
        if any(link.name == env.ifname for link in pod_links):
            raise CniError(Code.ALREADY_ATTACHED,
                           f"interface {env.ifname} already exists in {env.netns}",
                           "another plugin or an earlier attachment uses this name; "
                           "pick another CNI_IFNAME or DEL the old attachment")
        if k.delete_link(host):
            # Same name = same container ID; no record, and we hold the container's
            # lock = an ADD that was killed before it finished (not one still running).
            # Its address (same handle) is reused below.
            blog.warning("cni_stale_veth_removed", host_ifname=host)
        undo: list[tuple[str, Callable[[], Any]]] = []
        marks: list[tuple[str, float]] = [("start", time.monotonic())]

        def mark(step: str) -> None:
            marks.append((step, time.monotonic()))
        try:
            attrs = {**k8s_attrs(env.args), "node": conf.node_name, "ifname": env.ifname}
            new, ip = _allocate(conf, ds, handle, attrs, 4, wanted.get(4), undo)
            ip6 = ""
            if conf.assign_ipv6:
                new6, ip6 = _allocate(conf, ds, handle, attrs, 6, wanted.get(6), undo)
                new = new or new6
            mark("allocate")
            # Dual stack: the fixed host MAC makes the pod's IPv6 gateway known (issue 15).
            created = k.create_veth(host, env.ifname, pod_fd, conf.mtu,
                                    host_mac=HOST_MAC6 if ip6 else None)
            undo.append(("veth", lambda: k.delete_link(host, index=created.index)))
            mark("veth")
            if ip6:
                k.prepare_pod6(env.ifname, pod_fd)
            pod_link = k.configure_pod(env.ifname, ip, conf.mtu)
            if ip6:
                k.configure_pod6(pod_link, ip6)
            mark("pod")
            host_link = k.configure_host(created, conf.mtu, ipv6=bool(ip6))
            mark("host")
            # The pod's WorkloadEndpoint (labels, named ports) before the record that
            # makes the node program the pod: the record names the revision, and the
            # node waits for it, so the pod is never enforced without its labels.
            ident = pod_identity(env.args, cid)
            wep_key = endpoint_key(conf.etcd_root, conf.node_name, ident.namespace, ident.pod)
            wep = endpoint_document(ident.namespace, ident.pod, conf.node_name, conf.labels,
                                    [ip, ip6] if ip6 else [ip], host, conf.named_ports, cid)
            wep_revision = ds.call(f"writing the WorkloadEndpoint {wep_key}",
                                   lambda ipam: put_endpoint(ipam.store, wep_key, wep))
            undo.append(("endpoint", lambda: ds.call(
                f"removing the WorkloadEndpoint {wep_key}",
                lambda ipam: remove_endpoint(ipam.store, wep_key, cid))))
            mark("endpoint")
            rec = WorkloadRecord(container_id=cid, ifname=env.ifname, netns=env.netns,
                                 host_ifname=host, ip=ip, handle=handle, mtu=conf.mtu,
                                 route_protocol=conf.route_protocol, node=conf.node_name,
                                 network=conf.name,
                                 attrs={**attrs, "namespace": ident.namespace,
                                        "pod": ident.pod},
                                 endpoint_revision=wep_revision, ip6=ip6)
            _state(lambda: write_record(conf.state_dir, rec))
            undo.append(("record", lambda: remove_record(conf.state_dir, cid)))
            mark("record")
            k.add_host_route(ip, host_link.index, conf.route_protocol)
            if ip6:
                k.add_host_route(ip6, host_link.index, conf.route_protocol)
            mark("route")
        except BaseException as exc:
            _undo(undo, blog, exc)
            raise
        blog.info("cni_added", ip=ip, ip6=ip6 or None, host_ifname=host, new_address=new,
                  requested=bool(wanted), **attrs)
        blog.debug("cni_add_steps_ms", **{name: round((t - prev) * 1e3, 1) for
                                           (_, prev), (name, t) in zip(marks, marks[1:], strict=False)})
        return build_result(conf.cni_version, _attachment(rec, host_link.mac, pod_link.mac))


def _undo(steps: list[tuple[str, Callable[[], Any]]], blog, exc: BaseException) -> None:
    """Roll back in reverse; keep going past failures (each is logged) so as much
    as possible is cleaned, and never mask the original error."""
    blog.warning("cni_add_failed_undoing", error=str(exc), steps=[n for n, _ in steps])
    for name, fn in reversed(steps):
        try:
            fn()
        except BaseException as uexc:  # noqa: BLE001 - undo must not stop half-way
            blog.error("cni_undo_step_failed", step=name, error=str(uexc))


def _add_again(env: CniEnv, conf: NetConf, ds: Datastore, k, rec: WorkloadRecord,
               blog, wanted: Mapping[int, str] | None = None) -> dict[str, Any]:
    diff = _same_attachment(rec, env)
    for family, have in ((4, rec.ip), (6, rec.ip6)):
        asked = (wanted or {}).get(family)
        if asked is not None and asked != have:
            diff.append(f"attached with {have or 'no IPv6 address'}, request asks for {asked}")
    if bool(rec.ip6) != conf.assign_ipv6:
        diff.append(f"attached {'dual-stack' if rec.ip6 else 'IPv4 only'}, the conf's "
                    f"ipam.assign_ipv6 is {'true' if conf.assign_ipv6 else 'false'}")
    if not diff:
        problems, hl, pl = _inspect_all(k, rec)
        diff += problems
        if not problems:
            held = ds.call(f"reading {rec.handle}", lambda ipam: ipam.handle_ips(rec.handle))
            for ip in _record_ips(rec):
                if ip not in held:
                    diff.append(f"IPAM does not hold {ip} for {rec.handle} (holds "
                                f"{', '.join(held) or 'nothing'})")
    if diff:
        raise CniError(Code.ALREADY_ATTACHED,
                       f"container {env.container_id} is already attached and differs "
                       f"from this request; DEL it first", "; ".join(diff))
    blog.info("cni_add_repeated", ip=rec.ip, host_ifname=rec.host_ifname)
    return build_result(conf.cni_version, _attachment(rec, hl.mac, pl.mac))


def _endpoint_key_of(conf: NetConf, cid: str, rec: WorkloadRecord | None,
                     args: Mapping[str, str]) -> str | None:
    """The pod's WorkloadEndpoint key: the identity ADD recorded, else the one
    ``CNI_ARGS`` gives now (None if those are not valid: ADD refused them, so it
    wrote nothing)."""
    if rec is not None and rec.attrs.get("pod"):
        ns, pod = rec.attrs.get("namespace") or "default", rec.attrs["pod"]
    else:
        try:
            ident = pod_identity(args, cid)
        except CniError:
            return None
        ns, pod = ident.namespace, ident.pod
    return endpoint_key(conf.etcd_root, rec.node if rec else conf.node_name, ns, pod)


def teardown(conf: NetConf, ds: Datastore, cid: str, rec: WorkloadRecord | None,
             blog, args: Mapping[str, str] | None = None) -> None:
    """Everything DEL removes, in DEL's order; missing pieces are fine."""
    from bgpd.cni.netns import Kernel

    host = rec.host_ifname if rec else host_veth_name(conf.workload_prefix, cid)
    handle = rec.handle if rec else pod_handle(cid)
    with Kernel() as k:
        link = k.host_link(host)
        removed_route = removed_veth = False
        if link is not None:
            if rec is not None:
                # Only through this container's own veth: the same /32 through another
                # interface is a live pod's that reused the address (issue 12).
                removed_route = k.delete_host_route(rec.ip, rec.route_protocol, link.index)
                if rec.ip6:
                    removed_route = k.delete_host_route(rec.ip6, rec.route_protocol,
                                                        link.index) or removed_route
            removed_veth = k.delete_link(host, index=link.index)
    released = ds.call(f"releasing the address of {handle}",
                       lambda ipam: ipam.release_handle(handle))
    wep_key = _endpoint_key_of(conf, cid, rec, args or {})
    removed_wep = wep_key is not None and ds.call(
        f"removing the WorkloadEndpoint {wep_key}",
        lambda ipam: remove_endpoint(ipam.store, wep_key, cid))
    removed_rec = _state(lambda: remove_record(conf.state_dir, cid))
    blog.info("cni_deleted", host_ifname=host, veth=removed_veth, route=removed_route,
              released=released, endpoint=removed_wep, record=removed_rec)


def cmd_del(env: CniEnv, conf: NetConf, ds: Datastore) -> None:
    cid = env.container_id
    blog = _log(container=cid, ifname=env.ifname)
    with _locked(conf, cid):          # not while an ADD of the container is half-way
        try:
            rec = read_record(conf.state_dir, cid)
        except StateError as exc:
            # A corrupt record must not block DEL forever: fall back to derived names.
            blog.warning("cni_record_unreadable", error=str(exc))
            rec = None
        if rec is not None and rec.ifname != env.ifname:
            # The spec keys attachments by (network, container, ifname): this DEL is for
            # an attachment we never made; the handle belongs to the one we did.
            blog.info("cni_del_other_ifname", attached=rec.ifname)
            return
        teardown(conf, ds, cid, rec, blog, env.args)


def cmd_check(env: CniEnv, conf: NetConf, ds: Datastore,
              open_pod: NetnsOpener = _open_path) -> None:
    from bgpd.cni.netns import Kernel

    cid = env.container_id
    rec = _state(lambda: read_record(conf.state_dir, cid))
    if rec is None:
        raise CniError(Code.UNKNOWN_CONTAINER, f"container {cid} is not attached by "
                       f"{conf.type or 'noderouter-cni'}", f"no record in {conf.state_dir}")
    pod_fd = open_pod(env.netns)
    try:
        with Kernel(pod_fd) as k:
            problems = _same_attachment(rec, env)
            p2, _hl, _pl = _inspect_all(k, rec)
            problems += p2
    finally:
        os.close(pod_fd)
    if conf.prev_result is not None:
        ips = result_ips(conf.prev_result)
        if ips != _record_ips(rec):
            problems.append(f"prevResult lists {ips}, the attachment has "
                            f"[{', '.join(_record_ips(rec))}]")
    held = ds.call(f"reading {rec.handle}", lambda ipam: ipam.handle_ips(rec.handle))
    for ip in _record_ips(rec):
        if ip not in held:
            problems.append(f"IPAM does not hold {ip} for {rec.handle}")
    if rec.endpoint_revision:
        # Read only: the labels may have been changed with `workload label` since ADD
        # and are not ours to reset (records from before issue 14 have no endpoint).
        problems += _endpoint_problems(conf, ds, cid, rec)
    if problems:
        raise CniError(Code.CHECK_FAILED, f"container {cid}: {len(problems)} problem(s)",
                       "; ".join(problems))


def _endpoint_problems(conf: NetConf, ds: Datastore, cid: str,
                       rec: WorkloadRecord) -> list[str]:
    key = _endpoint_key_of(conf, cid, rec, {})
    doc = ds.call(f"reading the WorkloadEndpoint {key}",
                  lambda ipam: read_endpoint(ipam.store, key))
    if doc is None:
        return [f"WorkloadEndpoint {key} is missing"]
    spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
    problems = []
    if spec.get("containerID") != cid:
        problems.append(f"WorkloadEndpoint {key} names container "
                        f"{spec.get('containerID')!r}, not {cid}")
    for ip in _record_ips(rec):
        if ip not in (spec.get("ips") or []):
            problems.append(f"WorkloadEndpoint {key} does not list {ip}")
    return problems


def cmd_status(conf: NetConf, ds: Datastore) -> None:
    """Ready to serve ADD: etcd answers, an enabled IPv4 pool exists, state dir usable."""
    try:
        pools = ds.call("listing IP pools", lambda ipam: ipam.list_pools())
    except CniError as exc:
        raise CniError(Code.NOT_AVAILABLE, exc.msg, exc.details) from None
    usable = [p for p in pools if not p.disabled and not p.deleting and p.cidr.version == 4]
    if not usable:
        raise CniError(Code.NOT_AVAILABLE, "no enabled IPv4 IP pool exists",
                       "add one: noderouter pool add <cidr>")
    parent = conf.state_dir if os.path.isdir(conf.state_dir) else os.path.dirname(conf.state_dir)
    if not os.access(parent, os.W_OK):
        raise CniError(Code.NOT_AVAILABLE, f"state dir {conf.state_dir} is not writable")


def cmd_gc(conf: NetConf, ds: Datastore) -> None:
    """Tear down every recorded attachment not in ``cni.dev/valid-attachments``."""
    if conf.valid_attachments is None:
        # Without the list, "everything not listed" would be everything: refuse.
        raise CniError(Code.INVALID_CONFIG, "GC needs cni.dev/valid-attachments",
                       "the runtime must list the attachments that are still valid")
    valid_ids = {cid for cid, ifname in conf.valid_attachments if not ifname}
    valid = set(conf.valid_attachments)
    errors: list[str] = []
    codes: set[int] = set()
    removed = 0
    for cid, rec, err in list(list_records(conf.state_dir)):
        if rec is None:
            errors.append(err)
            continue
        if cid in valid_ids or (cid, rec.ifname) in valid:
            continue
        try:
            with _locked(conf, cid):
                # Read again under the lock: a DEL or an ADD may have run since the listing.
                rec = _state(lambda cid=cid: read_record(conf.state_dir, cid))
                if rec is None or (cid, rec.ifname) in valid:
                    continue
                teardown(conf, ds, cid, rec, _log(container=cid, ifname=rec.ifname, gc=True))
            removed += 1
        except CniError as exc:
            errors.append(f"{cid}: {exc.msg} ({exc.details})")
            codes.add(exc.code)
    _log().info("cni_gc", removed=removed, errors=len(errors))
    if errors:
        # 11 if any failure is transient (etcd), so the runtime retries the GC.
        raise CniError(Code.TRY_AGAIN_LATER if Code.TRY_AGAIN_LATER in codes else Code.STATE,
                       f"GC left {len(errors)} attachment(s) behind", "; ".join(errors))


# ------------------------------------------------------------------ entry point

def execute(cenv: CniEnv, conf: NetConf, ds: Datastore,
            open_pod: NetnsOpener = _open_path) -> tuple[int, dict[str, Any] | None]:
    """Dispatch one parsed command: (exit code, document for stdout or None)."""
    t0 = time.monotonic()
    try:
        if cenv.command == "ADD":
            return 0, cmd_add(cenv, conf, ds, open_pod)
        if cenv.command == "DEL":
            cmd_del(cenv, conf, ds)
        elif cenv.command == "CHECK":
            cmd_check(cenv, conf, ds, open_pod)
        elif cenv.command == "STATUS":
            cmd_status(conf, ds)
        elif cenv.command == "GC":
            cmd_gc(conf, ds)
        return 0, None
    finally:
        _log().debug("cni_done", command=cenv.command, seconds=round(time.monotonic() - t0, 4))


def run(env: Mapping[str, str], stdin: bytes) -> tuple[int, dict[str, Any] | None]:
    """One invocation: (exit code, document for stdout or None). Raises CniError."""
    cenv = parse_env(env)
    if cenv.command == "VERSION":
        # stdin is {"cniVersion": ...} (or nothing); answer in that version if we speak it.
        return 0, version_answer(request_version(stdin) if stdin.strip() else "1.1.0")
    conf = parse_conf(stdin, cenv.command, env, default_node=socket.gethostname())
    setup_logging(conf.log_level, conf.log_file or env.get(LOG_ENV))
    extra = unknown_keys(stdin)
    if extra:
        _log().warning("cni_conf_unknown_keys", keys=extra)
    ds = Datastore(conf)
    try:
        return execute(cenv, conf, ds)
    finally:
        ds.close()


def answer(fn: Callable[[], tuple[int, dict[str, Any] | None]], env: Mapping[str, str],
           stdin: bytes) -> tuple[int, str | None]:
    """Run ``fn`` and turn every outcome into (exit code, text for stdout or None):
    CNI errors, SIGTERM/SIGINT and bugs all become the spec's error object."""
    version = request_version(stdin)
    command = env.get("CNI_COMMAND", "")
    try:
        code, doc = fn()
    except CniError as exc:
        _log().error("cni_error", command=command, container=env.get("CNI_CONTAINERID"),
                     code=exc.code, msg=exc.msg, details=exc.details)
        code, doc = 1, exc.to_dict(version)
    except Terminated as exc:
        _log().error("cni_terminated", command=command, signal=str(exc))
        code, doc = 1, error_object(Code.TRY_AGAIN_LATER, f"interrupted by {exc}", "", version)
    except Exception as exc:  # noqa: BLE001 - the protocol needs an error object
        _log().exception("cni_internal_error", command=command)
        code, doc = 1, error_object(Code.INTERNAL, f"internal error: {exc!r}",
                                    "a bug in noderouter-cni; the log has the traceback",
                                    version)
    return code, (dumps(doc) if doc is not None else None)


def serve_request(env: Mapping[str, str], stdin: bytes, default_node: str,
                  datastore: Callable[[NetConf], Datastore], netns_fd: int | None = None,
                  netns_errno: int | None = None) -> tuple[int, str | None]:
    """The daemon's side of one plugin call (``bgpd.cni.server``): the same parsing
    and commands as ``run``, but the daemon's logging (no ``setup_logging``: that
    would reconfigure the daemon's structlog) and a long-lived ``Datastore`` from
    ``datastore(conf)`` (never closed here). ``netns_fd``/``netns_errno``: what the
    plugin got opening CNI_NETNS (``passed_netns_opener``; the fd stays the
    caller's). Returns what the plugin prints."""
    def one() -> tuple[int, dict[str, Any] | None]:
        cenv = parse_env(env)
        if cenv.command == "VERSION":
            return 0, version_answer(request_version(stdin) if stdin.strip() else "1.1.0")
        conf = parse_conf(stdin, cenv.command, env, default_node=default_node)
        extra = unknown_keys(stdin)
        if extra:
            _log().warning("cni_conf_unknown_keys", keys=extra)
        return execute(cenv, conf, datastore(conf),
                       passed_netns_opener(netns_fd, netns_errno))
    return answer(one, env, stdin)


def main_direct(raw: bytes) -> int:
    """The plugin without the daemon: this process does the whole command."""
    # Everything but our final answer goes to stderr: point fd 1 there too, so a
    # stray print (ours or a library's, gRPC's C core included) cannot corrupt the
    # protocol stream. The answer is written to a private duplicate of the real fd 1.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    setup_logging("info", os.environ.get(LOG_ENV))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    code, text = answer(lambda: run(os.environ, raw), os.environ, raw)
    if text is not None:
        out.write(text + "\n")
    out.flush()
    return code


def main(argv: list[str] | None = None) -> int:
    raw = sys.stdin.buffer.read() if not sys.stdin.isatty() else b""
    return main_direct(raw)


if __name__ == "__main__":
    sys.exit(main())
