"""`noderouter run`: the node daemon's composition root -- builds, starts, runs, stops.

Shape (Felix + Patroni): background threads only *record* -- etcd syncers put
snapshots and events on the queue, the speaker's reader records RIB changes and
wakes us, signal handlers set flags -- and one main loop does all the work:

    drain messages into the etcd cache (``state.NodeState``) → tunnel addresses when
    the pools changed (IPAM, here: etcd I/O stays out of the cycle) → ``Cycle.run(now)``
    (``cycle``: calculate → dataplane updates → apply → speaker → publish a snapshot)

``Cycle.run`` returns a one-line summary that is logged when something changed.
Ownership and restarts: kernel routes carry our protocol number; on start we read
back what is ours and delete nothing until the datastore is in sync and the learned
routes are back (``cycle``'s restart gate). SIGTERM leaves kernel routes in place and
stops ExaBGP without withdrawing (peers hold our routes: graceful restart). The status
API reads only the cycle's published ``NodeSnapshot``.
"""

from __future__ import annotations

import os
import queue
import signal
import time
from dataclasses import replace

from bgpd.bgp.speaker import Speaker
from bgpd.node.calculator import PoolView, tunnel_pools
from bgpd.node.cycle import LEARNED_SETTLE_SECONDS, Cycle, TunnelAddresses, burst_wait
from bgpd.node.errors import NodeError
from bgpd.node.metrics import Health, HealthServer, Metrics
from bgpd.node.peering import import_policy, speaker_config, unserved_ipv6
from bgpd.node.policy_store import POLICY_KINDS, PolicyKeys
from bgpd.node.registry_store import NodeRegistration, nodes_prefix
from bgpd.node.sdnotify import Notifier
from bgpd.node.snapshot import NodeSnapshot
from bgpd.node.state import NodeState
from bgpd.node.status_server import StatusServer
from bgpd.node.syncer import PrefixSyncer
from bgpd.node.workloads import WorkloadDir
from config import Config
from config.logs import get_logger
from ipam.allocator import Ipam, Keys
from ipam.errors import IpamError
from ipam.model import Pool
from ipam.store import EtcdStore

__all__ = ["LEARNED_SETTLE_SECONDS", "DaemonError", "NodeDaemon", "vtep_mac"]

VXLAN_HANDLE = "vxlan-tunnel-addr-{node}"
IPIP_HANDLE = "ipip-tunnel-addr-{node}"
DEFAULT_RUN_DIR = "/run/noderouter"
DEFAULT_STATE_DIR = "/var/lib/noderouter/cni"


class DaemonError(NodeError, RuntimeError):
    """The daemon cannot start or continue; the message says what and how to fix it."""


