"""ExaBGP 5.0.15's API output lines -> events (``bgpd.bgp.events``); pure, no I/O.

The members read here are pinned by ``tests/bgp/test_events_contract.py`` against lines
captured from a real ExaBGP 5.0.15 talking to BIRD 2 and FRR
(``tests/bgp/samples/exabgp-5.0.15.jsonl``), and the packet form against the parsed form
of the same messages by ``tests/bgp/test_wire_contract.py``
(``tests/bgp/samples/exabgp-5.0.15-pairs.jsonl``). Anything else in the JSON is ignored.

Members read:
- every JSON line: ``type``, ``neighbor.address.peer``
- ``type == "state"``: ``neighbor.state`` (connected/up/down), ``neighbor.reason``
- ``type == "negotiated"``: ``neighbor.negotiated.{asn4,hold_time,families}``
- packet form (``receive { packets; }``, what we configure; ``type`` open/update/
  notification): ``neighbor.direction`` (must be "receive"),
  ``neighbor.message.{category,body}`` (body: hex of the BGP message after its 19-byte
  header, decoded by ``bgpd.bgp.wire``) and ``neighbor.negotiated.{asn4,families,
  add_path.receive,nexthop}`` (``api { negotiated; }``: 2- or 4-byte AS_PATH)
- parsed form (``receive { parsed; }``: older captures, tests):
  - ``type == "open"``: ``neighbor.direction``, ``neighbor.open.{asn,hold_time,router_id}``,
    ``neighbor.open.capabilities["65"].asn4`` (the 4-byte AS; ``asn`` is AS_TRANS then),
    ``neighbor.open.capabilities["64"].{time,address-family-flags}`` (graceful restart)
  - ``type == "update"``: ``neighbor.message.eor.{afi,safi}`` (End-of-RIB) or
    ``neighbor.message.update.{attribute,announce,withdraw}`` with
    ``attribute.{as-path,origin,med,local-preference}``,
    ``announce["ipv4 unicast"][nexthop] = [{"nlri": prefix}, ...]``,
    ``withdraw["ipv4 unicast"] = [{"nlri": prefix}, ...]``
  - ``type == "notification"`` from a peer: ``neighbor.notification.{code,subcode,data,
    message}``
- ``type == "notification"`` without a neighbor: ``notification`` (e.g. "shutdown")
Text lines: ``done`` / ``error`` (acks, ``exabgp.api.ack=true``); any other text is a
command's answer. ``#relay ...`` is our relay's hello.

Review notes: parsing never raises; a line that does not fit becomes ``Malformed``
(the caller logs and counts it). Prefixes are kept as strings exactly as ExaBGP prints them
(e.g. ``198.19.1.0/26``; host bits a peer set are not cleared): the RIB keys on them and
avoids per-route objects.
"""

from __future__ import annotations

import json

from bgpd.bgp import wire as bgp_wire
from bgpd.bgp.events import (
    FAMILIES,
    ORIGINS,
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
    notification_text,
)


def parse_line(raw: bytes | str) -> Event:
    """One line from ExaBGP (via the relay) -> one event. Never raises."""
    try:
        line = raw.decode() if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        return Malformed(repr(raw[:200]), f"not utf-8: {exc}")
    line = line.strip()
    if line == "done":
        return Ack(True)
    if line == "error":
        return Ack(False)
    if not line.startswith("{"):
        if line.startswith("#relay"):
            return RelayHello(line)
        return Answer(line)
    try:
        msg = json.loads(line)
        return _from_json(msg)
    # RecursionError: deeply nested JSON ('[' * 100000) blows the decoder's stack;
    # OverflowError: int() of a float such as 1e400 (inf). Both used to escape and end
    # the speaker's reader thread (tests/badinput/test_exabgp_pipe.py).
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError,
            OverflowError) as exc:
        return Malformed(line[:300], f"{type(exc).__name__}: {exc}")


