"""The speaker's pure state machine: ExaBGP events in, RIB changes and ExaBGP commands out.

``SpeakerCore`` owns the RIB, the import policy, peer records, counters and the desired set
of announcements. It does no I/O and never reads the clock: every input carries ``now``.
The I/O side (``bgpd/bgp/speaker.py``) feeds it parsed events and sends the commands it queues.

Rules it implements:
- Peer up -> announce the whole desired set to that peer, then End-of-RIB (``manual-eor``:
  ExaBGP must not send an empty EoR before our routes after a restart, exabgp #328) --
  but only once the node said the desired set is complete (``set_desired(...,
  complete=True)`` / ``mark_announcements_complete()``, after its first full sync; issue
  18): an EoR sent while etcd stalls at start would tell a ToR our (empty) set is all we
  have, and it would drop our blocks. Peers that came up before get their EoR then.
- Peer down -> its routes go now, or -- if the peer advertised graceful restart for
  ipv4/unicast in its OPEN and the session was lost (TCP loss, hold timer expiry, ExaBGP
  restart) -- are kept as stale until its End-of-RIB after it comes back or until its
  restart time runs out (``tick(now)``). A session ended by any other NOTIFICATION (sent
  or received, e.g. the peer's Cease "administrative shutdown") ends graceful restart:
  we never advertise RFC 8538's N bit, so RFC 4724's rule holds and routes go at once
  (issue 18). ExaBGP sends no withdraws on session loss.
- ExaBGP (re)started -> ``session_reset(now)``: every peer is treated as down (same GR rule).
- Updates -> import policy per path and prefix; rejected routes are kept aside with their
  reason (so a policy change -- e.g. we claim or release a block -- re-evaluates them) and
  counted by reason, globally and per peer.
- Max-prefix: a peer whose accepted count would exceed its limit has all its routes dropped
  (counted as ``max-prefix``) and is torn down when the config says so. Its routes stay
  rejected until a session comes up after ``max_prefix_hold_down`` seconds (ExaBGP
  reconnects right after a teardown: clearing the flag on the next "up" would flap).
- Teardowns (max-prefix: Cease 1; a peer removed from the config: Cease 3, RFC 4486) leave
  as ``Teardown`` values (``take_teardowns()``), not plain commands: the shell must get our
  withdraws out before the teardown (see ``Teardown``).
- Counters: ``peer_counters()`` -- received prefixes and rejections by reason per peer,
  monotonic for the life of the core (they outlive flaps and the peer's removal).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import structlog

from bgpd.bgp import exabgp_commands as cmds
from bgpd.bgp.events import (
    Ack,
    Answer,
    Attributes,
    EndOfRib,
    Event,
    Malformed,
    Negotiated,
    Notification,
    PeerOpen,
    PeerState,
    RelayHello,
    RouteUpdate,
    notification_in_reason,
)
from bgpd.bgp.exabgp_config import SpeakerConfig
from bgpd.bgp.import_policy import ImportPolicy
from bgpd.bgp.peers import PeerCounters, PeerCounts, PeerRecord, PeerStatus
from bgpd.bgp.rib import Rib, Route

log = structlog.get_logger("bgpd.bgp.core")

# A configured peer idle this long with no error reported gets an explanation in its status.
NO_ANSWER_AFTER = 15.0

# NOTIFICATION error code "Hold Timer Expired" (RFC 4271 4.5) and the Cease subcode
# "Connection Collision Resolution" (RFC 4486).
HOLD_TIMER_EXPIRED = 4
CEASE, CEASE_COLLISION = 6, 7


def ends_graceful_restart(notification: tuple[int, int] | None) -> bool:
    """Whether an established session that ended with ``notification`` ((code, subcode);
    None: none, i.e. TCP loss) ends graceful restart for the peer's routes.

    RFC 4724 keeps routes stale only when the session is lost; a NOTIFICATION ends the
    session deliberately, unless both sides negotiated RFC 8538's N bit (we never
    advertise it: ExaBGP 5.0.15 has no support). Hold timer expiry (either side's) is kept
    with TCP loss: ExaBGP reports its own expiry as "notification sent (4,0)", but it is
    the liveness failure graceful restart exists for (and what RFC 8538 keeps too). A
    collision Cease closes one of two connections, not the session.
    """
    if notification is None:
        return False
    code, subcode = notification
    return code != HOLD_TIMER_EXPIRED and (code, subcode) != (CEASE, CEASE_COLLISION)


@dataclass(frozen=True)
class Teardown:
    """End the session with ``peer`` with a Cease of ``subcode`` (RFC 4486), once the
    ``withdraw`` command lines are sent to it (acknowledged and out on the wire).

    ExaBGP 5.0.15 closes silently -- no NOTIFICATION -- when our OPEN announced graceful
    restart (reactor/peer.py ``_main``), so the peer would keep our routes stale for its
    restart time as if we restarted. For those peers ``withdraw`` withdraws every route
    we announce to it first; without graceful restart ExaBGP sends the Cease and the
    peer drops our routes itself (``withdraw`` is empty).
    """

    peer: str
    subcode: int
    withdraw: tuple[str, ...] = ()


class SpeakerCore:
    def __init__(self, config: SpeakerConfig, policy: ImportPolicy,
                 max_prefix_hold_down: float | None = None) -> None:
        self.config = config
        self._hold_down_override = max_prefix_hold_down
        self.policy = policy
        self.rib = Rib()
        # Per-peer counters by address, kept when the peer is removed (monotonic).
        self._peer_counters: dict[str, PeerCounters] = {}
        self.peers: dict[str, PeerRecord] = {p.address: self._new_record(p.address, p.asn)
                                             for p in config.peers}
        self.desired: set[str] = set()
        # The node said ``desired`` is its full set (first full sync done): EoR may go.
        self.announcements_complete = False
        self.counters: dict[str, int] = {}
        self._commands: list[str] = []
        self._teardowns: list[Teardown] = []
        self.log = log.bind(local_as=config.local_as, router_id=config.router_id)

    @property
    def max_prefix_hold_down(self) -> float:
        """From the config (a reload changes it) unless the constructor overrode it."""
        if self._hold_down_override is not None:
            return self._hold_down_override
        return self.config.max_prefix_hold_down

    def _new_record(self, address: str, asn: int) -> PeerRecord:
        return PeerRecord(address, asn,
                          counters=self._peer_counters.setdefault(address, PeerCounters()))

    # -- counters -----------------------------------------------------------
    def peer_counters(self) -> dict[str, PeerCounts]:
        """Per peer address: prefixes received and rejected by reason since the core was
        made. Monotonic: never reset by a flap, an ExaBGP restart or a config change (a
        removed peer keeps its last values), so they can be exported as counters."""
        return {addr: PeerCounts(c.received, dict(c.rejected))
                for addr, c in sorted(self._peer_counters.items())}

    def _inc(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def _reject(self, rec: PeerRecord, reason: str, n: int = 1) -> None:
        rec.count(reason, n)
        self._inc(f"rejected.{reason}", n)

    # -- outputs ---------------------------------------------------------------
    def has_commands(self) -> bool:
        return bool(self._commands) or bool(self._teardowns)

    def take_commands(self) -> list[str]:
        out, self._commands = self._commands, []
        return out

    def take_teardowns(self) -> list[Teardown]:
        out, self._teardowns = self._teardowns, []
        return out

    def take_route_changes(self) -> dict[str, Route | None]:
        return self.rib.take_changes()

    def routes(self) -> Mapping[str, Route]:
        return self.rib.routes()

    def status(self, now: float) -> list[PeerStatus]:
        out = []
        for addr in sorted(self.peers):
            r = self.peers[addr]
            accepted = self.rib.count(addr)
            established = r.state in ("established", "max-prefix")
            out.append(PeerStatus(
                address=addr, asn=r.asn, state=r.state, since=r.since,
                uptime=(now - r.established_at) if r.established_at is not None else None,
                received=accepted + len(r.rejected_now), accepted=accepted,
                announced=len(self._for_peer(self.desired, addr)) if established else 0,
                stale=self.rib.stale_count(addr), rejected=dict(r.counters.rejected),
                last_error=self._last_error(r, now), graceful_restart=r.gr_time,
                last_notification=r.last_notification, received_total=r.counters.received,
                eor_received=r.eor_received and established))
        return out

    def _last_error(self, rec: PeerRecord, now: float) -> str:
        """The held-down max-prefix reason and the NOTIFICATION that ended the session
        stay visible until a session is up again: ExaBGP's refused reconnects that follow
        ("closing connection") are appended, never replace them (issue 18)."""
        parts = []
        if rec.max_prefix_hit and rec.max_prefix_error:
            parts.append(rec.max_prefix_error)
        if rec.last_notification:
            parts.append(f"notification {rec.last_notification}")
        later = rec.last_error
        if not parts:
            return later or self._silence(rec, now)
        if later and not any(later in p for p in parts) and not (
                rec.last_notification and notification_in_reason(later) is not None):
            parts.append(f"then: {later}")
        return "; ".join(parts)

    def _silence(self, rec: PeerRecord, now: float) -> str:
        """Why a peer that never came up shows no error: ExaBGP reports nothing for a TCP
        connect that is never answered -- which is also what a wrong TCP MD5 password
        looks like from the dialing side (the peer's kernel drops our SYNs silently)."""
        if rec.state != "idle" or rec.watched_since is None:
            return ""
        waited = now - rec.watched_since
        if waited < NO_ANSWER_AFTER:
            return ""
        pc = self.config.peer(rec.address)
        if pc is not None and pc.passive:
            return (f"no session after {waited:.0f}s: waiting for the peer to connect (we are "
                    f"passive); check its config, reachability and TCP MD5 password")
        return (f"no session after {waited:.0f}s: connection attempts unanswered (peer down or "
                f"unreachable, or a TCP MD5 password mismatch)")

    # -- inputs: configuration -------------------------------------------------
    def set_config(self, config: SpeakerConfig, now: float) -> None:
        """New peer set (after ExaBGP reload). Removed peers' routes go at once."""
        new = {p.address for p in config.peers}
        for addr in list(self.peers):
            if addr not in new:
                self.rib.drop_peer(addr)
                del self.peers[addr]
                self.log.info("peer_removed", peer=addr)
        for p in config.peers:
            if p.address not in self.peers:
                self.peers[p.address] = self._new_record(p.address, p.asn)
                self.log.info("peer_added", peer=p.address, asn=p.asn)
            else:
                self.peers[p.address].asn = p.asn
        self.config = config
        self.set_policy(self.policy, now)

    def set_policy(self, policy: ImportPolicy, now: float) -> None:
        """Re-evaluate every held route (accepted and rejected) against ``policy``."""
        self.policy = policy
        for addr, rec in self.peers.items():
            if rec.max_prefix_hit:
                continue
            # accepted routes that are now rejected
            for prefix in list(self.rib.prefixes_of(addr)):
                path = self.rib.path(prefix, addr)
                if path is None:
                    continue
                nh, attrs = path
                reason = policy.check(addr, prefix, nh, attrs.as_path)
                if reason:
                    self.rib.remove(addr, [prefix])
                    rec.rejected_now[prefix] = (nh, attrs, reason)
                    self._reject(rec, reason)
            # rejected routes that are now accepted
            for prefix, (nh, attrs, _) in list(rec.rejected_now.items()):
                if policy.check(addr, prefix, nh, attrs.as_path) is None:
                    del rec.rejected_now[prefix]
                    self.rib.add(addr, [prefix], nh, attrs)
            self._enforce_max_prefix(rec, now)

    def deconfigure(self, config: SpeakerConfig) -> list[Teardown]:
        """Peers of the current config missing from ``config`` that have a session: a
        Cease "Peer De-configured" (RFC 4486 subcode 3) for each, to carry out before
        ``set_config(config)`` and ExaBGP's reload -- whose removal of a neighbour closes
        TCP without any NOTIFICATION (reactor/peer.py ``remove``), which a peer takes for
        our restart and keeps our routes. The peer announces nothing on a reconnect from
        now on."""
        keep = {p.address for p in config.peers}
        out = []
        for addr, rec in self.peers.items():
            if addr in keep:
                continue
            rec.deconfigured = True
            if rec.state in ("established", "max-prefix"):
                out.append(self._teardown(rec, cmds.CEASE_PEER_DECONFIGURED,
                                          "removed from the config"))
        return out

    def _teardown(self, rec: PeerRecord, subcode: int, why: str) -> Teardown:
        rec.teardown_reason = why
        pc = self.config.peer(rec.address)
        silent = pc is not None and pc.graceful_restart is not None
        mine = self._for_peer(self.desired, rec.address)
        withdraw = (tuple(cmds.withdraw(mine, neighbor=rec.address,
                                        next_hop6=self.config.local_address6))
                    if silent and mine else ())
        self._inc(f"teardowns.cease{subcode}")
        return Teardown(rec.address, subcode, withdraw)

    def mark_announcements_complete(self) -> None:
        """The desired set is the node's full set (its first full sync is done): End-of-RIB
        goes to every established peer that has not had one, and on every "up" after."""
        if self.announcements_complete:
            return
        self.announcements_complete = True
        for addr, rec in sorted(self.peers.items()):
            if rec.state in ("established", "max-prefix") and not rec.eor_sent \
                    and not rec.deconfigured:
                self._commands += self._eors(addr)
                rec.eor_sent = True
        self.log.info("announcements_complete", desired=len(self.desired))

    def set_desired(self, prefixes: Iterable[str], complete: bool = False) -> None:
        """The full set we announce (owned blocks, borrowed /32s): diffs become commands.

        ``complete``: the set comes from a full sync (see ``mark_announcements_complete``).
        """
        new = {cmds.prefix(p) for p in prefixes}
        add, gone = new - self.desired, self.desired - new
        self.desired = new
        # Only families some peer carries: ExaBGP answers "error" to a line none of its
        # neighbours can take; a peer that comes up later gets the whole set then.
        carried = self._carried()
        add = {p for p in add if self._family(p) in carried}
        gone = {p for p in gone if self._family(p) in carried}
        nh6 = self.config.local_address6
        if add:
            self._commands += cmds.announce(add, next_hop6=nh6)
        if gone:
            self._commands += cmds.withdraw(gone, next_hop6=nh6)
        if add or gone:
            self.log.info("desired_changed", announce=len(add), withdraw=len(gone),
                          total=len(new))
        if complete:
            self.mark_announcements_complete()

    # -- inputs: ExaBGP --------------------------------------------------------
    def session_reset(self, now: float) -> None:
        """ExaBGP (re)started: no session survives; routes held per graceful restart."""
        for rec in self.peers.values():
            if rec.state in ("established", "max-prefix", "connected"):
                self._peer_down(rec, now, "exabgp restarted")

    def apply(self, event: Event, now: float) -> None:
        if isinstance(event, RouteUpdate):
            self._update(event, now)
        elif isinstance(event, EndOfRib):
            rec = self.peers.get(event.peer)
            version = {"ipv4 unicast": 4, "ipv6 unicast": 6}.get(event.family)
            if rec is not None and version is not None:
                # Per family (RFC 4724 4.2): an IPv4 EoR ends only the IPv4 stale routes.
                rec.eor_families.add(event.family)
                families = self._peer_families(event.peer)
                done = rec.eor_families >= set(families)
                swept = self.rib.sweep_stale(event.peer, None if done else version)
                if done:
                    rec.gr_deadline = None
                    rec.eor_received = True
                self.log.info("end_of_rib", peer=event.peer, family=event.family,
                              stale_removed=swept, routes=self.rib.count(event.peer))
        elif isinstance(event, PeerState):
            self._state(event, now)
        elif isinstance(event, PeerOpen):
            rec = self.peers.get(event.peer)
            if rec is not None:
                rec.gr_time = event.graceful_restart
                if event.asn != rec.asn:
                    rec.last_error = f"OPEN from AS{event.asn}, configured AS{rec.asn}"
        elif isinstance(event, Notification):
            rec = self.peers.get(event.peer) if event.peer else None
            if rec is not None:
                # ExaBGP reports the NOTIFICATION it received before the "down" it causes.
                rec.last_notification = f"received {event.text}"
                m = re.match(r"(\d+)/(\d+)", event.text)
                rec.notification_code = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
            self._inc("notifications")
        elif isinstance(event, Malformed):
            self._inc("malformed_lines")
            self.log.warning("malformed_line", error=event.error, line=event.line[:200])
        elif isinstance(event, Ack):
            self._inc("acks.done" if event.ok else "acks.error")
        elif isinstance(event, (Answer, RelayHello, Negotiated)):
            pass

    def tick(self, now: float) -> None:
        """Expire graceful-restart holds whose restart time ran out."""
        for rec in self.peers.values():
            if rec.watched_since is None:
                rec.watched_since = now
            if rec.gr_deadline is not None and now >= rec.gr_deadline:
                swept = self.rib.sweep_stale(rec.address)
                rec.gr_deadline = None
                self.log.info("graceful_restart_expired", peer=rec.address, stale_removed=swept)

    # -- internals ------------------------------------------------------------
    def _state(self, ev: PeerState, now: float) -> None:
        rec = self.peers.get(ev.peer)
        if rec is None:
            self._inc("events.unknown_peer")
            return
        if ev.state == "up":
            rec.set_state("established", now)
            rec.last_notification = ""
            rec.notification_code = None
            rec.teardown_reason = ""
            if rec.max_prefix_hit and now - (rec.max_prefix_at or 0.0) >= self.max_prefix_hold_down:
                rec.max_prefix_hit = False
            if rec.max_prefix_hit:
                # Still held down: keep rejecting its routes without another teardown, or a
                # peer over the limit would flap (ExaBGP reconnects after a teardown).
                rec.set_state("max-prefix", now)
            self._inc(f"peer_up.{ev.peer}")
            self.log.info("peer_up", peer=ev.peer, asn=rec.asn, graceful_restart=rec.gr_time)
            if rec.deconfigured:
                return  # its teardown and ExaBGP's reload are under way
            mine = self._for_peer(self.desired, ev.peer)
            if mine:
                self._commands += cmds.announce(mine, neighbor=ev.peer,
                                                next_hop6=self.config.local_address6)
            rec.eor_sent = self.announcements_complete
            if rec.eor_sent:
                self._commands += self._eors(ev.peer)
        elif ev.state == "down":
            self._peer_down(rec, now, ev.reason)
        elif ev.state == "connected":
            if rec.state != "established":
                rec.set_state("connected", now)

    def _peer_down(self, rec: PeerRecord, now: float, reason: str) -> None:
        was = rec.state
        rec.set_state("down", now)
        rec.last_error = reason or rec.last_error
        rec.rejected_now.clear()
        rec.eor_sent = False
        rec.eor_received = False
        rec.eor_families.clear()
        notification = rec.notification_code
        rec.notification_code = None
        by_notification = notification_in_reason(reason)
        if by_notification is not None:
            direction, code, subcode = by_notification
            notification = (code, subcode)
            if direction == "sent" or not rec.last_notification:
                why = f" ({rec.teardown_reason})" if rec.teardown_reason else ""
                rec.last_notification = f"{direction} {code}/{subcode}{why}"
        held = self.rib.count(rec.address)
        # Only the end of an established session: a NOTIFICATION on a reconnect attempt
        # while the restart timer runs (the peer refusing while it restarts, a collision)
        # leaves the hold to its timer.
        if was == "established" and ends_graceful_restart(notification):
            swept = self.rib.drop_peer(rec.address)
            rec.gr_deadline = None
            self.log.info("peer_down", peer=rec.address, reason=reason, dropped=swept,
                          notification=rec.last_notification, graceful_restart="ended")
            return
        if was != "established" and rec.gr_deadline is not None:
            # Down again before it came back (e.g. connected, then failed): the restart timer
            # that is already running keeps running -- a flapping peer must not extend it.
            self.log.info("peer_down", peer=rec.address, reason=reason, held_stale=held,
                          until=rec.gr_deadline)
            return
        if rec.gr_time and held and was == "established":
            self.rib.mark_stale(rec.address)
            rec.gr_deadline = now + rec.gr_time
            self.log.info("peer_down", peer=rec.address, reason=reason, held_stale=held,
                          restart_time=rec.gr_time)
        else:
            self.rib.drop_peer(rec.address)
            rec.gr_deadline = None
            self.log.info("peer_down", peer=rec.address, reason=reason, dropped=held)

    # -- families (issue 15) ---------------------------------------------------
    @staticmethod
    def _family(prefix: str) -> str:
        return "ipv6 unicast" if ":" in prefix else "ipv4 unicast"

    def _peer_families(self, addr: str) -> tuple[str, ...]:
        pc = self.config.peer(addr)
        return pc.families if pc is not None else ("ipv4 unicast",)

    def _carried(self) -> set[str]:
        return {f for p in self.config.peers for f in p.families}

    def _for_peer(self, prefixes: Iterable[str], addr: str) -> set[str]:
        """The prefixes of the families the peer's session carries."""
        fams = self._peer_families(addr)
        return {p for p in prefixes if self._family(p) in fams}

    def _eors(self, addr: str) -> list[str]:
        return [cmds.eor(addr, f) for f in self._peer_families(addr)]

    def _update(self, ev: RouteUpdate, now: float) -> None:
        rec = self.peers.get(ev.peer)
        if rec is None:
            self._inc("events.unknown_peer")
            return
        peer = ev.peer
        rib = self.rib
        for _, prefixes in ev.announced:
            rec.counters.received += len(prefixes)
        if ev.withdrawn:
            rib.remove(peer, ev.withdrawn)
            if rec.rejected_now:
                for p in ev.withdrawn:
                    rec.rejected_now.pop(p, None)
        if rec.max_prefix_hit:
            n = sum(len(ps) for _, ps in ev.announced)
            if n:
                self._reject(rec, "max-prefix", n)
            return
        policy = self.policy
        for nh, prefixes in ev.announced:
            reason = policy.check_path(nh, ev.attributes.as_path)
            if reason:
                self._reject_many(rec, prefixes, nh, ev.attributes, reason)
                continue
            ok, bad = policy.split_prefixes(
                peer, prefixes, ev.host_values if len(ev.announced) == 1 else None)
            if bad:
                by_reason: dict[str, list[str]] = {}
                for p, r in bad:
                    by_reason.setdefault(r, []).append(p)
                for r, ps in by_reason.items():
                    self._reject_many(rec, ps, nh, ev.attributes, r)
            if ok:
                if rec.rejected_now:
                    for p in ok:
                        rec.rejected_now.pop(p, None)
                rib.add(peer, ok, nh, ev.attributes)
        self._enforce_max_prefix(rec, now)

    def _reject_many(self, rec: PeerRecord, prefixes: Iterable[str], nh: str,
                     attrs: Attributes, reason: str) -> None:
        prefixes = list(prefixes)
        # A route replaced by a rejected one is gone from the RIB (implicit withdraw).
        self.rib.remove(rec.address, prefixes)
        for p in prefixes:
            rec.rejected_now[p] = (nh, attrs, reason)
        self._reject(rec, reason, len(prefixes))
        self.log.debug("route_rejected", peer=rec.address, reason=reason, count=len(prefixes),
                       first=prefixes[0] if prefixes else None)

    def _enforce_max_prefix(self, rec: PeerRecord, now: float) -> None:
        pc = self.config.peer(rec.address)
        if pc is None or pc.max_prefix is None or rec.max_prefix_hit:
            return
        count = self.rib.count(rec.address)
        if count <= pc.max_prefix:
            return
        family = ""
        if len(pc.families) > 1:
            # The limit is per family (as BIRD's and FRR's per-AFI limits; issue 15): count
            # the IPv6 ones, only once the total is over (one family: no count needed).
            v6 = sum(1 for p in self.rib.prefixes_of(rec.address) if ":" in p)
            count, family = max((count - v6, "ipv4 unicast "), (v6, "ipv6 unicast "))
            if count <= pc.max_prefix:
                return
        was_up = rec.state in ("established", "max-prefix")
        dropped = self.rib.drop_peer(rec.address)
        rec.max_prefix_hit = True
        rec.max_prefix_at = now
        rec.rejected_now.clear()
        self._reject(rec, "max-prefix", dropped)
        self._inc("max_prefix_events")
        rec.max_prefix_error = (f"max-prefix {pc.max_prefix} exceeded ({count} {family}"
                                "accepted); routes dropped")
        rec.last_error = rec.max_prefix_error
        rec.set_state("max-prefix", now)
        self.log.warning("max_prefix_exceeded", peer=rec.address, limit=pc.max_prefix,
                         accepted=count, dropped=dropped, teardown=pc.max_prefix_teardown)
        if pc.max_prefix_teardown and was_up:
            self._teardowns.append(self._teardown(rec, cmds.CEASE_MAX_PREFIXES,
                                                  f"max-prefix {pc.max_prefix}"))
