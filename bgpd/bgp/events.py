"""The BGP speaker's event vocabulary: values only, no parsing, no I/O.

Events come from two decoders: ``bgpd.bgp.exabgp_lines`` (ExaBGP's API lines: state,
acks, answers, parsed JSON) and ``bgpd.bgp.wire`` (raw BGP message bodies, what we
configure ExaBGP to hand over). Both build these classes; neither is imported here, so
the vocabulary sits below both (no import cycle).

Prefixes are kept as strings exactly as the peer sent them (``198.19.1.0/26``; host
bits a peer set are not cleared): the RIB keys on them and avoids per-route objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

FAMILY = "ipv4 unicast"
FAMILIES = (FAMILY, "ipv6 unicast")  # what the speaker decodes (issue 15)
ORIGINS = {"igp": 0, "egp": 1, "incomplete": 2}


@dataclass(frozen=True, slots=True)
class PeerState:
    peer: str
    state: str  # "connected" | "up" | "down"
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PeerOpen:
    peer: str
    asn: int
    hold_time: int
    router_id: str
    graceful_restart: int | None  # the peer's restart time if it does GR for ipv4/ipv6 unicast


@dataclass(frozen=True, slots=True)
class Attributes:
    as_path: tuple[int, ...] = ()
    as_path_len: int = 0  # an AS_SET counts as one
    origin: int = 0
    med: int = 0
    local_pref: int = 100


@dataclass(frozen=True, slots=True)
class RouteUpdate:
    peer: str
    attributes: Attributes
    announced: tuple[tuple[str, tuple[str, ...]], ...]  # (next hop, prefixes)
    withdrawn: tuple[str, ...]
    # When every announced prefix is a /32 of one next hop (a ToR's host routes): their
    # addresses as ints, in order (bgpd.bgp.wire fills it from the wire). Lets the import
    # policy check a whole UPDATE at once; not part of the event's meaning (compare=False).
    host_values: tuple[int, ...] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class EndOfRib:
    peer: str
    family: str


@dataclass(frozen=True, slots=True)
class Notification:
    peer: str | None
    text: str


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What ExaBGP negotiated with a peer (``api { negotiated; }``), once per session."""

    peer: str
    asn4: bool
    hold_time: int
    families: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Ack:
    ok: bool


@dataclass(frozen=True, slots=True)
class Answer:
    text: str


@dataclass(frozen=True, slots=True)
class RelayHello:
    text: str


@dataclass(frozen=True, slots=True)
class Malformed:
    line: str
    error: str


Event = (PeerState | PeerOpen | RouteUpdate | EndOfRib | Notification | Negotiated | Ack
         | Answer | RelayHello | Malformed)


def notification_text(code: object, subcode: object, data_hex: object, message: object) -> str:
    """``"6/2 Shutdown Communication: \"bye\""``: ExaBGP's decoded data when it is printable
    UTF-8 text, else its hex (``"2/2 0xFDE9"``), nothing when there is no data."""
    text = (str(message) if isinstance(message, str) and message.isprintable()
            and "\ufffd" not in message else str(data_hex))
    return f"{code}/{subcode} {text}" if text and text != "0x" else f"{code}/{subcode}"


_DOWN_BY_NOTIFICATION = re.compile(r"notification (sent|received) \((\d+),(\d+)\)")


def notification_in_reason(reason: str) -> tuple[str, int, int] | None:
    """``("received", 6, 2)`` when ExaBGP's "down" reason says a NOTIFICATION ended the
    session (``"notification received (6,2)"``, ``"notification sent (4,0)"``; its
    reactor/peer.py ``_run``), else None (TCP loss: ``"closing connection"``, ...)."""
    m = _DOWN_BY_NOTIFICATION.search(reason or "")
    if m is None:
        return None
    return m.group(1), int(m.group(2)), int(m.group(3))