def _nlris(items: list) -> tuple[str, ...]:
    if not isinstance(items, list):  # a string would be iterated into one-letter "prefixes"
        raise TypeError(f"NLRI list is a {type(items).__name__}")
    out = tuple(item["nlri"] if isinstance(item, dict) else item for item in items)
    for p in out:  # a dict/number NLRI would reach the import policy and raise there
        if not isinstance(p, str):
            raise TypeError(f"NLRI {p!r} is not a string")
    return out


def _attributes(attr: dict) -> Attributes:
    path: list[int] = []
    length = 0
    for seg in (attr.get("as-path") or {}).values():
        values = [int(v) for v in seg.get("value", [])]
        path += values
        length += 1 if seg.get("element") in ("as-set", "confed-set") else len(values)
    return Attributes(
        as_path=tuple(path),
        as_path_len=length,
        origin=ORIGINS.get(attr.get("origin", "igp"), 2),
        med=int(attr.get("med", 0)),
        local_pref=int(attr.get("local-preference", 100)),
    )


def _from_json(msg: dict) -> Event:
    kind = msg["type"]
    if kind == "notification" and "neighbor" not in msg:
        return Notification(None, str(msg.get("notification", "")))
    nb = msg["neighbor"]
    peer = nb["address"]["peer"]
    if not isinstance(peer, str):
        raise TypeError("neighbor.address.peer is not a string")
    if kind == "state":
        return PeerState(peer, str(nb["state"]), str(nb.get("reason", "")))
    m = nb.get("message")
    if isinstance(m, dict) and "body" in m and "category" in m:
        return _from_packet(peer, nb, m)
    if kind == "negotiated":
        n = nb["negotiated"]
        return Negotiated(peer, bool(n["asn4"]), int(n["hold_time"]),
                          tuple(str(f) for f in n.get("families") or ()))
    if kind == "open":
        o = nb["open"]
        gr = None
        caps = o.get("capabilities", {})
        cap = caps.get("64")
        flags = cap.get("address-family-flags", {}) if cap else {}
        if "ipv4/unicast" in flags or "ipv6/unicast" in flags:
            gr = int(cap.get("time", 0))
        asn4 = (caps.get("65") or {}).get("asn4")
        return PeerOpen(peer, int(o["asn"] if asn4 is None else asn4), int(o["hold_time"]),
                        str(o["router_id"]), gr)
    if kind == "update":
        m = nb["message"]
        if "eor" in m:
            eor = m["eor"]
            return EndOfRib(peer, f"{eor['afi']} {eor['safi']}")
        upd = m["update"]
        announced = []
        withdrawn = []
        for family in FAMILIES:
            groups = [(nh, _nlris(items))
                      for nh, items in (upd.get("announce", {}).get(family) or {}).items()]
            announced += bgp_wire.global_nexthops(groups)
            withdrawn += _nlris(upd.get("withdraw", {}).get(family) or [])
        announced, withdrawn = tuple(announced), tuple(withdrawn)
        return RouteUpdate(peer, _attributes(upd.get("attribute", {})), announced, withdrawn)
    if kind == "notification":
        n = nb["notification"]
        return Notification(peer, notification_text(n.get("code", ""), n.get("subcode", ""),
                                                    n.get("data", ""), n.get("message", "")))
    raise ValueError(f"unexpected message type {kind!r}")


def _from_packet(peer: str, nb: dict, m: dict) -> Event:
    """A packet-form line (``receive { packets; }``): the message body in hex."""
    if nb.get("direction") != "receive":
        raise ValueError(f"packet line for direction {nb.get('direction')!r}, not 'receive'")
    body, category = m["body"], m["category"]
    if not isinstance(body, str) or not body.startswith("0x") or type(category) is not int:
        raise TypeError("message.body is not a hex string or message.category not an integer")
    ev = bgp_wire.decode(peer, category, bytes.fromhex(body[2:]),
                         bgp_wire.session_from_json(nb.get("negotiated")))
    if isinstance(ev, str):
        raise ValueError(f"{bgp_wire.CATEGORY_NAMES.get(category, category)}: {ev}")
    return ev
