"""`noderouter run`: the node daemon — IPAM, dataplane and BGP wired into one loop.

Shape (Felix + Patroni): background threads only *record* — etcd syncers put
snapshots and events on the queue, the speaker's reader records RIB changes and
wakes us, signal handlers set flags — and one main loop does all the work:

    drain messages → recalculate (pure, ``bgpd.node.calculator``) → dataplane managers
    (``felix_like.managers``: tunnel devices and VTEPs → workloads → routes → NAT)
    → BGP announcements and peers

``run_cycle(now)`` returns a one-line summary that is logged when something
changed. Ownership and restarts: kernel routes carry our protocol number; on
start we read back what is ours and delete nothing until the datastore is in
sync and the learned routes are back (peers re-established and EoR, or the
graceful-restart time passed). SIGTERM leaves kernel routes in place and stops
ExaBGP without withdrawing (peers hold our routes: graceful restart).
"""

from __future__ import annotations

import ipaddress
import json
import os
import queue
import signal
import threading
import time
from dataclasses import replace

from bgpd.bgp.exabgp_config import PeerConfig as SpeakerPeer
from bgpd.bgp.exabgp_config import PrefixFilter, SpeakerConfig, peer_filters
from bgpd.bgp.import_policy import ImportPolicy
from bgpd.bgp.speaker import Speaker
from bgpd.node.calculator import (
    BlockView,
    Desired,
    Inputs,
    PoolView,
    calculate,
    learned_context,
)
from bgpd.node.learned_routes import LearnedRoutes
from bgpd.node.metrics import Health, HealthServer, Metrics
from bgpd.node.registry import NodeInfo, RegistryError
from bgpd.node.registry_store import NodeRegistration, nodes_prefix
from bgpd.node.sdnotify import Notifier
from bgpd.node.status_server import StatusServer
from bgpd.node.syncer import PrefixSyncer
from bgpd.node.workloads import WorkloadDir
from config import Config
from config.logs import get_logger
from felix_like.managers import CLASS_BGP
from ipam.allocator import Ipam, Keys
from ipam.errors import IpamError
from ipam.model import Block, Pool
from ipam.store import EtcdStore

VXLAN_HANDLE = "vxlan-tunnel-addr-{node}"
IPIP_HANDLE = "ipip-tunnel-addr-{node}"
DEFAULT_RUN_DIR = "/run/noderouter"
DEFAULT_STATE_DIR = "/var/lib/noderouter/cni"
# Learned routes count as complete this long after every peer is established, if no
# End-of-RIB told us sooner (ExaBGP reports EoR only when the peer sends one).
LEARNED_SETTLE_SECONDS = 5.0


class DaemonError(RuntimeError):
    """The daemon cannot start or continue; the message says what and how to fix it."""


