"""ExaBGP 5.0.15 API command lines (pure). Every spliced string is validated.

ExaBGP reads one command per line, so a newline (or any control character) inside a value
would become a second command. Prefixes and addresses are re-rendered through ``ipaddress``
(which also canonicalises them); nothing else is spliced.

Batching: ``announce attributes next-hop self nlri P1 P2 ...`` carries many prefixes per
line (~2.5k prefixes/s measured vs ~1.1k/s for one ``announce route`` per prefix).

IPv6 (issue 15): IPv6 prefixes go in lines of their own with an explicit next hop, the
node's global IPv6 address: ExaBGP 5.0.15's ``next-hop self`` fails when the session's
family differs from the route's (an IPv6 prefix over an IPv4 session), and a line mixing
families would be one ``Change`` per prefix with one next hop for all. ExaBGP hands each
route only to the neighbours configured with its family (configuration.py
``inject_change``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator

from bgpd.bgp.errors import BgpError

BATCH = 500  # prefixes per line: well below ExaBGP's message packing limits

# Cease NOTIFICATION subcodes (RFC 4486) we send with ``teardown``.
CEASE_MAX_PREFIXES = 1
CEASE_ADMIN_SHUTDOWN = 2
CEASE_PEER_DECONFIGURED = 3


class CommandError(BgpError, ValueError):
    """A value cannot be spliced into an ExaBGP command safely."""


FAMILIES = {4: "ipv4 unicast", 6: "ipv6 unicast"}


def prefix(text: str) -> str:
    """An IPv4 or IPv6 prefix, canonical (IPv6 compressed per RFC 5952, as ExaBGP prints)."""
    if not isinstance(text, str) or not text.isprintable():
        raise CommandError(f"prefix {text!r} contains control characters")
    try:
        return str(ipaddress.ip_network(text, strict=True))
    except ValueError as exc:
        raise CommandError(f"{text!r} is not an IPv4 or IPv6 prefix: {exc}") from None


def address(text: str) -> str:
    if not isinstance(text, str) or not text.isprintable():
        raise CommandError(f"address {text!r} contains control characters")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError as exc:
        raise CommandError(f"{text!r} is not an IPv4 or IPv6 address: {exc}") from None


def _next_hop6(text: str | None, prefixes: list[str]) -> str:
    if text is None:
        raise CommandError(f"IPv6 prefixes ({prefixes[0]}, ...) need our global IPv6 next "
                           f"hop, and none is configured (local_address6)")
    nh = ipaddress.IPv6Address(address(text))
    if nh.is_link_local or nh.is_multicast or nh.is_loopback or nh.is_unspecified:
        raise CommandError(f"next hop {text}: not a global unicast IPv6 address")
    return str(nh)


def _selector(neighbor: str | None) -> str:
    return f"neighbor {address(neighbor)} " if neighbor else ""


def _batches(prefixes: Iterable[str], size: int) -> Iterator[list[str]]:
    """Sorted batches, IPv4 first; a batch never mixes families."""
    batch: list[str] = []
    for p in sorted({prefix(p) for p in prefixes}, key=_sort_key):
        if batch and (":" in batch[0]) != (":" in p):
            yield batch
            batch = []
        batch.append(p)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _sort_key(p: str) -> tuple[int, int, int]:
    net = ipaddress.ip_network(p)
    return net.version, int(net.network_address), net.prefixlen


def _lines(verb: str, prefixes: Iterable[str], neighbor: str | None, size: int,
           next_hop6: str | None) -> list[str]:
    sel = _selector(neighbor)
    out = []
    for b in _batches(prefixes, size):
        nh = _next_hop6(next_hop6, b) if ":" in b[0] else "self"
        out.append(f"{sel}{verb} attributes next-hop {nh} nlri {' '.join(b)}")
    return out


def announce(prefixes: Iterable[str], neighbor: str | None = None, size: int = BATCH,
             next_hop6: str | None = None) -> list[str]:
    """Announce to one neighbour or (None) all: IPv4 prefixes with next-hop self, IPv6
    prefixes with ``next_hop6`` (our global IPv6 address; required when there are any)."""
    return _lines("announce", prefixes, neighbor, size, next_hop6)


def withdraw(prefixes: Iterable[str], neighbor: str | None = None, size: int = BATCH,
             next_hop6: str | None = None) -> list[str]:
    return _lines("withdraw", prefixes, neighbor, size, next_hop6)


def eor(neighbor: str, family: str = FAMILIES[4]) -> str:
    if family not in FAMILIES.values():
        raise CommandError(f"End-of-RIB family {family!r}: expected one of "
                           f"{', '.join(FAMILIES.values())}")
    return f"neighbor {address(neighbor)} announce eor {family}"


def teardown(neighbor: str, subcode: int) -> str:
    """Cease with ``subcode`` (RFC 4486: 1 max prefixes, 2 admin shutdown, 3 de-configured).

    Note: ExaBGP 5.0.15 closes silently (no NOTIFICATION) when our OPEN announced graceful
    restart (reactor/peer.py ``_main``: ``neighbor['capability']['graceful-restart']`` and
    the sent OPEN's capability; what the peer announced does not matter); the session
    still goes down. The core withdraws our routes from such a peer first (``Teardown``).
    """
    if not 1 <= int(subcode) <= 10:
        raise CommandError(f"Cease subcode {subcode!r} out of range 1..10")
    return f"neighbor {address(neighbor)} teardown {int(subcode)}"


def route_refresh(neighbor: str) -> str:
    return f"neighbor {address(neighbor)} announce route-refresh ipv4 unicast"


def updates_sent(answer_lines: list[str], neighbor: str) -> int | None:
    """UPDATE messages ExaBGP has sent to ``neighbor`` in its current session, from the
    answer to ``SHOW_NEIGHBORS_JSON`` (one JSON list; ``messages.sent.update`` per peer,
    exabgp/bgp/neighbor.py ``as_dict``). None when absent or unreadable."""
    import json

    want = address(neighbor)
    for line in answer_lines:
        try:
            peers = json.loads(line)
        except ValueError:
            continue
        if not isinstance(peers, list):
            continue
        for p in peers:
            try:
                if p["peer"]["address"] == want:
                    return int(p["messages"]["sent"]["update"])
            except (KeyError, TypeError, ValueError):
                continue
    return None


RELOAD = "reload"
SHOW_NEIGHBORS_JSON = "show neighbor json"
SUMMARY = "show neighbor summary"
