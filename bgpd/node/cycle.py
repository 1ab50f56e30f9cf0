"""``Cycle.run(now)``: one iteration of the node's loop, with its ports injected.

    workloads + etcd cache (incl. network policy) → calculate (pure) → ``Dataplane.on_update`` for each update
    → learned-route changes → (restart gate) → ``Dataplane.apply()`` → speaker
    (policy, announcements, peers) → health, metrics, sd_notify → publish ``NodeSnapshot``

Ports: the etcd cache (``NodeState``, filled by the daemon from the syncers' queue),
the workload directory, the speaker, the dataplane and the notifier. No etcd, no IPAM
and no clock in here: the daemon (composition root) allocates tunnel addresses before
the loop and on pool changes (``set_tunnel_addresses``), and passes ``now``. That is
what lets the unit tests run a cycle with fakes behind the real ``Dataplane``.

Review notes (invariants)
- Restart gate: nothing read back from the kernel is swept (``Dataplane.mark_in_sync``)
  before the datastore is in sync, a calculation ran, and the learned routes are back:
  every peer established and its End-of-RIB received (a peer that negotiated no
  graceful restart may send none: for it, established for ``LEARNED_SETTLE_SECONDS``),
  or no peer configured, or the graceful-restart time since start passed -- Calico's
  felix#1592. Only that sweep waits: an explicit withdraw applies at once (the route
  table deletes what was desired during this run and given up, issue 18).
- End-of-RIB goes to peers only once the first full calculation's announcements are
  handed to the speaker (``set_desired(complete=True)``): an etcd stall at start must
  not send an empty End-of-RIB that makes a ToR drop our block (issue 18).
- A failed route stays dirty in the route table and is retried; a failed cycle
  (``failed``) recalculates and resyncs the dataplane next time.
- Every run ends by publishing a ``NodeSnapshot``; other threads read only that.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from bgpd.node.calculator import (
    BlockView,
    Desired,
    Inputs,
    PodAddress,
    PolicyView,
    PoolView,
    calculate,
    learned_context,
)
from bgpd.node.heap import release_free_heap, should_trim
from bgpd.node.metrics import Health, Metrics
from bgpd.node.peering import import_policy, speaker_config
from bgpd.node.registry import NodeInfo
from bgpd.node.snapshot import NodeSnapshot, PoolRow
from bgpd.node.state import NodeState
from config import Config
from config.logs import get_logger
from felix_like.routetable import ApplyResult
from felix_like.updates import (
    IpipDeviceUpdate,
    LearnedContext,
    LearnedContextUpdate,
    LearnedRouteChanges,
    VxlanDeviceUpdate,
)
from tunnels.encap import Encap, tunnel_mtu

# A peer without graceful restart may send no End-of-RIB (RFC 4724 makes it part of
# GR): its routes count as complete this long after its session is established.
LEARNED_SETTLE_SECONDS = 5.0
# Under a burst of UPDATEs (one prefix each, as implementations that inject routes one
# at a time send them) a cycle per prefix would cap the node at a few hundred routes a
# second; cycles start at most this often, so each takes everything that arrived.
MIN_CYCLE_GAP = 0.02


def _str_or_none(value) -> str | None:
    return None if value is None else str(value)


def burst_wait(since_last_cycle: float, in_burst: bool,
               gap: float = MIN_CYCLE_GAP) -> tuple[float, bool]:
    """How long the loop waits before the next cycle, and whether it is in a burst now.

    A message after a quiet spell, or the first one soon after a lone cycle, runs at once
    (a single claim or withdraw pays nothing); from the next quick one on, cycles are at
    least ``gap`` apart so each takes everything that arrived meanwhile (issue 18)."""
    quick = since_last_cycle < gap
    return (gap - since_last_cycle if quick and in_burst else 0.0), quick


@dataclass(frozen=True)
class TunnelAddresses:
    """Our tunnel devices' addresses from IPAM (allocated by the daemon, not the cycle)."""

    vtep: tuple[str, str] | None = None     # (address, mac) of our VXLAN device
    ipip: str | None = None                 # tunl0's address


