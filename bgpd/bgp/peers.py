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

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


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
    rejected_count: dict[str, int] = field(default_factory=dict)

    def set_state(self, state: str, now: float) -> None:
        if state != self.state:
            self.state = state
            self.since = now
        if state == "established":
            self.established_at = now
        elif state != "max-prefix":
            self.established_at = None

    def count(self, reason: str, n: int = 1) -> None:
        self.rejected_count[reason] = self.rejected_count.get(reason, 0) + n