def vtep_mac(node: str) -> str:
    """A stable, locally administered unicast MAC for our VXLAN device: published in the
    registry before the device exists, and the same after every restart."""
    import hashlib

    digest = hashlib.sha256(node.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def ipam_prefix(cfg: Config) -> str:
    return f"{cfg.etcd.prefix.rstrip('/')}/ipam/v1/"


class NodeDaemon:
    def __init__(self, cfg: Config, run_dir: str = DEFAULT_RUN_DIR,
                 state_dir: str = DEFAULT_STATE_DIR, notifier: Notifier | None = None,
                 clock=time.monotonic) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.state_dir = state_dir
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.log = get_logger("bgpd.node.daemon", node=cfg.node.name)
        self.q: queue.Queue = queue.Queue()
        self.metrics = Metrics()
        self.health = Health(peers_configured=bool(cfg.bgp.peers) or cfg.bgp.mesh)
        self.workload_dir = WorkloadDir(state_dir)
        # Snapshots from etcd (replaced whole on each resync, patched by events).
        self.nodes: dict[str, NodeInfo] = {}
        self.pools: dict[str, Pool] = {}
        self.blocks: dict[str, Block] = {}
        self.synced = {"nodes": False, "pools": False, "blocks": False}
        self.desired: Desired | None = None
        self._dirty = True
        self._stop_requested = False
        self._reload_requested = False
        self._started_at = clock()
        self._next_full_resync = self._started_at + cfg.dataplane.resync_interval
        self._all_established_at: float | None = None
        self._learned_in_sync = False
        # Learned routes -> dataplane (see bgpd.node.learned_routes); made with the dataplane.
        self.learned: LearnedRoutes | None = None
        self._routes_marked = False
        self._ready_sent = False
        self._last_error = ""
        self._applied_peers: tuple = ()
        self._syncers: list[PrefixSyncer] = []
        self._stores: list[EtcdStore] = []
        self.speaker: Speaker | None = None
        self.status_server: StatusServer | None = None
        self.cni_server = None                         # bgpd.cni.server.CniServer
        self.health_server: HealthServer | None = None
        self.registration: NodeRegistration | None = None
        self.vtep: tuple[str, str] | None = None       # (address, mac) of our vxlan device
        self.tunnel_address: str | None = None
        self.lock = threading.RLock()                  # guards views read by the status API

    # ------------------------------------------------------------------ wiring

    def _store(self) -> EtcdStore:
        e = self.cfg.etcd
        store = EtcdStore(list(e.endpoints), ca=e.ca_file, cert=e.cert_file, key=e.key_file,
                          timeout=e.timeout)
        self._stores.append(store)
        return store

    def start(self) -> NodeDaemon:
        cfg = self.cfg
        self.log.info("daemon_starting", underlay=str(cfg.underlay.address),
                      as_number=cfg.node.as_number, mesh=cfg.bgp.mesh,
                      explicit_peers=len(cfg.bgp.peers))
        os.makedirs(self.run_dir, exist_ok=True)
        from pyroute2 import IPRoute

        from felix_like.managers import CLASS_ORDER, Dataplane
        from felix_like.routetable import KernelRouteDriver, RouteTable
        from tunnels.encap import LocalUnderlay

        self.ipr = IPRoute()
        links = self.ipr.link_lookup(ifname=cfg.underlay.interface)
        if not links:
            raise DaemonError(f"underlay.interface {cfg.underlay.interface!r} does not exist "
                              f"on this node; fix the config")
        self.uplink_mtu = self.ipr.get_links(links[0])[0].get_attr("IFLA_MTU")
        self.routes = RouteTable(driver=KernelRouteDriver(ipr=self.ipr),
                                 protocol=cfg.dataplane.route_protocol, class_order=CLASS_ORDER,
                                 resync_interval=cfg.dataplane.resync_interval,
                                 clock=self.clock)
        local = LocalUnderlay(cfg.underlay.interface, (
            f"{cfg.underlay.address}/{cfg.underlay.subnet.prefixlen}",))
        self.dp = Dataplane.create(self.ipr, self.routes, local,
                                   vxlan_device=cfg.dataplane.vxlan_device)
        self.learned = LearnedRoutes(self.routes, CLASS_BGP,
                                     on_block_update=self.dp.remote.on_block_update,
                                     on_block_remove=self.dp.remote.on_block_remove)

        self.kv = self._store()
        self.ipam = Ipam(self.kv, cfg.node.name, prefix=ipam_prefix(cfg),
                         max_blocks_per_node=cfg.ipam.max_blocks_per_node,
                         cooldown=cfg.ipam.release_cooldown)
        self._seed_pools()
        self._ensure_tunnels(initial=True)
        self.registration = NodeRegistration(self._store(), cfg.etcd.prefix,
                                             self._node_info()).start()
        keys = Keys(ipam_prefix(cfg))
        for name, prefix in (("nodes", nodes_prefix(cfg.etcd.prefix)),
                             ("pools", keys.pools()), ("blocks", keys.blocks())):
            self._syncers.append(PrefixSyncer(
                self._store(), prefix,
                on_snapshot=lambda rev, kvs, n=name: self.q.put(("snapshot", n, rev, kvs)),
                on_event=lambda ev, n=name: self.q.put(("event", n, ev)),
                on_error=lambda msg, n=name: self.q.put(("sync_error", n, msg))).start())

        self.speaker = Speaker(self._speaker_config(), self._policy(frozenset()),
                               run_dir=os.path.join(self.run_dir, "bgp"),
                               exabgp=cfg.bgp.exabgp_path,  # None: default_exabgp() picks
                               on_change=lambda: self.q.put(("wake",)))
        self.speaker.start()
        self._applied_peers = self._speaker_config().peers

        st = cfg.status
        self.status_server = StatusServer(st.socket, st.socket_mode, st.socket_owner,
                                          st.socket_group)
        from bgpd.node import views

        views.register_all(self.status_server, self)
        self.status_server.start()
        if st.cni_socket:
            from bgpd.cni.server import CniServer

            self.cni_server = CniServer(st.cni_socket).start()
        if cfg.metrics.listen:
            self.metrics.serve(cfg.metrics.listen)
        if cfg.metrics.health_listen:
            self.health_server = HealthServer(self.health, cfg.metrics.health_listen).start()
        return self

    def _seed_pools(self) -> None:
        """Create the config's pools in etcd if missing (the datastore stays the truth)."""
        existing = {str(p.cidr): p for p in self.ipam.list_pools()}
        for p in self.cfg.pools:
            cidr = str(p.cidr)
            if cidr in existing:
                have = existing[cidr]
                if (have.block_size, have.ipip_mode, have.vxlan_mode) != (
                        p.block_size, p.ipip_mode, p.vxlan_mode):
                    self.log.warning("pool_differs_from_config", pool=cidr,
                                     datastore={"block_size": have.block_size,
                                                "ipip_mode": have.ipip_mode,
                                                "vxlan_mode": have.vxlan_mode})
                continue
            try:
                self.ipam.add_pool(cidr, p.block_size, ipip_mode=p.ipip_mode,
                                   vxlan_mode=p.vxlan_mode, nat_outgoing=p.nat_outgoing,
                                   disabled=p.disabled, strict_affinity=p.strict_affinity)
                self.log.info("pool_created", pool=cidr)
            except IpamError as exc:
                # Another node may have created it at the same moment: fine if it exists now.
                if cidr not in {str(x.cidr) for x in self.ipam.list_pools()}:
                    raise DaemonError(f"cannot create pool {cidr} from the config: {exc}") from exc

    def _ensure_tunnels(self, initial: bool = False) -> bool:
        """Tell the tunnel manager which devices the pools need, with their address from
        IPAM. Returns True when our registry record changed (VTEP or tunnel address)."""
        from tunnels.devices import VxlanParams
        from tunnels.encap import Encap, tunnel_mtu

        pools = self.ipam.list_pools() if initial else list(self.pools.values())
        active = [p for p in pools if not p.disabled]
        before = (self.vtep, self.tunnel_address)
        node = self.cfg.node.name
        dp = self.cfg.dataplane
        vxlan_pool = next((str(p.cidr) for p in active if p.vxlan_mode != "Never"), None)
        ipip_pool = next((str(p.cidr) for p in active if p.ipip_mode != "Never"), None)
        if vxlan_pool and self.vtep is None:
            addr = self.ipam.allocate(VXLAN_HANDLE.format(node=node),
                                      {"node": node, "type": "vxlanTunnelAddress"},
                                      pool=vxlan_pool)
            self.vtep = (addr, vtep_mac(node))
            self.dp.tunnels.on_vxlan_update(VxlanParams(
                vni=dp.vxlan_vni, port=dp.vxlan_port, local=str(self.cfg.underlay.address),
                mtu=tunnel_mtu(Encap.VXLAN, [self.uplink_mtu], dp.mtu), address=addr,
                mac=self.vtep[1], name=dp.vxlan_device))
        if ipip_pool and self.tunnel_address is None:
            addr = self.ipam.allocate(IPIP_HANDLE.format(node=node),
                                      {"node": node, "type": "ipipTunnelAddress"}, pool=ipip_pool)
            self.tunnel_address = addr
            self.dp.tunnels.on_ipip_update(True, tunnel_mtu(Encap.IPIP, [self.uplink_mtu],
                                                            dp.mtu), addr)
        return (self.vtep, self.tunnel_address) != before

    def _node_info(self) -> NodeInfo:
        c = self.cfg
        return NodeInfo(c.node.name, str(c.underlay.address), str(c.underlay.subnet),
                        c.node.as_number, tunnel_address=self.tunnel_address,
                        vtep_address=self.vtep[0] if self.vtep else None,
                        vtep_mac=self.vtep[1] if self.vtep else None)

    def _speaker_config(self) -> SpeakerConfig:
        c = self.cfg
        b = c.bgp
        peers = []
        for p in b.peers:
            peers.append(SpeakerPeer(
                address=str(p.address), asn=p.as_number,
                hold_time=p.hold_time if p.hold_time is not None else b.hold_time,
                password=str(p.password) if p.password else None, passive=p.passive,
                multihop=p.multihop,
                graceful_restart=b.restart_time if (p.graceful_restart if p.graceful_restart
                                                    is not None else b.graceful_restart) else None,
                max_prefix=p.max_prefix or b.max_prefix,
                max_prefix_teardown=p.max_prefix_teardown,
                allowed=tuple(PrefixFilter(str(n)) for n in p.import_allow),
                description=p.description))
        explicit = {x.address for x in peers}
        for m in (self.desired.mesh_peers if self.desired else ()):
            if m.address in explicit:
                continue
            peers.append(SpeakerPeer(
                address=m.address, asn=m.as_number, hold_time=b.hold_time,
                password=str(b.mesh_password) if b.mesh_password else None,
                passive=m.passive, graceful_restart=b.restart_time if b.graceful_restart else None,
                max_prefix=b.max_prefix, description=m.name))
        return SpeakerConfig(local_as=c.node.as_number, router_id=str(c.router_id),
                             local_address=str(c.underlay.address), peers=tuple(peers),
                             max_prefix_hold_down=b.max_prefix_hold_down)

    def _policy(self, own_blocks: frozenset[str]) -> ImportPolicy:
        cfgs = self._speaker_config().peers
        return ImportPolicy(local_as=self.cfg.node.as_number,
                            pools=tuple(sorted(self.pools)) or tuple(str(p.cidr)
                                                                     for p in self.cfg.pools),
                            own_blocks=own_blocks,
                            own_addresses=frozenset({str(self.cfg.underlay.address)}),
                            allowed=peer_filters(cfgs))

    # ------------------------------------------------------------------ messages

    def _apply_message(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "snapshot":
            _, name, _rev, kvs = msg
            self._replace(name, kvs)
            self.synced[name] = True
            self._dirty = True
        elif kind == "event":
            _, name, ev = msg
            self._patch(name, ev)
            self._dirty = True
        elif kind == "sync_error":
            _, name, err = msg
            self._last_error = f"etcd {name}: {err}"
        elif kind == "wake":
            pass

    def _parse(self, name: str, key: str, value: bytes):
        """(map key, record) of one etcd entry, or None (logged) when it is unusable:
        one bad record must not hide the others."""
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

    def _target(self, name: str) -> dict:
        return {"nodes": self.nodes, "pools": self.pools, "blocks": self.blocks}[name]

    def _replace(self, name: str, kvs) -> None:
        new = dict(filter(None, (self._parse(name, kv.key, kv.value) for kv in kvs)))
        with self.lock:
            target = self._target(name)
            target.clear()
            target.update(new)

    def _patch(self, name: str, ev) -> None:
        target = self._target(name)
        with self.lock:
            if ev.kind == "delete":
                key = ev.key.rsplit("/", 1)[1]
                if name == "nodes":
                    target.pop(key, None)
                else:
                    # pools/blocks keys encode the CIDR as a.b.c.d-len
                    cidr = key[: key.rfind("-")] + "/" + key[key.rfind("-") + 1:]
                    target.pop(str(ipaddress.ip_network(cidr)), None)
                return
            parsed = self._parse(name, ev.key, ev.value)
            if parsed is not None:
                target[parsed[0]] = parsed[1]

    # ------------------------------------------------------------------ the cycle

    @property
    def datastore_in_sync(self) -> bool:
        return all(self.synced.values())

    def _inputs(self) -> Inputs:
        cfg = self.cfg
        own = self._node_info()
        blocks = tuple(BlockView(c, b.affinity, b.confirmed) for c, b in self.blocks.items())
        borrowed = []
        for b in self.blocks.values():
            if b.affinity == cfg.node.name:
                continue
            for o, a in b.allocations.items():
                if a.node == cfg.node.name:
                    borrowed.append(str(b.ip(o)))
        pools = tuple(PoolView(c, p.ipip_mode, p.vxlan_mode, p.nat_outgoing, p.disabled)
                      for c, p in self.pools.items())
        return Inputs(own=own, uplink=cfg.underlay.interface, pools=pools, blocks=blocks,
                      nodes=dict(self.nodes),
                      workloads=self.workload_dir.workloads(), borrowed=tuple(borrowed),
                      mesh=cfg.bgp.mesh)

    def _learned_complete(self, now: float) -> bool:
        """True once learned routes are back after a (re)start: sweeping our kernel
        routes before that would drop traffic (Calico's felix#1592)."""
        if self._learned_in_sync:
            return True
        statuses = self.speaker.status() if self.speaker else []
        if statuses and all(s.state == "established" for s in statuses):
            if self._all_established_at is None:
                self._all_established_at = now
            if now - self._all_established_at >= LEARNED_SETTLE_SECONDS:
                self._learned_in_sync = True
        else:
            self._all_established_at = None
        if not statuses or now - self._started_at >= self.cfg.bgp.restart_time:
            self._learned_in_sync = True
        return self._learned_in_sync

    def run_cycle(self, now: float) -> str | None:
        """One loop iteration; returns a summary line when something was done."""
        if self.workload_dir.poll():
            self._dirty = True
        changes = self.speaker.take_route_changes() if self.speaker else {}
        parts = []
        if now >= self._next_full_resync:
            # Drift repair: someone deleted a route of ours, flushed the VXLAN neighbours
            # or the device itself. Everything is re-read and re-applied on this timer
            # (routes also after any failed apply).
            self._next_full_resync = now + self.cfg.dataplane.resync_interval
            self.dp.queue_resync()
        if self._dirty and self.datastore_in_sync:
            self._dirty = False
            if self._ensure_tunnels() and self.registration:
                self.registration.update(self._node_info())
            inputs = self._inputs()
            desired = calculate(inputs)
            old = self.desired
            self.desired = desired
            dp = self.dp
            dp.blackholes.on_update(desired.own_blocks)
            dp.workloads.replace_all(desired.workloads)
            ctx = learned_context(inputs)
            if ctx != self.learned.context:
                # Every learned route again (the RIB's current best routes include the
                # changes just taken).
                self.learned.set_context(ctx, self.speaker.routes() if self.speaker else {})
                changes = {}
            dp.remote.replace_all(desired.pool_encaps, self.learned.remote_blocks(),
                                  desired.remote_nodes)
            dp.nat.on_update(desired.all_pools, desired.nat_pools)
            own = frozenset(desired.own_blocks)
            if old is None or own != frozenset(old.own_blocks) or \
                    old.all_pools != desired.all_pools:
                self.speaker.set_policy(self._policy(own))
            if old is None or old.announce != desired.announce:
                self.speaker.set_desired(desired.announce)
                parts.append(f"announce {len(desired.announce)}")
            speaker_config = self._speaker_config()
            if speaker_config.peers != self._applied_peers:
                self.speaker.update_config(speaker_config)
                self._applied_peers = speaker_config.peers
                parts.append(f"peers {len(speaker_config.peers)}")
        if changes and self.learned.context is not None:
            self.learned.apply(changes)
        # Stale routes of ours go only once every source is complete.
        if (not self._routes_marked and self.datastore_in_sync and self.desired is not None
                and self._learned_complete(now)):
            self.routes.mark_in_sync()
            self._routes_marked = True
            parts.append("routes in sync")
        t0 = time.perf_counter()
        result = self.dp.apply()
        self.metrics.reconcile_seconds.labels("full" if result.resynced else "incremental") \
            .observe(time.perf_counter() - t0)
        if result.failed:
            self.metrics.reconcile_errors.inc(len(result.failed))
        if result.added or result.deleted or result.replaced or result.failed:
            parts.append("routes " + " ".join(f"{k}={v}" for k, v in result.summary().items()
                                               if v))
        self._update_health_and_metrics(now, result)
        return "; ".join(parts) or None

    def _update_health_and_metrics(self, now: float, result) -> None:
        h = self.health
        h.loop_heartbeat = now
        h.datastore_in_sync = self.datastore_in_sync
        h.dataplane_applied = self.desired is not None and not result.failed
        statuses = self.speaker.status() if self.speaker else []
        if any(s.state == "established" for s in statuses):
            h.peer_established_once = True
        m = self.metrics
        m.loop_iterations.inc()
        by_state: dict[str, int] = {}
        for s in statuses:
            by_state[s.state] = by_state.get(s.state, 0) + 1
            m.prefixes_accepted.labels(s.address).set(s.accepted)
        for state in ("idle", "connected", "established", "down", "max-prefix"):
            m.peers.labels(state).set(by_state.get(state, 0))
        if self.desired:
            for cls, count in self.route_counts().items():
                m.kernel_routes.labels(cls).set(count)
            m.prefixes_announced.set(len(self.desired.announce))
            m.ipam_blocks.set(len(self.desired.own_blocks))
        own = [b for b in self.blocks.values() if b.affinity == self.cfg.node.name]
        m.ipam_addresses.set(sum(len(b.allocations) for b in own))
        if self.speaker:
            restarts = max(self.speaker.starts - 1, 0)
            current = m.exabgp_restarts._value.get()  # noqa: SLF001 - counters only go up
            if restarts > current:
                m.exabgp_restarts.inc(restarts - current)
        ready, _ = h.ready()
        if ready and not self._ready_sent:
            self.notifier.ready(f"in sync; {len(statuses)} peers")
            self._ready_sent = True
            self.log.info("daemon_ready")
        self.notifier.watchdog(now)

    # ------------------------------------------------------------------ learned routes

    def route_counts(self) -> dict[str, int]:
        from felix_like.managers import CLASS_ORDER

        return {cls: self.routes.desired_count(cls) for cls in CLASS_ORDER}

    # ------------------------------------------------------------------ signals and loop

    def request_stop(self, *_args) -> None:
        self._stop_requested = True
        self.q.put(("wake",))

    def request_reload(self, *_args) -> None:
        self._reload_requested = True
        self.q.put(("wake",))

    def install_signal_handlers(self) -> None:
        # Handlers only set flags; the loop acts on them (Patroni's rule).
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)

    def reload(self, new_cfg: Config) -> None:
        """Apply a new config: peers and pools change; sessions that did not change stay."""
        fixed = ("node", "underlay", "etcd", "status", "metrics")
        changed_fixed = [k for k in fixed if getattr(new_cfg, k) != getattr(self.cfg, k)]
        if changed_fixed:
            self.log.warning("reload_ignores_sections_needing_restart", sections=changed_fixed)
            new_cfg = replace(new_cfg, **{k: getattr(self.cfg, k) for k in fixed})
        self.cfg = new_cfg
        self._seed_pools()
        self._dirty = True
        self.log.info("config_reloaded")

    def run(self, config_path: str | None = None, tick: float = 1.0) -> int:
        import gc

        # Long-lived objects (config, RIB, route table) need no scans by the cyclic GC:
        # freezing them and raising the threshold cut the 100k-route install time
        # noticeably (measured in bench/bench_bgp.py).
        gc.freeze()
        gc.set_threshold(100_000, 50, 50)
        self.log.info("daemon_running")
        while not self._stop_requested:
            try:
                msg = self.q.get(timeout=tick)
                self._apply_message(msg)
                while True:
                    self._apply_message(self.q.get_nowait())
            except queue.Empty:
                pass
            if self._reload_requested and config_path:
                self._reload_requested = False
                self.notifier.reloading()
                from config import ConfigError, load_file

                try:
                    self.reload(load_file(config_path))
                except ConfigError as exc:
                    # A bad config is refused whole; the running one stays.
                    self.log.error("reload_refused", problems=[str(p) for p in exc.problems])
                self.notifier.ready("reloaded")
            try:
                summary = self.run_cycle(self.clock())
                if summary:
                    self.log.info("cycle", summary=summary)
            except IpamError as exc:
                self._last_error = str(exc)
                self.log.error("cycle_failed_ipam", error=str(exc))
            except Exception as exc:  # noqa: BLE001 - one bad cycle must not kill the node
                error = f"{type(exc).__name__}: {exc}"
                if error != self._last_error:  # once per distinct error, not every second
                    self.log.exception("cycle_failed")
                self._last_error = error
                self._dirty = True
                self.dp.queue_resync()
        self.shutdown()
        return 0

    def shutdown(self, withdraw: bool = False) -> None:
        """Leave kernel routes in place; stop ExaBGP (peers keep our routes via GR)."""
        self.notifier.stopping()
        self.log.info("daemon_stopping", withdraw=withdraw)
        if self.speaker:
            try:
                self.speaker.stop(withdraw=withdraw)
            except Exception as exc:  # noqa: BLE001
                self.log.warning("speaker_stop_failed", error=str(exc))
        for s in self._syncers:
            s.stop()
        if self.registration:
            self.registration.stop(deregister=withdraw)
        if self.cni_server:
            self.cni_server.stop()
        if self.status_server:
            self.status_server.stop()
        if self.health_server:
            self.health_server.stop()
        for store in self._stores:
            store.close()
        self.log.info("daemon_stopped")
