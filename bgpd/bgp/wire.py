"""BGP message bodies as ExaBGP 5.0.15 hands them over (``receive { packets; }``) -> our events.

Pure: stdlib only, no I/O, never raises on what the peer sent. Each ``decode_*`` returns
the very event ``bgpd.bgp.events`` builds from ExaBGP's parsed JSON of the same message (pinned
on real pairs by ``tests/bgp/test_wire_contract.py``), or a ``str``: the reason it could not,
which the caller turns into ``Malformed``.

Why: with ``receive { parsed; }`` ExaBGP JSON-encodes every prefix (a fifth of its CPU
when 100k routes arrive) and we json.loads it all again. A packet line carries the raw
body as hex; ExaBGP still parses the message itself (and answers a bad one with a
NOTIFICATION), but writes no per-prefix JSON.

What is read, and how ExaBGP 5.0.15 (as installed, with its RFC 7606 patches) reads it:
- UPDATE (RFC 4271 4.3): withdrawn routes, path attributes (extended-length flag), NLRI.
  ORIGIN, AS_PATH (2- or 4-byte ASNs per the negotiated ``asn4``), NEXT_HOP, MED,
  LOCAL_PREF become ``Attributes``; AS4_PATH/AGGREGATOR/AS4_AGGREGATOR only as far as
  ExaBGP's RFC 6793 reconstruction of the path needs them; MP_REACH_NLRI/MP_UNREACH_NLRI
  for ipv4 unicast and ipv6 unicast routes and End-of-RIB. Routes of any other family
  are not decoded.
- ipv6 unicast (RFC 4760, RFC 2545; issue 15): prefixes as ``inet_ntop`` prints them (RFC
  5952, as ExaBGP does); of a 32-byte next hop (global + link-local) the global one is
  kept: ``global_nexthops``, which ``bgpd.bgp.exabgp_lines`` applies to ExaBGP's parsed
  form too (it lists such a prefix twice, once per next hop).
- End-of-RIB: an UPDATE with nothing in it (ipv4 unicast), the 11-byte MP_UNREACH form
  of any family, or an UPDATE whose only attribute is an MP_UNREACH without NLRI.
- RFC 7606 treat-as-withdraw exactly where ExaBGP applies it (a malformed ORIGIN, AS_PATH,
  NEXT_HOP, MED, LOCAL_PREF or community attribute, a zero-length attribute that may not
  be empty, an attribute length running past the attribute section, wrong flags on one of
  those): every ipv4 unicast prefix of the UPDATE, announced or not, becomes a withdrawal.
- OPEN: AS (the 4-byte one from capability 65 when present), hold time, router id, and
  graceful restart (capability 64) restart time when it lists ipv4/unicast or
  ipv6/unicast.
- NOTIFICATION: code, subcode, data (RFC 8203 shutdown communication for Cease 2 and 4).

Quirks kept on purpose, because the parsed form has them (events must be the same):
- ExaBGP names AS_CONFED_SEQUENCE and AS_CONFED_SET segments "as-sequence", so their ASNs
  are part of ``as_path`` and each counts one in ``as_path_len`` (RFC 5065 would count
  none); only an AS_SET counts as one, even an empty one.
- Prefix host bits are not cleared: ``198.19.1.197/26`` stays as the peer sent it.
- An ORIGIN value above 2 is "incomplete" (2); an announced prefix without NEXT_HOP has
  the next hop "no-nexthop"; a 16-byte NEXT_HOP is printed as IPv6.
- AS4_PATH is merged into AS_PATH (RFC 6793 4.2.3) whatever asn4 was negotiated.

Where ExaBGP would end the session over a message (its Notify: bad framing, a malformed
MP attribute or AS4_PATH, a family that was not negotiated, a bad prefix length, ...) we
return a reason. ExaBGP writes the packet line before it decodes, so that line still
arrives; the session goes down right after it. We do not replicate every check ExaBGP
makes on attributes we ignore (communities' contents, PMSI, BGP-LS, Prefix-SID, capability
values other than 64/65): for such a message we may still return an event, and the
session goes down next either way.

Review notes (speed, 100k prefixes at session start): NLRI are decoded from the byte
string with slicing and 256-entry tables of decimal strings, one string per prefix and
no other per-prefix object; a run of prefixes whose lengths all need four address bytes
(/25../32, e.g. /26 blocks and /32 routes) is one ``struct.iter_unpack`` pass.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from bgpd.bgp.errors import BgpError
from bgpd.bgp.events import (
    FAMILY,
    Attributes,
    EndOfRib,
    Notification,
    PeerOpen,
    RouteUpdate,
    notification_text,
)

__all__ = ["Session", "DEFAULT_SESSION", "CATEGORY_NAMES", "decode", "decode_update", "decode_open",
           "decode_notification", "session_from_json", "family_name"]

OPEN, UPDATE, NOTIFICATION = 1, 2, 3
CATEGORY_NAMES = {OPEN: "OPEN", UPDATE: "UPDATE", NOTIFICATION: "NOTIFICATION"}
AS_TRANS = 23456

# ExaBGP's names for AFI/SAFI codes (exabgp.protocol.family), as it prints them in JSON.
_AFI_NAMES = {0: "undefined", 1: "ipv4", 2: "ipv6", 25: "l2vpn", 16388: "bgp-ls"}
_SAFI_NAMES = {1: "unicast", 2: "multicast", 4: "nlri-mpls", 5: "mcast-vpn", 65: "vpls",
               70: "evpn", 71: "bgp-ls", 72: "bgp-ls-vpn", 85: "mup", 128: "mpls-vpn",
               132: "rtc", 133: "flow", 134: "flow-vpn"}
_FAMILY_CODES = {f"{a} {s}": (ai, si) for ai, a in _AFI_NAMES.items()
                 for si, s in _SAFI_NAMES.items()}
IPV4_UNICAST = (1, 1)
IPV6_UNICAST = (2, 1)
_DECODED = (IPV4_UNICAST, IPV6_UNICAST)
# Next-hop lengths ExaBGP accepts in MP_REACH_NLRI (exabgp.protocol.family.Family.size),
# by family; a family missing here is one ExaBGP cannot decode (it ends the session).
_MP_NH_LENGTHS = {
    (1, 1): (4,), (1, 2): (4,), (1, 4): (4,), (1, 85): (4, 16), (1, 128): (12,),
    (1, 5): (4,), (1, 133): (0, 4), (1, 134): (0, 4), (1, 132): (4, 16),
    (2, 1): (16, 32), (2, 2): (16, 32), (2, 4): (16, 32), (2, 85): (4, 16),
    (2, 128): (24, 40), (2, 5): (4, 16), (2, 133): (0, 16, 32), (2, 134): (0, 16, 32),
    (25, 65): (4,), (25, 70): (4,), (16388, 71): (4, 16), (16388, 72): (12, 24),
}
_MP_RD = {(1, 128): 8, (2, 128): 8, (16388, 72): 8}


def family_name(afi: int, safi: int) -> str:
    """``"ipv4 unicast"``, as ExaBGP prints a family (unknown codes included)."""
    a = _AFI_NAMES.get(afi) or f"unknown-afi-{afi:#x}"
    s = _SAFI_NAMES.get(safi) or f"unknown safi {safi}"
    return f"{a} {s}"


@dataclass(frozen=True, slots=True)
class Session:
    """What ExaBGP negotiated for the session, from a packet line's ``negotiated`` member.

    ``families`` None means unknown (not checked); the defaults fit our config (asn4
    always enabled, ipv4 unicast only, no add-path, no extended next hop)."""

    asn4: bool = True
    families: frozenset[tuple[int, int]] | None = None
    addpath: frozenset[tuple[int, int]] = frozenset()  # families received with path ids
    extended_nexthop: bool = False  # ExaBGP: any RFC 8950 next-hop family negotiated


DEFAULT_SESSION = Session()
_SESSIONS: dict[tuple, Session] = {}


def session_from_json(neg: object) -> Session:
    """The ``negotiated`` member of a packet line -> ``Session`` (DEFAULT_SESSION if absent).

    Raises TypeError/KeyError/... on a member of the wrong shape (parse_line catches)."""
    if neg is None:
        return DEFAULT_SESSION
    if not isinstance(neg, dict):
        raise TypeError("negotiated is not an object")
    asn4 = neg.get("asn4", True)
    fams = neg.get("families")
    addpath = (neg.get("add_path") or {}).get("receive") or ()
    nexthop = neg.get("nexthop") or ()
    if not isinstance(asn4, bool) or not isinstance(addpath, list | tuple) \
            or not isinstance(nexthop, list | tuple) or not isinstance(fams, list | None):
        raise TypeError("negotiated members of the wrong type")
    key = (asn4, None if fams is None else tuple(map(str, fams)), tuple(map(str, addpath)),
           bool(nexthop))
    s = _SESSIONS.get(key)
    if s is None:
        def codes(names):
            return frozenset(_FAMILY_CODES[n] for n in names if n in _FAMILY_CODES)
        s = Session(asn4, None if key[1] is None else codes(key[1]), codes(key[2]), key[3])
        if len(_SESSIONS) < 64:  # a handful of distinct sessions; never unbounded
            _SESSIONS[key] = s
    return s


def decode(peer: str, category: int, body: bytes, session: Session = DEFAULT_SESSION):
    """One received message body (no 19-byte header) -> an event, or a reason (str)."""
    if category == UPDATE:
        return decode_update(peer, body, session)
    if category == OPEN:
        return decode_open(peer, body)
    if category == NOTIFICATION:
        return decode_notification(peer, body)
    return f"message category {category} is not one we decode"


# ------------------------------------------------------------------------- NLRI (ipv4)

_DEC = tuple(str(i) for i in range(256))
_DEC_DOT = tuple(f"{i}." for i in range(256))
_SUFFIX = tuple(f"/{m}" for m in range(33))
_PAD = (b"\0\0\0\0", b"\0\0\0", b"\0\0", b"\0", b"")
_iter_unpack = struct.iter_unpack
_ALL_32 = b"\x20" * 16384  # prefix-length bytes of a run of /32s (a 64 KB UPDATE holds < 13k)
_inet_ntoa = socket.inet_ntoa


def _prefixes(data: bytes) -> list[str] | str:
    """ipv4 unicast NLRI (RFC 4271 4.3, no path ids) -> ["a.b.c.d/len", ...] or a reason."""
    n = len(data)
    if not n:
        return []
    if n % 5 == 0:
        masks = data[::5]
        if min(masks) >= 25 and max(masks) <= 32:
            # All need four address bytes (/25../32): fixed 5-byte records.
            t, d, s = _DEC_DOT, _DEC, _SUFFIX
            return [f"{t[a]}{t[b]}{t[c]}{d[e]}{s[m]}"
                    for m, a, b, c, e in _iter_unpack("BBBBB", data)]
    return _walk(data, 0)


def _prefixes_addpath(data: bytes) -> list[str] | str:
    """The same with a 4-byte path identifier before each prefix (RFC 7911)."""
    return _walk(data, 4)


def _walk(data: bytes, id_len: int) -> list[str] | str:
    """The general NLRI walk: each prefix after an ``id_len``-byte path identifier."""
    out: list[str] = []
    append = out.append
    i, n = 0, len(data)
    while i < n:
        if id_len:
            if n - i <= id_len:
                return "ipv4 NLRI truncated in its path identifier"
            i += id_len
        m = data[i]
        if m > 32:
            return f"invalid prefix length {m} in ipv4 NLRI"
        size = (m + 7) >> 3
        j = i + 1 + size
        if j > n:
            return "ipv4 NLRI truncated"
        append(_inet_ntoa(data[i + 1:j] + _PAD[size]) + _SUFFIX[m])
        i = j
    return out


def _prefixes6(data: bytes, id_len: int = 0) -> list[str] | str:
    """ipv6 unicast NLRI (RFC 4760 5, RFC 2545) -> ["2001:2::/64", ...] or a reason."""
    out: list[str] = []
    append = out.append
    ntop, inet6, pad = socket.inet_ntop, socket.AF_INET6, b"\0" * 16
    i, n = 0, len(data)
    while i < n:
        if id_len:
            if n - i <= id_len:
                return "ipv6 NLRI truncated in its path identifier"
            i += id_len
        m = data[i]
        if m > 128:
            return f"invalid prefix length {m} in ipv6 NLRI"
        size = (m + 7) >> 3
        j = i + 1 + size
        if j > n:
            return "ipv6 NLRI truncated"
        append(f"{ntop(inet6, data[i + 1:j] + pad[size:])}/{m}")
        i = j
    return out


def _family_prefixes(fam: tuple[int, int], data: bytes, s: Session) -> list[str] | str:
    """NLRI of one of the families we decode (``_DECODED``)."""
    if fam == IPV4_UNICAST:
        return (_prefixes_addpath if fam in s.addpath else _prefixes)(data)
    return _prefixes6(data, 4 if fam in s.addpath else 0)


def _nexthop(raw: bytes) -> str | None:
    if len(raw) == 4:
        return _inet_ntoa(raw)
    if len(raw) == 16:
        return socket.inet_ntop(socket.AF_INET6, raw)
    return None


# ------------------------------------------------------------------------- attributes

_TAW = 0xFFFF  # ExaBGP's internal "treat-as-withdraw" attribute code
_DISCARD = 0xFFFE  # ... and "attribute discard"
# (code -> the flags ExaBGP registers it with), extended-length bit set, low bits clear.
_REGISTERED = {1: 0x50, 2: 0x50, 3: 0x50, 4: 0x90, 5: 0x50, 6: 0x50, 7: 0xD0, 8: 0xD0,
               9: 0x90, 10: 0x90, 14: 0x90, 15: 0x90, 16: 0xD0, 17: 0xD0, 18: 0xD0,
               22: 0xD0, 25: 0xD0, 26: 0x90, 29: 0x90, 32: 0xD0, 40: 0xD0}
_OPTIONAL = frozenset(c for c, f in _REGISTERED.items() if f & 0x80)
_TREAT_AS_WITHDRAW = frozenset({1, 2, 3, 4, 5, 8, 16, 25, 32})
_VALID_ZERO = frozenset({2, 6, 40})
_COMMUNITY_SIZE = {8: 4, 16: 8, 25: 20, 32: 12}
_SEG_COUNTS_NONE = (3, 4)  # confederation segments: no AS number for RFC 6793 counting


def _segments(raw: bytes, width: int) -> list[tuple[int, tuple[int, ...]]] | None:
    """AS_PATH / AS4_PATH segments -> [(type, asns)], None if malformed."""
    segs = []
    i, n = 0, len(raw)
    fmt = "!%dI" if width == 4 else "!%dH"
    while i < n:
        if n - i < 2:
            return None
        kind, count = raw[i], raw[i + 1]
        if not 1 <= kind <= 4:
            return None
        end = i + 2 + count * width
        if end > n:
            return None
        segs.append((kind, struct.unpack(fmt % count, raw[i + 2:end])))
        i = end
    return segs


def _as_count(segs) -> int:
    # RFC 4271 9.1.2.2 / RFC 5065 5.3, as ExaBGP's RFC 6793 reconstruction counts.
    return sum(len(a) if k == 2 else 1 if k == 1 else 0 for k, a in segs)


def _reconstruct(segs2, segs4):
    """ExaBGP's RFC 6793 4.2.3 merge of AS_PATH and AS4_PATH (coalescing adjacent
    sequences changes nothing we read, so it is left out)."""
    if _as_count(segs2) < _as_count(segs4):
        return segs2
    wanted = _as_count(segs2) - _as_count(segs4)
    lead = []
    for kind, asns in segs2:
        if wanted <= 0:
            break
        if kind == 2 and len(asns) > wanted:
            lead.append((2, asns[:wanted]))
            break
        lead.append((kind, asns))
        wanted -= _as_count(((kind, asns),))
    return lead + list(segs4)


class _Reset(BgpError):  # noqa: N818 - internal: ExaBGP would end the session
    pass


def _mp_reach(v: bytes, s: Session):
    """-> ((afi, safi), [(nexthop, [prefix, ...])] for ipv4/ipv6 unicast, else None)."""
    if len(v) < 5:
        raise _Reset("MP_REACH_NLRI too short for its family and next hop")
    afi, safi, nhlen = int.from_bytes(v[0:2], "big"), v[2], v[3]
    fam = (afi, safi)
    if s.families is not None and fam not in s.families:
        raise _Reset(f"MP_REACH_NLRI for {family_name(afi, safi)}, not negotiated")
    if len(v) < 4 + nhlen + 1:
        raise _Reset("MP_REACH_NLRI truncated in its next hop")
    if fam not in _MP_NH_LENGTHS:
        raise _Reset(f"MP_REACH_NLRI for unsupported {family_name(afi, safi)}")
    lengths, rd = _MP_NH_LENGTHS[fam], _MP_RD.get(fam, 0)
    if s.extended_nexthop:
        if nhlen in (16, 32, 24):
            lengths = _MP_NH_LENGTHS.get((2, safi))
        elif nhlen in (4, 12):
            lengths = _MP_NH_LENGTHS.get((1, safi))
        else:
            raise _Reset("MP_REACH_NLRI next-hop length not allowed with extended next hop")
        if lengths is None:
            raise _Reset("MP_REACH_NLRI next-hop family unsupported")
    if nhlen not in lengths:
        raise _Reset(f"MP_REACH_NLRI next-hop length {nhlen} for {family_name(afi, safi)}")
    if rd and any(v[4:4 + rd]):
        raise _Reset("MP_REACH_NLRI next-hop route distinguisher is not zero")
    nlri = v[4 + nhlen + 1:]
    if not nlri:
        raise _Reset("MP_REACH_NLRI without NLRI")
    if fam not in _DECODED:
        return fam, None
    nhs = v[4 + rd:4 + nhlen]
    hops = []
    for k in range(0, len(nhs), 16):
        hop = _nexthop(nhs[k:k + 16])
        if hop is None:
            raise _Reset("MP_REACH_NLRI next hop neither 4 nor 16 bytes")
        hops.append(hop)
    prefixes = _family_prefixes(fam, nlri, s)
    if isinstance(prefixes, str):
        raise _Reset(f"MP_REACH_NLRI: {prefixes}")
    if len(hops) == 1:
        return fam, [(hops[0], prefixes)]
    # ExaBGP decodes every prefix once per next hop (global + link-local), in turn;
    # global_nexthops drops the link-local copies afterwards, as for its parsed form.
    return fam, [(h, [p]) for p in prefixes for h in hops]


def _link_local(hop: str) -> bool:
    return hop[:4].lower() == "fe80"


def global_nexthops(groups: list) -> list:
    """[(next hop, prefixes)] without the link-local copies (issue 15).

    A global + link-local next hop (32 bytes, RFC 2545 3) arrives as each prefix twice,
    once per next hop (ExaBGP's parsed form, and our decode of the same bytes): a group
    whose next hop is link-local goes when all its prefixes also have a non-link-local next
    hop. A node must forward to the peer's global address, which every node can reach
    (calico#10321, #5971); a link-local next hop alone stays (the import policy refuses it
    as martian)."""
    if len(groups) < 2 or not any(_link_local(nh) for nh, _ in groups):
        return groups
    kept = [(nh, ps) for nh, ps in groups if not _link_local(nh)]
    covered = {p for _, ps in kept for p in ps}
    return [(nh, ps) for nh, ps in groups
            if not _link_local(nh) or not covered.issuperset(ps)]


def _mp_unreach(v: bytes, s: Session):
    """-> ((afi, safi), [prefix, ...] for ipv4/ipv6 unicast | None, has_nlri)."""
    if len(v) < 3:
        raise _Reset("MP_UNREACH_NLRI too short for its family")
    afi, safi = int.from_bytes(v[0:2], "big"), v[2]
    fam = (afi, safi)
    if s.families is not None and fam not in s.families:
        raise _Reset(f"MP_UNREACH_NLRI for {family_name(afi, safi)}, not negotiated")
    nlri = v[3:]
    if fam not in _DECODED:
        return fam, None, bool(nlri)
    prefixes = _family_prefixes(fam, nlri, s)
    if isinstance(prefixes, str):
        raise _Reset(f"MP_UNREACH_NLRI: {prefixes}")
    return fam, prefixes, bool(prefixes)


# ------------------------------------------------------------------------- UPDATE

_EOR_MP_PREFIX = b"\x00\x00\x00\x07\x90\x0f\x00\x03"
_NO_NEXTHOP = "no-nexthop"


def decode_update(peer: str, body: bytes, session: Session = DEFAULT_SESSION):
    """UPDATE body -> RouteUpdate | EndOfRib, or a reason (str)."""
    n = len(body)
    if n == 4 and body == b"\0\0\0\0":
        return EndOfRib(peer, FAMILY)
    if n == 11 and body.startswith(_EOR_MP_PREFIX):
        return EndOfRib(peer, family_name(int.from_bytes(body[8:10], "big"), body[10]))
    if n < 4:
        return f"UPDATE of {n} bytes, shorter than its two length fields"
    wlen = int.from_bytes(body[0:2], "big")
    if 4 + wlen > n:
        return "UPDATE withdrawn routes length runs past the message"
    astart = 4 + wlen
    aend = astart + int.from_bytes(body[2 + wlen:astart], "big")
    if aend > n:
        return "UPDATE total path attribute length runs past the message"
    try:
        return _update(peer, body, wlen, astart, aend, session)
    except _Reset as exc:
        return str(exc)


def _update(peer, body, wlen, astart, aend, s: Session):
    a = body
    present: set[int] = set()  # codes ExaBGP's attribute dict ends up holding
    origin = med = None
    local_pref = None
    segs = segs4 = None
    nexthop = None
    agg_asn = None
    reach = unreach = None
    i = astart
    while i < aend:
        if aend - i < 2:
            present.add(_TAW)
            break
        flag, code = a[i], a[i + 1]
        if flag & 0x10:
            if aend - i < 4:
                present.add(_TAW)
                break
            length = (a[i + 2] << 8) | a[i + 3]
            start = i + 4
        else:
            if aend - i < 3:
                present.add(_TAW)
                break
            length = a[i + 2]
            start = i + 3
        if length > aend - start:  # RFC 7606 4: the whole UPDATE is withdrawn
            present.add(_TAW)
            break
        i = start + length
        v = a[start:i]
        if code in _OPTIONAL:
            flag &= 0xDF  # the partial bit
        if code in present:
            if code in (14, 15):
                return f"UPDATE with two {'MP_REACH_NLRI' if code == 14 else 'MP_UNREACH_NLRI'}"
            continue  # ExaBGP keeps the first of a repeated attribute
        expected = _REGISTERED.get(code)
        if expected is None:
            if flag & 0x40:
                present.add(code)  # unknown transitive: kept (as a generic attribute)
            continue
        if (flag | 0x10) & 0xF0 != expected:  # a known attribute with the wrong flags
            if code in (14, 15):
                return f"UPDATE with attribute {code} flagged {flag:#04x}"
            if code in _TREAT_AS_WITHDRAW:
                present.add(_TAW)
            continue
        if length == 0 and code not in _VALID_ZERO:
            present.add(_TAW)
            continue
        if code == 1:
            origin = v[0]
        elif code == 2:
            if not v:
                continue  # an empty AS_PATH is no attribute at all for ExaBGP
            segs = _segments(v, 4 if s.asn4 else 2)
            if segs is None:
                present.add(_TAW)
                continue
        elif code == 3:
            nexthop = _nexthop(v)
            if nexthop is None:
                present.add(_TAW)
                continue
        elif code in (4, 5):
            if length != 4:
                present.add(_TAW)
                continue
            if code == 4:
                med = int.from_bytes(v, "big")
            else:
                local_pref = int.from_bytes(v, "big")
        elif code in _COMMUNITY_SIZE:
            if length % _COMMUNITY_SIZE[code]:
                present.add(_TAW)
                continue
        elif code == 6:
            if length:
                present.add(_DISCARD)
                continue
        elif code == 7:
            if length != (8 if s.asn4 else 6):
                present.add(_DISCARD)
                continue
            agg_asn = int.from_bytes(v[:4] if s.asn4 else v[:2], "big")
        elif code == 9 and length != 4:
            return f"UPDATE with an ORIGINATOR_ID of {length} bytes"
        elif code == 10 and length % 4:
            return f"UPDATE with a CLUSTER_LIST of {length} bytes"
        elif code == 14:
            reach = _mp_reach(v, s)
        elif code == 15:
            unreach = _mp_unreach(v, s)
        elif code == 17:
            segs4 = _segments(v, 4)
            if segs4 is None:
                return "UPDATE with a malformed AS4_PATH"
            segs4 = [seg for seg in segs4 if seg[0] in (1, 2)]  # RFC 6793 6: no confed
        elif code == 18 and length != 8:
            return f"UPDATE with an AS4_AGGREGATOR of {length} bytes"
        elif code == 22 and length < 5:
            return "UPDATE with a PMSI_TUNNEL too short for its header"
        elif code == 26:
            continue  # AIGP: ignored by ExaBGP unless negotiated (we never configure it)
        present.add(code)

    taw = _TAW in present
    if not taw:
        # ExaBGP's reconcile_four_octet_as (RFC 6793 4.2.3).
        if 7 in present and 18 in present:
            if agg_asn != AS_TRANS:
                present.discard(17)
                segs4 = None
            else:
                present.discard(7)
        if 2 in present and 17 in present:
            segs = _reconstruct(segs, segs4)
            present.discard(17)

    withdrawn = _prefixes_v4(body[2:2 + wlen], s)
    announced_v4 = _prefixes_v4(body[aend:], s)
    if isinstance(withdrawn, str) or isinstance(announced_v4, str):
        return withdrawn if isinstance(withdrawn, str) else announced_v4

    present.discard(14)
    present.discard(15)
    if not present and not withdrawn and not announced_v4:
        if reach is None and (unreach is None or not unreach[2]):
            fam = unreach[0] if unreach is not None else IPV4_UNICAST
            return EndOfRib(peer, family_name(*fam))

    if segs is None or 2 not in present:
        attrs_path, path_len = (), 0
    elif len(segs) == 1 and segs[0][0] == 2:
        attrs_path = segs[0][1]
        path_len = len(attrs_path)
    else:
        attrs_path = tuple(asn for _, asns in segs for asn in asns)
        path_len = sum(1 if k == 1 else len(asns) for k, asns in segs)
    if origin is None or 1 not in present:
        origin = 0
    elif origin > 2:
        origin = 2
    attrs = Attributes(attrs_path, path_len, origin,
                       med if med is not None and 4 in present else 0,
                       local_pref if local_pref is not None and 5 in present else 100)

    mp_withdrawn = unreach[1] if unreach is not None and unreach[1] else []
    mp_announced = reach[1] if reach is not None and reach[1] else []
    if taw:
        # Every ipv4 unicast prefix, in ExaBGP's order, is withdrawn.
        gone = list(withdrawn)
        gone += announced_v4
        gone += mp_withdrawn
        for _, prefixes in mp_announced:
            gone += prefixes
        if reach is not None and reach[0] == IPV6_UNICAST or \
                unreach is not None and unreach[0] == IPV6_UNICAST:
            gone.sort(key=_is_v6)  # ExaBGP's parsed form: ipv4 unicast first (stable)
        return RouteUpdate(peer, attrs, (), tuple(gone))
    if mp_announced:
        # Grouped per family, then next hop, as ExaBGP's parsed form: ipv4 unicast first.
        v6 = reach[0] == IPV6_UNICAST
        groups: dict[tuple[bool, str], list[str]] = {}
        if announced_v4:
            groups[False, nexthop if 3 in present else _NO_NEXTHOP] = announced_v4
        for hop, prefixes in mp_announced:
            got = groups.get((v6, hop))
            if got is None:
                groups[v6, hop] = list(prefixes)
            else:
                got += prefixes
        announced = tuple(global_nexthops([(hop, tuple(p)) for (_, hop), p in groups.items()]))
    elif announced_v4:
        announced = ((nexthop if 3 in present else _NO_NEXTHOP, tuple(announced_v4)),)
        nlri = body[aend:]
        if len(nlri) == 5 * len(announced_v4) and nlri[::5] == _ALL_32[:len(announced_v4)] \
                and IPV4_UNICAST not in s.addpath:
            # Host routes only: their values for the policy's whole-UPDATE check.
            hosts = tuple([v for _, v in _iter_unpack(">BI", nlri)])
            if mp_withdrawn:
                withdrawn = withdrawn + mp_withdrawn
            return RouteUpdate(peer, attrs, announced, tuple(withdrawn), hosts)
    else:
        announced = ()
    if mp_withdrawn:
        withdrawn = withdrawn + mp_withdrawn
    return RouteUpdate(peer, attrs, announced, tuple(withdrawn))


def _is_v6(prefix: str) -> bool:
    return ":" in prefix


def _prefixes_v4(data: bytes, s: Session):
    if not data:
        return []
    if IPV4_UNICAST in s.addpath:
        return _prefixes_addpath(data)
    return _prefixes(data)


# ------------------------------------------------------------------------- OPEN

def decode_open(peer: str, body: bytes):
    """OPEN body -> PeerOpen, or a reason (str)."""
    if len(body) < 10:
        return f"OPEN of {len(body)} bytes, shorter than RFC 4271 allows"
    if body[0] != 4:
        return f"OPEN with BGP version {body[0]}"
    asn = int.from_bytes(body[1:3], "big")
    hold = int.from_bytes(body[3:5], "big")
    router_id = _inet_ntoa(body[5:9])
    data = body[9:]
    optlen = data[0]
    if optlen == 255 and len(data) > 1 and data[1] == 255:  # RFC 9072 extended parameters
        if len(data) < 4:
            return "OPEN extended optional parameters truncated"
        optlen = int.from_bytes(data[2:4], "big")
        data, hdr = data[4:optlen + 4], 3
    else:
        data, hdr = data[1:optlen + 1], 2
    asn4 = None
    gr_time = None
    gr_unicast = False
    while data:
        if len(data) < hdr:
            return "OPEN optional parameter truncated"
        ptype = data[0]
        plen = int.from_bytes(data[1:hdr], "big")
        if len(data) < hdr + plen:
            return "OPEN optional parameter runs past the message"
        value, data = data[hdr:hdr + plen], data[hdr + plen:]
        if ptype != 2:
            return f"OPEN optional parameter {ptype} (only capabilities are supported)"
        while value:
            if len(value) < 2 or len(value) < 2 + value[1]:
                return "OPEN capability truncated"
            code, cval, value = value[0], value[2:2 + value[1]], value[2 + value[1]:]
            if code == 65:
                if len(cval) != 4:
                    return "OPEN four-octet AS capability is not 4 bytes"
                asn4 = int.from_bytes(cval, "big")
            elif code == 64:
                if len(cval) < 2 or (len(cval) - 2) % 4:
                    return "OPEN graceful-restart capability malformed"
                gr_time = int.from_bytes(cval[0:2], "big") & 0x0FFF  # the last one's time
                for k in range(2, len(cval), 4):  # families accumulate
                    if cval[k:k + 3] in (b"\x00\x01\x01", b"\x00\x02\x01"):
                        gr_unicast = True  # ipv4 or ipv6 unicast (issue 15)
    return PeerOpen(peer, asn if asn4 is None else asn4, hold, router_id,
                    gr_time if gr_unicast else None)


# ------------------------------------------------------------------------- NOTIFICATION

def _hex(data: bytes) -> str:
    return "0x" + data.hex().upper()


def decode_notification(peer: str, body: bytes):
    """NOTIFICATION body -> Notification (never a reason: ExaBGP takes any)."""
    if len(body) < 2:
        code, sub = 0, 0
        data = b"peer sent a NOTIFICATION of %d bytes, too short to carry a code" % len(body)
    else:
        code, sub, data = body[0], body[1], _notification_data(body[0], body[1], body[2:])
    return Notification(peer, notification_text(code, sub, _hex(data),
                                                data.decode("utf-8", "replace")))


def _notification_data(code: int, sub: int, data: bytes) -> bytes:
    """ExaBGP's Notification.__init__: RFC 8203/9003 shutdown communication for Cease 2/4."""
    if (code, sub) not in ((6, 2), (6, 4)) or not data:
        return data
    length, rest = data[0], data[1:]
    if length == 0:
        return b"empty Shutdown Communication."
    if len(rest) < length:
        return (f"invalid Shutdown Communication (buffer underrun) length : {length} "
                f"[{_hex(rest)}]").encode()
    if length > 128:
        return (f"invalid Shutdown Communication (too large) length : {length} "
                f"[{_hex(rest)}]").encode()
    try:
        text = rest[:length].decode("utf-8").replace("\r", " ").replace("\n", " ")
    except UnicodeDecodeError:
        return (f"invalid Shutdown Communication (invalid UTF-8) length : {length} "
                f"[{_hex(rest)}]").encode()
    out = f'Shutdown Communication: "{text}"'.encode()
    if rest[length:]:
        out += (", trailing data: " + _hex(rest[length:])).encode()
    return out
