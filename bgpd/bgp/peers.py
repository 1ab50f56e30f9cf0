"""Peer status as the CLI shows it (like ``calicoctl node status`` / ``birdc show protocols``).

``PeerStatus`` is the immutable snapshot handed out; ``PeerRecord`` is the core's mutable
bookkeeping behind it. Times are plain floats from the caller's clock (``now`` parameter).
"""

from __future__ import annotations

from dataclasses import dataclass, field

STATES = ("idle", "connected", "established", "down", "max-prefix")


@dataclass(frozen=True)
class PeerStatus:
    address: str
    asn: int
    state: str  # one of STATES
    since: float | None  # when the state was entered (caller's clock)
    uptime: float | None  # seconds established, None when not established
    received: int  # prefixes currently held from the peer (accepted + rejected)
    accepted: int  # in our RIB (stale included)
    announced: int  # prefixes we announce to it (desired set, when established)
    stale: int  # graceful-restart stale prefixes still held
    rejected: dict[str, int]  # counters since start, by reason
    last_error: str
    graceful_restart: int | None  # the peer's restart time (from its OPEN)
    # The NOTIFICATION that ended the last session ("received 6/2 Shutdown Communication:
    # \"bye\"", "sent 6/1 ..."), kept until a session is up again: the failed reconnects
    # that follow must not hide why the peer left (issue 18).
    last_notification: str = ""
    received_total: int = 0  # prefixes received in UPDATEs since start (monotonic)
    # Its End-of-RIB came in this session: everything it had is in our RIB (RFC 4724).
    eor_received: bool = False

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class PeerCounters:
    """Monotonic per-peer counters for the life of the speaker (issue 18, metrics).

    They survive session flaps, ExaBGP restarts and the peer's removal from and return to
    the config (the core keeps them by address), so an exporter can publish them as
    Prometheus counters: no value ever goes down.
    """

    received: int = 0  # prefixes in UPDATE NLRI from the peer, rejected ones included
    rejected: dict[str, int] = field(default_factory=dict)  # by import-policy reason


@dataclass(frozen=True)
class PeerCounts:
    """An immutable snapshot of one peer's ``PeerCounters``."""

    received: int
    rejected: dict[str, int]


@dataclass
class PeerRecord:
    address: str
    asn: int
    state: str = "idle"
    since: float | None = None
    established_at: float | None = None
    gr_time: int | None = None
    gr_deadline: float | None = None  # stale routes go at this time unless EoR came first
    max_prefix_hit: bool = False
    max_prefix_at: float | None = None
    last_error: str = ""
    watched_since: float | None = None  # first tick after the peer was configured
    rejected_now: dict[str, tuple] = field(default_factory=dict)  # prefix -> (nh, attrs, reason)
    counters: PeerCounters = field(default_factory=PeerCounters)
    # Set by a NOTIFICATION (received event or "notification sent" down reason), cleared
    # when a session is up again; see PeerStatus.last_notification.
    last_notification: str = ""
    notification_code: tuple[int, int] | None = None  # (code, subcode) received this session
    eor_sent: bool = False  # End-of-RIB sent to it in the current session
    eor_received: bool = False  # its End-of-RIB came for every family of the session
    eor_families: set[str] = field(default_factory=set)  # families whose EoR came (this session)
    max_prefix_error: str = ""  # why its routes are held down (kept across reconnects)
    teardown_reason: str = ""  # why we asked ExaBGP to tear the session down
    deconfigured: bool = False  # being removed from the config: announce nothing on "up"

    def set_state(self, state: str, now: float) -> None:
        if state != self.state:
            self.state = state
            self.since = now
        if state == "established":
            self.established_at = now
        elif state != "max-prefix":
            self.established_at = None

    def count(self, reason: str, n: int = 1) -> None:
        rejected = self.counters.rejected
        rejected[reason] = rejected.get(reason, 0) + n