def vtep_mac(node: str) -> str:
    """A stable, locally administered unicast MAC for our VXLAN device: published in the
    registry before the device exists, and the same after every restart."""
    import hashlib

    digest = hashlib.sha256(node.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def ipam_prefix(cfg: Config) -> str:
    return f"{cfg.etcd.prefix.rstrip('/')}/ipam/v1/"


def allocate_tunnel_addresses(ipam: Ipam, node: str, pools: list[Pool],
                              have: TunnelAddresses) -> TunnelAddresses:
    """The tunnel addresses the pools need that we do not have yet, from IPAM (etcd I/O).
    Once allocated an address stays (the handle makes a retry idempotent)."""
    vxlan_pool, ipip_pool = tunnel_pools(tuple(
        PoolView(str(p.cidr), p.ipip_mode, p.vxlan_mode, p.nat_outgoing, p.disabled)
        for p in pools))
    vtep, ipip = have.vtep, have.ipip
    if vxlan_pool and vtep is None:
        addr = ipam.allocate(VXLAN_HANDLE.format(node=node),
                             {"node": node, "type": "vxlanTunnelAddress"}, pool=vxlan_pool)
        vtep = (addr, vtep_mac(node))
    if ipip_pool and ipip is None:
        ipip = ipam.allocate(IPIP_HANDLE.format(node=node),
                             {"node": node, "type": "ipipTunnelAddress"}, pool=ipip_pool)
    return TunnelAddresses(vtep, ipip)


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
        self.state = NodeState(cfg.node.name)
        self.cycle: Cycle | None = None
        self._stop_requested = False
        self._last_cycle_end = 0.0  # time.monotonic() when the last cycle finished
        self._in_burst = False      # the last cycle followed its predecessor within the gap
        self._reload_requested = False
        self._started_at = clock()
        self._tunnel_pools_seen: tuple | None = None
        self._syncers: list[PrefixSyncer] = []
        self._stores: list[EtcdStore] = []
        self.speaker: Speaker | None = None
        self.status_server: StatusServer | None = None
        self.cni_server = None                         # bgpd.cni.server.CniServer
        self.health_server: HealthServer | None = None
        self.registration: NodeRegistration | None = None

    # ------------------------------------------------------------------ wiring

    def _store(self) -> EtcdStore:
        e = self.cfg.etcd
        store = EtcdStore(list(e.endpoints), ca=e.ca_file, cert=e.cert_file, key=e.key_file,
                          timeout=e.timeout)
        self._stores.append(store)
        return store

    def snapshot(self) -> NodeSnapshot | None:
        """The last published snapshot (None before the cycle exists). Any thread."""
        cycle = self.cycle
        return cycle.snapshot if cycle is not None else None

    def start(self) -> NodeDaemon:
        cfg = self.cfg
        self.log.info("daemon_starting", underlay=str(cfg.underlay.address),
                      as_number=cfg.node.as_number, mesh=cfg.bgp.mesh,
                      explicit_peers=len(cfg.bgp.peers))
        os.makedirs(self.run_dir, exist_ok=True)
        from pyroute2 import IPRoute

        from felix_like.managers import Dataplane
        from felix_like.policy import PolicyManager
        from tunnels.encap import LocalUnderlay

        self.ipr = IPRoute()
        links = self.ipr.link_lookup(ifname=cfg.underlay.interface)
        if not links:
            raise DaemonError(f"underlay.interface {cfg.underlay.interface!r} does not exist "
                              f"on this node; fix the config")
        uplink_mtu = self.ipr.get_links(links[0])[0].get_attr("IFLA_MTU")
        local = LocalUnderlay(cfg.underlay.interface, (
            f"{cfg.underlay.address}/{cfg.underlay.subnet.prefixlen}",))
        # Network policy (issue 14): nft runs in the namespace the daemon runs in, the
        # node's; the table filters only interfaces named like our pods' host veths.
        policy = PolicyManager(cfg.node.name, prefix=cfg.dataplane.workload_prefix)
        self.dp = Dataplane.for_node(self.ipr, local, cfg.dataplane.route_protocol,
                                     cfg.dataplane.resync_interval, self.clock,
                                     vxlan_device=cfg.dataplane.vxlan_device, policy=policy)

        self.kv = self._store()
        self.ipam = Ipam(self.kv, cfg.node.name, prefix=ipam_prefix(cfg),
                         max_blocks_per_node=cfg.ipam.max_blocks_per_node,
                         cooldown=cfg.ipam.release_cooldown)
        self._seed_pools()
        # Tunnel addresses before the loop (and again only when the pools change): the
        # cycle does no etcd I/O. Registered with them, so peers know our VTEP at once.
        pools = self.ipam.list_pools()
        tunnels = allocate_tunnel_addresses(self.ipam, cfg.node.name, pools,
                                            TunnelAddresses())
        self._tunnel_pools_seen = self._pools_key(pools)

        unserved = unserved_ipv6(cfg)
        if unserved:
            self.log.warning("ipv6_bgp_not_served", items=list(unserved),
                             why="BGP ipv6 unicast is not implemented yet (issue 15)")
        first_config = speaker_config(cfg)
        self.speaker = Speaker(first_config,
                               import_policy(cfg, (), frozenset(), first_config),
                               run_dir=os.path.join(self.run_dir, "bgp"),
                               exabgp=cfg.bgp.exabgp_path,  # None: default_exabgp() picks
                               on_change=lambda: self.q.put(("wake",)))
        self.cycle = Cycle(cfg, self.state, self.workload_dir, self.speaker, self.dp,
                           self.notifier, self.metrics, self.health,
                           started_at=self._started_at, uplink_mtu=uplink_mtu,
                           applied_peers=first_config.peers)
        self.cycle.set_tunnel_addresses(tunnels)
        self.registration = NodeRegistration(self._store(), cfg.etcd.prefix,
                                             self.cycle.node_info()).start()
        keys = Keys(ipam_prefix(cfg))
        policy_keys = PolicyKeys(cfg.etcd.prefix)
        for name, prefix in (("nodes", nodes_prefix(cfg.etcd.prefix)),
                             ("pools", keys.pools()), ("blocks", keys.blocks()),
                             *((kind, policy_keys.kind(kind)) for kind in POLICY_KINDS)):
            self._syncers.append(PrefixSyncer(
                self._store(), prefix,
                on_snapshot=lambda rev, kvs, n=name: self.q.put(("snapshot", n, rev, kvs)),
                on_event=lambda ev, n=name: self.q.put(("event", n, ev)),
                on_error=lambda msg, n=name: self.q.put(("sync_error", n, msg))).start())
        self.speaker.start()

        st = cfg.status
        self.status_server = StatusServer(st.socket, st.socket_mode, st.socket_owner,
                                          st.socket_group)
        from bgpd.node import views

        views.register_all(self.status_server, self.snapshot)
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

    @staticmethod
    def _pools_key(pools) -> tuple:
        """What tunnel allocation depends on: which active pools need which device."""
        return tunnel_pools(tuple(PoolView(str(p.cidr), p.ipip_mode, p.vxlan_mode,
                                           p.nat_outgoing, p.disabled) for p in pools))

    def _on_pools_changed(self) -> None:
        """A pool-change event, outside the cycle: allocate the tunnel addresses a new
        pool needs (IPAM, etcd) and publish them in our registry record."""
        pools = list(self.state.pools.values())
        key = self._pools_key(pools)
        if key == self._tunnel_pools_seen:
            return
        have = self.cycle.tunnels
        tunnels = allocate_tunnel_addresses(self.ipam, self.cfg.node.name, pools, have)
        self._tunnel_pools_seen = key
        if tunnels != have:
            self.cycle.set_tunnel_addresses(tunnels)
            if self.registration:
                self.registration.update(self.cycle.node_info())

    def _drain(self, tick: float) -> None:
        """Wait up to ``tick`` for a message, then take every queued one.

        Under a burst a cycle starts at most every ``MIN_CYCLE_GAP`` seconds: when
        messages keep coming sooner than that after each cycle, wait out the rest of the
        gap, so a burst of one-prefix UPDATEs is taken in batches instead of one cycle per
        prefix (issue 18: 10k such routes took up to 4.8 s after the last UPDATE). An
        isolated message runs at once (convergence of a single change pays nothing)."""
        msgs = []
        try:
            msgs.append(self.q.get(timeout=tick))
            wait, self._in_burst = burst_wait(time.monotonic() - self._last_cycle_end,
                                              self._in_burst)
            if wait:
                time.sleep(wait)
            while True:
                msgs.append(self.q.get_nowait())
        except queue.Empty:
            pass
        for msg in msgs:
            applied = self.state.apply(msg)
            if applied.changed:
                self.cycle.mark_dirty()
            if applied.error:
                self.cycle.last_error = applied.error

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
        self.cycle.set_config(new_cfg)
        self.log.info("config_reloaded")

    def run(self, config_path: str | None = None, tick: float = 1.0) -> int:
        import gc

        # Long-lived objects (config, RIB, route table) need no scans by the cyclic GC:
        # freezing them and raising the threshold cut the 100k-route install time
        # noticeably (measured in bench/bench_bgp.py).
        gc.freeze()
        gc.set_threshold(100_000, 50, 50)
        self.log.info("daemon_running")
        cycle = self.cycle
        while not self._stop_requested:
            self._drain(tick)
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
            if self.state.in_sync:
                try:
                    self._on_pools_changed()
                except IpamError as exc:
                    # Retried next tick; the cycle runs on with the addresses we have.
                    if str(exc) != cycle.last_error:  # once per distinct error
                        self.log.error("tunnel_address_failed_ipam", error=str(exc))
                    cycle.last_error = str(exc)
            try:
                summary = cycle.run(self.clock())
                if summary:
                    self.log.info("cycle", summary=summary)
            except Exception as exc:  # noqa: BLE001 - one bad cycle must not kill the node
                error = f"{type(exc).__name__}: {exc}"
                if error != cycle.last_error:  # once per distinct error, not every second
                    self.log.exception("cycle_failed")
                cycle.failed(error)
            self._last_cycle_end = time.monotonic()
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