class SpeakerPort(Protocol):
    starts: int

    def take_route_changes(self) -> Mapping: ...
    def routes(self) -> Mapping: ...
    def status(self) -> list: ...
    def counters(self) -> Mapping[str, int]: ...
    def set_policy(self, policy) -> None: ...
    def set_desired(self, prefixes: frozenset[str], complete: bool = False) -> None: ...
    def peer_counters(self) -> Mapping: ...
    def update_config(self, config) -> None: ...
    @property
    def exabgp_pid(self) -> int | None: ...


class NotifierPort(Protocol):
    def ready(self, status: str) -> None: ...
    def watchdog(self, now: float) -> None: ...


class Cycle:
    def __init__(self, cfg: Config, state: NodeState, workloads, speaker: SpeakerPort,
                 dataplane, notifier: NotifierPort, metrics: Metrics, health: Health,
                 started_at: float, uplink_mtu: int, applied_peers: tuple = ()) -> None:
        self.cfg = cfg
        self.state = state
        self.workloads = workloads          # bgpd.node.workloads.WorkloadDir
        self.speaker = speaker
        self.dataplane = dataplane          # felix_like.managers.Dataplane
        self.notifier = notifier
        self.metrics = metrics
        self.health = health
        self.uplink_mtu = uplink_mtu
        self.log = get_logger("bgpd.node.cycle", node=cfg.node.name)
        self.desired: Desired | None = None
        self.tunnels = TunnelAddresses()
        self.last_error = ""
        self.snapshot = self._identity()
        self._dirty = True
        self._started_at = started_at
        self._next_full_resync = started_at + cfg.dataplane.resync_interval
        self._established_since: dict[str, float] = {}  # peer -> first cycle seen up
        self._learned_in_sync = False
        self._learned_context: LearnedContext | None = None
        self._routes_marked = False
        self._ready_sent = False
        self._applied_peers = applied_peers
        self._runs = 0

    # ------------------------------------------------------------------ inputs from the daemon
    def mark_dirty(self) -> None:
        self._dirty = True

    def set_config(self, cfg: Config) -> None:
        """A reloaded config (the daemon kept the sections that need a restart)."""
        self.cfg = cfg
        self._dirty = True

    def set_tunnel_addresses(self, tunnels: TunnelAddresses) -> None:
        """Our tunnel addresses changed (allocated at start or after a pool change)."""
        if tunnels == self.tunnels:
            return
        self.tunnels = tunnels
        dp = self.cfg.dataplane
        if tunnels.vtep is not None:
            self.dataplane.on_update(VxlanDeviceUpdate(
                vni=dp.vxlan_vni, port=dp.vxlan_port, local=str(self.cfg.underlay.address),
                mtu=tunnel_mtu(Encap.VXLAN, [self.uplink_mtu], dp.mtu),
                address=tunnels.vtep[0], mac=tunnels.vtep[1], name=dp.vxlan_device))
        if tunnels.ipip is not None:
            self.dataplane.on_update(IpipDeviceUpdate(
                True, tunnel_mtu(Encap.IPIP, [self.uplink_mtu], dp.mtu), tunnels.ipip))
        self._dirty = True

    def failed(self, error: str) -> None:
        """The last run raised: recalculate and resync the dataplane next time."""
        self.last_error = error
        self._dirty = True
        self.dataplane.queue_resync()

    def node_info(self) -> NodeInfo:
        c = self.cfg
        vtep = self.tunnels.vtep
        return NodeInfo(c.node.name, str(c.underlay.address), str(c.underlay.subnet),
                        c.node.as_number, tunnel_address=self.tunnels.ipip,
                        vtep_address=vtep[0] if vtep else None,
                        vtep_mac=vtep[1] if vtep else None,
                        ipv6_address=_str_or_none(c.underlay.ipv6_address),
                        ipv6_subnet=_str_or_none(c.underlay.ipv6_subnet))

    # ------------------------------------------------------------------ the run
    def _inputs(self) -> Inputs:
        cfg, st = self.cfg, self.state
        me = cfg.node.name
        blocks = tuple(BlockView(c, b.affinity, b.confirmed) for c, b in st.blocks.items())
        borrowed = tuple(str(b.ip(o)) for b in st.blocks.values() if b.affinity != me
                         for o, a in b.allocations.items() if a.node == me)
        pools = tuple(PoolView(c, p.ipip_mode, p.vxlan_mode, p.nat_outgoing, p.disabled)
                      for c, p in st.pools.items())
        policy = None
        if st.policy_in_sync:
            pods = tuple(PodAddress(a.node, a.attrs.get("namespace") or "default",
                                    a.attrs["pod"], str(b.ip(o)))
                         for b in st.blocks.values() for o, a in b.allocations.items()
                         if a.attrs.get("pod"))    # tunnel addresses carry no pod
            policy = PolicyView(tuple(st.networkpolicies.values()),
                                tuple(st.namespaces.values()),
                                tuple(st.workloadendpoints.values()), pods,
                                st.revisions["workloadendpoints"])
        return Inputs(own=self.node_info(), uplink=cfg.underlay.interface, pools=pools,
                      blocks=blocks, nodes=dict(st.nodes), workloads=self.workloads.workloads(),
                      borrowed=borrowed, mesh=cfg.bgp.mesh, policy=policy)

    def _learned_complete(self, now: float) -> bool:
        """True once learned routes are back after a (re)start: sweeping our kernel
        routes before that would drop traffic (Calico's felix#1592)."""
        if self._learned_in_sync:
            return True
        statuses = self.speaker.status()
        if not statuses or now - self._started_at >= self.cfg.bgp.restart_time:
            self._learned_in_sync = True
            return True
        since = self._established_since
        for s in statuses:
            if s.state == "established":
                since.setdefault(s.address, now)
            else:
                since.pop(s.address, None)
        self._learned_in_sync = all(
            s.state == "established" and (
                s.eor_received or (s.graceful_restart is None
                                   and now - since[s.address] >= LEARNED_SETTLE_SECONDS))
            for s in statuses)
        return self._learned_in_sync

    def run(self, now: float) -> str | None:
        """One loop iteration; returns a summary line when something was done."""
        self._runs += 1
        dp = self.dataplane
        if self.workloads.poll():
            self._dirty = True
        changes = self.speaker.take_route_changes()
        learned_changed = bool(changes)
        parts = []
        if now >= self._next_full_resync:
            # Drift repair: someone deleted a route of ours, flushed the VXLAN neighbours
            # or the device itself. Everything is re-read and re-applied on this timer
            # (routes also after any failed apply).
            self._next_full_resync = now + self.cfg.dataplane.resync_interval
            dp.queue_resync()
        if self._dirty and self.state.in_sync:
            self._dirty = False
            inputs = self._inputs()
            desired = calculate(inputs)
            old, self.desired = self.desired, desired
            for msg in desired.dataplane_updates():
                dp.on_update(msg)
            ctx = learned_context(inputs)
            if ctx != self._learned_context:
                # Every learned route again (the RIB's current best routes include the
                # changes just taken).
                self._learned_context = ctx
                dp.on_update(LearnedContextUpdate(ctx, self.speaker.routes()))
                changes = {}
                learned_changed = True
            parts += self._tell_speaker(old, desired)
        if changes and self._learned_context is not None:
            dp.on_update(LearnedRouteChanges(changes))
        # Stale routes of ours go only once every source is complete.
        if (not self._routes_marked and self.state.in_sync and self.desired is not None
                and self._learned_complete(now)):
            dp.mark_in_sync()
            self._routes_marked = True
            parts.append("routes in sync")
        t0 = time.perf_counter()
        result = dp.apply(now)
        self.metrics.reconcile_seconds.labels("full" if result.resynced else "incremental") \
            .observe(time.perf_counter() - t0)
        if result.failed:
            self.metrics.reconcile_errors.inc(len(result.failed))
        if should_trim(result.added + result.replaced + result.deleted):
            release_free_heap()  # the burst's freed buffers back to the kernel (RSS)
        if dp.policy_error:
            # Routes went in; policy did not (retried every cycle): say so in status.
            self.last_error = f"network policy: {dp.policy_error}"
        if result.added or result.deleted or result.replaced or result.failed:
            parts.append("routes " + " ".join(f"{k}={v}" for k, v in result.summary().items()
                                               if v))
        statuses = self.speaker.status()
        self._update_health_and_metrics(now, result, statuses)
        self._publish(now, statuses, learned_changed)
        return "; ".join(parts) or None

    def _tell_speaker(self, old: Desired | None, desired: Desired) -> list[str]:
        parts = []
        config = speaker_config(self.cfg, desired.mesh_peers)
        own = frozenset(desired.own_blocks)
        if old is None or own != frozenset(old.own_blocks) or old.all_pools != desired.all_pools:
            self.speaker.set_policy(import_policy(self.cfg, desired.all_pools, own, config))
        if old is None or old.announce != desired.announce:
            # complete: this is a full calculation from an in-sync datastore, so
            # End-of-RIB may follow the announcements (never an empty one before).
            self.speaker.set_desired(desired.announce, complete=True)
            parts.append(f"announce {len(desired.announce)}")
        if config.peers != self._applied_peers:
            self.speaker.update_config(config)
            self._applied_peers = config.peers
            parts.append(f"peers {len(config.peers)}")
        return parts

    # ------------------------------------------------------------------ outputs
    def _update_health_and_metrics(self, now: float, result: ApplyResult, statuses) -> None:
        h = self.health
        h.loop_heartbeat = now
        h.datastore_in_sync = self.state.in_sync
        h.dataplane_applied = self.desired is not None and not result.failed
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
            for cls, count in self.dataplane.desired_snapshot().counts().items():
                m.kernel_routes.labels(cls).set(count)
            m.prefixes_announced.set(len(self.desired.announce))
            m.ipam_blocks.set(len(self.desired.own_blocks))
        own = [b for b in self.state.blocks.values() if b.affinity == self.cfg.node.name]
        m.ipam_addresses.set(sum(len(b.allocations) for b in own))
        policy_stats = self.dataplane.policy_stats()
        if policy_stats is not None:
            m.export_policy_stats(policy_stats)
        m.export_exabgp_starts(self.speaker.starts)
        m.export_peer_counters(self.speaker.peer_counters())
        ready, _ = h.ready()
        if ready and not self._ready_sent:
            self.notifier.ready(f"in sync; {len(statuses)} peers")
            self._ready_sent = True
            self.log.info("daemon_ready")
        self.notifier.watchdog(now)

    def _identity(self) -> NodeSnapshot:
        c = self.cfg
        return NodeSnapshot(node=c.node.name, as_number=c.node.as_number,
                            router_id=str(c.router_id), address=str(c.underlay.address),
                            mesh=c.bgp.mesh, route_protocol=c.dataplane.route_protocol)

    def _publish(self, now: float, statuses, learned_changed: bool) -> None:
        prev = self.snapshot
        if learned_changed or prev.cycle == 0:
            # Copies of the 100k-route maps only when they changed.
            learned = MappingProxyType(self.speaker.routes())
            pending = tuple(self.dataplane.learned_pending())
        else:
            learned, pending = prev.learned, prev.pending
        ready, readiness = self.health.ready()
        desired = self.desired
        self.snapshot = NodeSnapshot(
            node=self.cfg.node.name, as_number=self.cfg.node.as_number,
            router_id=str(self.cfg.router_id), address=str(self.cfg.underlay.address),
            mesh=self.cfg.bgp.mesh, route_protocol=self.cfg.dataplane.route_protocol,
            cycle=self._runs, taken_at=now,
            peers=tuple(statuses),
            peer_descriptions=MappingProxyType({p.address: p.description
                                                for p in self._applied_peers}),
            counters=MappingProxyType(dict(self.speaker.counters())),
            desired_routes=self.dataplane.desired_snapshot(),
            learned=learned, pending=pending,
            announce=desired.announce if desired else frozenset(),
            own_blocks=desired.own_blocks if desired else (),
            pools=tuple(PoolRow(c, p.ipip_mode, p.vxlan_mode, p.nat_outgoing, p.disabled)
                        for c, p in sorted(self.state.pools.items())),
            vtep=self.tunnels.vtep,
            workloads=len(self.workloads.records),
            datastore_in_sync=self.state.in_sync, routes_swept=self._routes_marked,
            ready=ready, readiness=MappingProxyType(dict(readiness)),
            exabgp_pid=self.speaker.exabgp_pid, exabgp_starts=self.speaker.starts,
            last_error=self.last_error)
