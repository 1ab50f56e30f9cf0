"""Raw rtnetlink for bulk IPv4 and IPv6 routes: struct-packed requests, batched sends, raw dumps.

Why not pyroute2 here: building one pyroute2 message object per route runs at
~3.5k-15k routes/s; packing ``nlmsghdr + rtmsg + attributes`` with one
precompiled ``struct.Struct`` per message shape and sending thousands of them in
one ``send`` runs at the kernel's own pace (~175k adds/s measured here). pyroute2
still creates the socket (it knows how to open one inside a named netns) and
serves everything that is not bulk (links, addresses, neighbours).

Wire facts this module relies on (linux/netlink.h, linux/rtnetlink.h):
- requests in one send are processed in order inside the sender's syscall, so
  after ``send`` returns every response is already queued on our socket;
- without NLM_F_ACK the kernel answers a request only when it fails, and the
  error carries the request's sequence number -> per-route errors without
  100k success acks; a trailing NLMSG_NOOP with NLM_F_ACK is the barrier that
  says "this chunk is fully answered";
- NETLINK_CAP_ACK keeps error replies to 36 bytes (no echo of the request);
- NETLINK_GET_STRICT_CHK lets the kernel filter a route dump by table and
  protocol (kernel >= 4.20) so we read back only our own routes;
- a dump that raced a change carries NLM_F_DUMP_INTR and must be restarted.

Hot-path values are plain tuples, not dataclasses: at 100k routes the
constructor cost of a dataclass is a measurable share of the budget.

    RouteKey  = (table, dst: 4 or 16 bytes, prefix_len, metric)
    RouteForm = (rtn_type, gateway: 4/16 bytes or b"", oif or 0, onlink: bool)
    multipath = (RTN_UNICAST, hops, MULTIPATH_OIF, False)
                hops = sorted tuple of (gateway: 4/16 bytes, oif, onlink), two or more

The family is the length of ``dst`` (4: AF_INET, 16: AF_INET6), so keys of both
families live in one dict without colliding and IPv4 keeps its fast paths. IPv6
requests are packed attribute by attribute (no templates yet). Two IPv6 kernel
habits are folded into the same forms on read-back, so a resync never sees a
difference that is not one (net/ipv6/route.c):
- a route added with metric 0 is stored with IP6_RT_PRIO_USER (1024): an IPv6
  metric 1024 reads back as 0 (``v6_metric``; callers normalise the same way);
- a blackhole/unreachable/prohibit route is reported through the loopback
  device: its oif reads back as 0, as we install it.

A multipath (ECMP) route goes out as one RTA_MULTIPATH attribute of rtnexthop
entries (weight 1 each) and comes back from a dump in the kernel's order; the
parser sorts the hops so a resync compares them order-insensitively. A form's
second member is then a tuple instead of bytes; the oif sentinel tells the two
shapes apart without a type check on the single-path hot path.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable, Sequence
from typing import TypeAlias

import structlog

from felix_like.errors import DataplaneError

log = structlog.get_logger("felix_like.nlwire")

RouteKey: TypeAlias = tuple[int, bytes, int, int]
RouteForm: TypeAlias = tuple[int, bytes, int, bool]
# (op, key, form): op is OP_ADD (create, fail if anything occupies the key),
# OP_REPLACE (overwrite our own route) or OP_DELETE (only a route of our protocol).
RouteOp: TypeAlias = tuple[int, RouteKey, RouteForm | None]

OP_ADD = 1
OP_REPLACE = 2
OP_DELETE = 3

# linux/netlink.h
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_GET_STRICT_CHK = 12

# linux/rtnetlink.h
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_MULTIPATH = 9
RTA_TABLE = 15
RTNH_HDR_LEN = 8  # struct rtnexthop: len u16, flags u8, hops u8, ifindex s32
RTN_UNICAST = 1
RTN_BLACKHOLE = 6
RTN_UNREACHABLE = 7
RTN_PROHIBIT = 8
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255
RTNH_F_ONLINK = 0x4
RT_TABLE_MAIN = 254

_HDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_ERR = struct.Struct("=i")
# The oif of a multipath form: its next hops (gateway, oif, onlink each) are in
# the form's gateway slot. Never a real ifindex (those are > 0).
MULTIPATH_OIF = -1
_RTNH = struct.Struct("=HBBi")

# Message shapes: header, rtmsg, then RTA_TABLE, RTA_DST, RTA_PRIORITY and the
# optional RTA_GATEWAY / RTA_OIF, each a 4-byte rtattr header + 4-byte payload.
_HEAD = "=IHHII" + "BBBBBBBBI" + "HHI" + "HH4s" + "HHI"
_S_BARE = struct.Struct(_HEAD)
_S_GW = struct.Struct(_HEAD + "HH4s")
_S_OIF = struct.Struct(_HEAD + "HHI")
_S_GW_OIF = struct.Struct(_HEAD + "HH4s" + "HHI")
_LEN_BARE, _LEN_GW, _LEN_OIF, _LEN_GW_OIF = (s.size for s in (_S_BARE, _S_GW, _S_OIF, _S_GW_OIF))

_NOOP_ACK = struct.Struct("=IHHII")
DEFAULT_CHUNK = 4096  # requests per send: ~230 KB, well under the forced sndbuf
_SOCK_BUF = 32 * 1024 * 1024


# IP6_RT_PRIO_USER (include/net/ip6_route.h): the metric the kernel gives an IPv6 route
# added with metric 0.
IP6_RT_PRIO_USER = 1024


def v6_metric(metric: int) -> int:
    """The key metric of an IPv6 route: 1024 and 0 are the same route to the kernel."""
    return 0 if metric == IP6_RT_PRIO_USER else metric


class NetlinkError(DataplaneError, OSError):
    """A netlink exchange failed as a whole (not a per-route error)."""


class DumpInterrupted(NetlinkError):
    """The kernel kept interrupting a dump (NLM_F_DUMP_INTR) beyond our retry budget."""


def scope_for(form: RouteForm) -> int:
    rtype, gw, _oif, _onlink = form
    # A unicast route with no gateway is on-link (``dev X scope link``); every
    # other route is universe. Deriving it keeps the scope out of the compared form.
    if rtype == RTN_UNICAST and not gw:
        return RT_SCOPE_LINK
    return RT_SCOPE_UNIVERSE


def pack_route_ops(ops: Sequence[RouteOp], protocol: int, first_seq: int) -> bytearray:
    """Pack route requests back to back; request i gets sequence ``first_seq + i``.

    No NLM_F_ACK: success is silent, failure answers with the request's seq.

    Single-path requests differ only in seq, dst_len and dst once (op, form, table,
    metric) are fixed, and consecutive ops usually share all four (``routetable.plan``
    hands 100k routes via one ToR the same form object): each such run packs one
    template and then only the three varying fields (~4x faster than packing every
    field of every request).
    """
    out = bytearray()
    seq = first_seq
    append = out.extend
    # The run's template: (op, form, table, metric) it was made for, and its pieces.
    r_op = r_form = r_table = r_metric = None
    pack = h0 = h1 = h2 = h3 = None
    for op, key, form in ops:
        table, dst, plen, metric = key
        if len(dst) == 16:
            append(_pack_v6(op, form, table, metric, protocol, seq, plen, dst))
            seq += 1
            r_op = None  # never a run
            continue
        if form is not r_form or op != r_op or table != r_table or metric != r_metric:
            if form is not None and form[2] == MULTIPATH_OIF:
                flags = _ADD_FLAGS if op == OP_ADD else _REPLACE_FLAGS
                rtable = table if table < 256 else 252
                append(_pack_multipath(flags, seq, rtable, protocol, form[0], table, dst,
                                       plen, metric, form[1]))  # type: ignore[arg-type]
                seq += 1
                r_op = None  # never a run
                continue
            r_op, r_form, r_table, r_metric = op, form, table, metric
            pack, (h0, h1, h2, h3) = _template(op, form, table, metric, protocol)
        append(pack(h0, seq, h1, plen, h2, dst, h3))
        seq += 1
    return out


_ADD_FLAGS = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL
_REPLACE_FLAGS = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE
# Where the varying fields sit in every single-path request (see _HEAD): nlmsg_seq at
# 8..12, rtm_dst_len at 17, RTA_DST's payload at 40..44.
_SEQ_AT, _PLEN_AT, _DST_AT = 8, 17, 40
_TEMPLATE_STRUCTS: dict[int, struct.Struct] = {}


def _template(op: int, form: RouteForm | None, table: int, metric: int, protocol: int
              ) -> tuple[Callable[..., bytes], tuple[bytes, bytes, bytes, bytes]]:
    whole = _pack_single(op, form, table, metric, protocol, 0, 0, b"\0\0\0\0")
    tail = len(whole) - _DST_AT - 4
    st = _TEMPLATE_STRUCTS.get(tail)
    if st is None:
        st = _TEMPLATE_STRUCTS[tail] = struct.Struct(
            f"=8sI{_PLEN_AT - _SEQ_AT - 4}sB{_DST_AT - _PLEN_AT - 1}s4s{tail}s")
    return st.pack, (whole[:_SEQ_AT], whole[_SEQ_AT + 4:_PLEN_AT],
                     whole[_PLEN_AT + 1:_DST_AT], whole[_DST_AT + 4:])


def _pack_single(op: int, form: RouteForm | None, table: int, metric: int, protocol: int,
                 seq: int, plen: int, dst: bytes) -> bytes:
    """One single-path request, every field packed (the reference layout)."""
    rtable = table if table < 256 else 252  # RT_TABLE_COMPAT; RTA_TABLE carries the real id
    if op == OP_DELETE:
        # type 0 and scope NOWHERE match any; protocol makes the kernel refuse
        # (ESRCH) to delete a route that is not ours (fib_table_delete).
        return _S_BARE.pack(_LEN_BARE, RTM_DELROUTE, NLM_F_REQUEST, seq, 0,
                            socket.AF_INET, plen, 0, 0, rtable, protocol,
                            RT_SCOPE_NOWHERE, 0, 0,
                            8, RTA_TABLE, table, 8, RTA_DST, dst, 8, RTA_PRIORITY, metric)
    rtype, gw, oif, onlink = form  # type: ignore[misc]
    flags = _ADD_FLAGS if op == OP_ADD else _REPLACE_FLAGS
    scope = RT_SCOPE_LINK if (rtype == RTN_UNICAST and not gw) else RT_SCOPE_UNIVERSE
    rflags = RTNH_F_ONLINK if onlink else 0
    if gw and oif:
        return _S_GW_OIF.pack(_LEN_GW_OIF, RTM_NEWROUTE, flags, seq, 0,
                              socket.AF_INET, plen, 0, 0, rtable, protocol, scope, rtype,
                              rflags, 8, RTA_TABLE, table, 8, RTA_DST, dst,
                              8, RTA_PRIORITY, metric, 8, RTA_GATEWAY, gw, 8, RTA_OIF, oif)
    if oif:
        return _S_OIF.pack(_LEN_OIF, RTM_NEWROUTE, flags, seq, 0,
                           socket.AF_INET, plen, 0, 0, rtable, protocol, scope, rtype,
                           rflags, 8, RTA_TABLE, table, 8, RTA_DST, dst,
                           8, RTA_PRIORITY, metric, 8, RTA_OIF, oif)
    if gw:
        return _S_GW.pack(_LEN_GW, RTM_NEWROUTE, flags, seq, 0,
                          socket.AF_INET, plen, 0, 0, rtable, protocol, scope, rtype,
                          rflags, 8, RTA_TABLE, table, 8, RTA_DST, dst,
                          8, RTA_PRIORITY, metric, 8, RTA_GATEWAY, gw)
    return _S_BARE.pack(_LEN_BARE, RTM_NEWROUTE, flags, seq, 0,
                        socket.AF_INET, plen, 0, 0, rtable, protocol, scope, rtype,
                        rflags, 8, RTA_TABLE, table, 8, RTA_DST, dst,
                        8, RTA_PRIORITY, metric)


def _pack_multipath(flags: int, seq: int, rtable: int, protocol: int, rtype: int, table: int,
                    dst: bytes, plen: int, metric: int,
                    hops: tuple[tuple[bytes, int, bool], ...]) -> bytes:
    """One RTM_NEWROUTE with RTA_MULTIPATH; every hop has a gateway (routetable checks).
    The family follows the length of ``dst`` (IPv4: 4 bytes, IPv6: 16)."""
    nh = b"".join(_RTNH.pack(_RTNH.size + _attr_len(gw), RTNH_F_ONLINK if onlink else 0, 0, oif)
                  + _attr(RTA_GATEWAY, gw) for gw, oif, onlink in hops)
    family = socket.AF_INET6 if len(dst) == 16 else socket.AF_INET
    body = (_RTMSG.pack(family, plen, 0, 0, rtable, protocol, RT_SCOPE_UNIVERSE, rtype, 0)
            + _attr(RTA_TABLE, struct.pack("=I", table)) + _attr(RTA_DST, dst)
            + _attr(RTA_PRIORITY, struct.pack("=I", metric))
            + struct.pack("=HH", 4 + len(nh), RTA_MULTIPATH) + nh)
    return _HDR.pack(16 + len(body), RTM_NEWROUTE, flags, seq, 0) + body


def _attr_len(payload: bytes) -> int:
    return 4 + len(payload)


def _attr(atype: int, payload: bytes) -> bytes:
    """One rtattr (payloads here are 4 or 16 bytes: already aligned)."""
    return struct.pack("=HH", 4 + len(payload), atype) + payload


def _pack_v6(op: int, form: RouteForm | None, table: int, metric: int, protocol: int,
             seq: int, plen: int, dst: bytes) -> bytes:
    """One IPv6 request (``dst`` and gateways are 16 bytes), attribute by attribute."""
    rtable = table if table < 256 else 252
    attrs = _attr(RTA_TABLE, struct.pack("=I", table)) + _attr(RTA_DST, dst)
    if op == OP_DELETE:
        # Key metric 0 is the route the kernel stored with 1024 (see v6_metric): name that
        # one exactly (ip6_route_del matches any metric when given none); protocol: only
        # ours, as for IPv4.
        attrs += _attr(RTA_PRIORITY, struct.pack("=I", metric or IP6_RT_PRIO_USER))
        body = _RTMSG.pack(socket.AF_INET6, plen, 0, 0, rtable, protocol, RT_SCOPE_NOWHERE,
                           0, 0) + attrs
        return _HDR.pack(16 + len(body), RTM_DELROUTE, NLM_F_REQUEST, seq, 0) + body
    rtype, gw, oif, onlink = form  # type: ignore[misc]
    flags = _ADD_FLAGS if op == OP_ADD else _REPLACE_FLAGS
    if oif == MULTIPATH_OIF:
        return _pack_multipath(flags, seq, rtable, protocol, rtype, table, dst, plen, metric,
                               gw)  # type: ignore[arg-type]
    scope = RT_SCOPE_LINK if (rtype == RTN_UNICAST and not gw) else RT_SCOPE_UNIVERSE
    attrs += _attr(RTA_PRIORITY, struct.pack("=I", metric))
    if gw:
        attrs += _attr(RTA_GATEWAY, gw)
    if oif:
        attrs += _attr(RTA_OIF, struct.pack("=I", oif))
    body = _RTMSG.pack(socket.AF_INET6, plen, 0, 0, rtable, protocol, scope, rtype,
                       RTNH_F_ONLINK if onlink else 0) + attrs
    return _HDR.pack(16 + len(body), RTM_NEWROUTE, flags, seq, 0) + body


def parse_multipath(buf: bytes, start: int, end: int) -> tuple[tuple[bytes, int, bool], ...]:
    """The rtnexthop entries of one RTA_MULTIPATH payload, sorted (order-insensitive).

    Per-hop flags other than ONLINK (LINKDOWN, DEAD, OFFLOAD) are state, not
    configuration, and weights are not compared: we only ever install weight 1.
    """
    hops = []
    uhh = struct.Struct("=HH").unpack_from
    a = start
    while a + RTNH_HDR_LEN <= end:
        nlen, nflags, _w, oif = _RTNH.unpack_from(buf, a)
        if nlen < RTNH_HDR_LEN:
            break
        gw = b""
        b = a + RTNH_HDR_LEN
        nend = min(a + nlen, end)
        while b + 4 <= nend:
            alen, atype = uhh(buf, b)
            if alen < 4:
                break
            if atype == RTA_GATEWAY:
                gw = bytes(buf[b + 4:b + alen])     # 4 bytes (IPv4) or 16 (IPv6)
            b += (alen + 3) & ~3
        hops.append((gw, oif, bool(nflags & RTNH_F_ONLINK)))
        a += (nlen + 3) & ~3
    return tuple(sorted(hops))


# Fast paths for the layouts the kernel emits for our own routes (fib_dump_info
# order: RTA_TABLE, RTA_DST, [RTA_PRIORITY], [RTA_GATEWAY], RTA_OIF): one unpack
# per message instead of an attribute walk. Anything else takes the generic walk.
_F_TDGO = struct.Struct("=28xHHIHH4sHH4sHHI")      # table, dst, gw, oif
_F_TDPGO = struct.Struct("=28xHHIHH4sHHIHH4sHHI")  # table, dst, prio, gw, oif
_F_TDO = struct.Struct("=28xHHIHH4sHHI")           # table, dst, oif
_F_TD = struct.Struct("=28xHHIHH4s")               # table, dst (blackhole & co)


def _fast_route(buf: bytes, off: int, mlen: int) -> tuple[int, bytes, int, bytes, int] | None:
    """(table, dst, metric, gw, oif) for the common layouts, else None."""
    if mlen == 60:
        t1, a1, table, t2, a2, dst, t3, a3, gw, t4, a4, oif = _F_TDGO.unpack_from(buf, off)
        if (a1, a2, a3, a4) == (RTA_TABLE, RTA_DST, RTA_GATEWAY, RTA_OIF):
            return table, dst, 0, gw, oif
    elif mlen == 68:
        (t1, a1, table, t2, a2, dst, t3, a3, prio, t4, a4, gw, t5, a5,
         oif) = _F_TDPGO.unpack_from(buf, off)
        if (a1, a2, a3, a4, a5) == (RTA_TABLE, RTA_DST, RTA_PRIORITY, RTA_GATEWAY, RTA_OIF):
            return table, dst, prio, gw, oif
    elif mlen == 52:
        t1, a1, table, t2, a2, dst, t3, a3, oif = _F_TDO.unpack_from(buf, off)
        if (a1, a2, a3) == (RTA_TABLE, RTA_DST, RTA_OIF):
            return table, dst, 0, b"", oif
    elif mlen == 44:
        t1, a1, table, t2, a2, dst = _F_TD.unpack_from(buf, off)
        if (a1, a2) == (RTA_TABLE, RTA_DST):
            return table, dst, 0, b"", 0
    return None


def parse_route_dump(buf: bytes, length: int, out: dict[RouteKey, RouteForm],
                     protocol: int, tables: frozenset[int] | None,
                     seq: int | None = None) -> tuple[bool, bool]:
    """Parse one recv() worth of RTM_NEWROUTE dump messages into ``out``.

    Returns (done, interrupted). Routes of another protocol or table are
    skipped even though the strict-check filter should have dropped them:
    older kernels ignore the filter silently.
    """
    unpack_hdr = _HDR.unpack_from
    unpack_rt = _RTMSG.unpack_from
    fast = _fast_route
    off = 0
    done = False
    interrupted = False
    while off + 16 <= length:
        mlen, mtype, mflags, mseq, _pid = unpack_hdr(buf, off)
        if mlen < 16:
            raise NetlinkError(errno.EPROTO, f"bad netlink message length {mlen}")
        if seq is not None and mseq != seq:
            # A leftover reply of an earlier, abandoned exchange: not ours.
            off += (mlen + 3) & ~3
            continue
        if mflags & NLM_F_DUMP_INTR:
            interrupted = True
        if mtype == NLMSG_DONE:
            done = True
            break
        if mtype == NLMSG_ERROR:
            (err,) = _ERR.unpack_from(buf, off + 16)
            raise NetlinkError(-err, f"route dump failed: {errno.errorcode.get(-err, err)}")
        if mtype == RTM_NEWROUTE:
            family, plen, _sl, _tos, rtable, rproto, _scope, rtype, rflags = unpack_rt(buf, off + 16)
            if family == socket.AF_INET6 and rproto == protocol:
                got6 = _route_v6(buf, off, mlen, rtable, rtype, rflags)
                if tables is None or got6[0][0] in tables:
                    out[got6[0]] = got6[1]
            elif family == socket.AF_INET and rproto == protocol:
                got = fast(buf, off, mlen)
                if got is not None:
                    table, dst, metric, gw, oif = got
                else:
                    table, dst, metric, gw, oif = _route_attrs(buf, off, mlen, rtable, 4)
                if tables is None or table in tables:
                    if oif == MULTIPATH_OIF:
                        # Route-level flags of a multipath route say nothing about
                        # its hops; onlink lives in each hop.
                        out[(table, dst, plen, metric)] = (rtype, gw, oif, False)
                    else:
                        out[(table, dst, plen, metric)] = (rtype, gw, oif,
                                                            bool(rflags & RTNH_F_ONLINK))
        off += (mlen + 3) & ~3
    return done, interrupted


def _route_attrs(buf, off: int, mlen: int, rtable: int, width: int):
    """(table, dst, metric, gateway, oif) of one RTM_NEWROUTE by the generic attribute walk
    (``width``: 4 or 16 address bytes); the IPv4 dump tries its fixed-layout fast path first."""
    uhh = struct.Struct("=HH").unpack_from
    u32 = struct.Struct("=I").unpack_from
    table, dst, metric, gw, oif = rtable, bytes(width), 0, b"", 0
    a = off + 28
    end = off + mlen
    while a + 4 <= end:
        alen, atype = uhh(buf, a)
        if alen < 4:
            break
        if atype == RTA_TABLE:
            table = u32(buf, a + 4)[0]
        elif atype == RTA_DST:
            dst = bytes(buf[a + 4:a + 4 + width])
        elif atype == RTA_GATEWAY:
            gw = bytes(buf[a + 4:a + 4 + width])
        elif atype == RTA_OIF:
            oif = u32(buf, a + 4)[0]
        elif atype == RTA_PRIORITY:
            metric = u32(buf, a + 4)[0]
        elif atype == RTA_MULTIPATH:
            gw = parse_multipath(buf, a + 4, a + alen)  # type: ignore[assignment]
            oif = MULTIPATH_OIF
        a += (alen + 3) & ~3
    return table, dst, metric, gw, oif


def _route_v6(buf: bytes, off: int, mlen: int, rtable: int, rtype: int, rflags: int
              ) -> tuple[RouteKey, RouteForm]:
    """(key, form) of one IPv6 RTM_NEWROUTE (generic attribute walk)."""
    plen = buf[off + 17]
    table, dst, metric, gw, oif = _route_attrs(buf, off, mlen, rtable, 16)
    key = (table, dst, plen, v6_metric(metric))
    if oif == MULTIPATH_OIF:
        return key, (rtype, gw, oif, False)
    if rtype != RTN_UNICAST:
        oif = 0     # the kernel reports blackholes & co through lo; we install them without
    return key, (rtype, gw, oif, bool(rflags & RTNH_F_ONLINK))


def open_route_socket(netns: str | None = None) -> socket.socket:
    """A NETLINK_ROUTE socket in ``netns`` (None: ours), tuned for bulk requests.

    pyroute2 creates the socket inside a named netns through a short-lived child
    that passes the fd back, so our process never switches namespace. flags=0:
    never create the namespace if it does not exist.
    """
    if netns is None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    else:
        from pyroute2.netns import create_socket

        sock = create_socket(netns, socket.AF_NETLINK, socket.SOCK_RAW,
                             socket.NETLINK_ROUTE, flags=0)
    sock.bind((0, 0))
    for opt, val in ((socket.SO_SNDBUF, _SOCK_BUF), (socket.SO_RCVBUF, _SOCK_BUF)):
        try:
            # The FORCE variants (root) pass rmem_max/wmem_max; fall back politely.
            sock.setsockopt(socket.SOL_SOCKET, opt + 32, val)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, opt, val)
    sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
    try:
        sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
    except OSError:
        log.warning("netlink_strict_check_unavailable", effect="dumps filtered in userspace")
    return sock


class RouteSocket:
    """Bulk route I/O on one raw netlink socket: ``execute(ops)`` and ``dump(...)``."""

    def __init__(self, sock: socket.socket, chunk: int = DEFAULT_CHUNK) -> None:
        self.sock = sock
        self.chunk = chunk
        self._seq = 1
        self._buf = bytearray(1 << 20)
        self._view = memoryview(self._buf)

    @classmethod
    def open(cls, netns: str | None = None) -> RouteSocket:
        return cls(open_route_socket(netns))

    def close(self) -> None:
        self.sock.close()

    def _next_seq(self, n: int) -> int:
        first = self._seq
        # Wrap well before 2**32 so seq + n never overflows the u32 header field.
        self._seq = first + n if first + n < 0x7FFF0000 else 1
        return first

    def execute(self, ops: Sequence[RouteOp], protocol: int) -> list[int]:
        """Send all ops in chunks; returns one errno per op (0 = applied)."""
        results = [0] * len(ops)
        for start in range(0, len(ops), self.chunk):
            part = ops[start:start + self.chunk]
            first = self._next_seq(len(part) + 1)
            buf = pack_route_ops(part, protocol, first)
            barrier = first + len(part)
            buf += _NOOP_ACK.pack(16, NLMSG_NOOP, NLM_F_REQUEST | NLM_F_ACK, barrier, 0)
            self._send_all(buf)
            self._collect(first, barrier, results, start)
        return results

    def _send_all(self, buf: bytearray) -> None:
        sent = self.sock.send(buf)
        if sent != len(buf):  # netlink sends are all-or-nothing; be loud if not
            raise NetlinkError(errno.EIO, f"short netlink send {sent}/{len(buf)}")

    def _collect(self, first: int, barrier: int, results: list[int], base: int) -> None:
        view = self._view
        unpack_hdr = _HDR.unpack_from
        while True:
            try:
                n = self.sock.recv_into(self._buf)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                # Replies were dropped (the barrier ack may be among them): we
                # cannot say which requests failed. Mark the whole chunk unknown
                # so the caller resyncs, and drain what is queued without
                # blocking - rtnetlink answered everything inside send().
                for i in range(barrier - first):
                    results[base + i] = results[base + i] or errno.ENOBUFS
                self._drain()
                return
            off = 0
            while off + 16 <= n:
                mlen, mtype, _fl, seq, _pid = unpack_hdr(view, off)
                if mtype == NLMSG_ERROR:
                    (err,) = _ERR.unpack_from(view, off + 16)
                    if seq == barrier:
                        return
                    if first <= seq < barrier:
                        results[base + seq - first] = -err
                off += (mlen + 3) & ~3

    def _drain(self) -> None:
        while True:
            try:
                self.sock.recv_into(self._buf, 0, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise

    def dump(self, protocol: int, tables: frozenset[int] | None,
             max_attempts: int = 10, oif: int = 0,
             family: int = socket.AF_INET) -> dict[RouteKey, RouteForm]:
        """Routes of ``protocol`` (in ``tables``; None = all) of one address family,
        retried on NLM_F_DUMP_INTR. With ``oif``, only routes whose output interface is
        that index."""

        def attempt() -> tuple[dict[RouteKey, RouteForm], bool]:
            return self._dump_once(protocol, tables, oif, family)

        return dump_with_retry(attempt, max_attempts)

    def _dump_once(self, protocol: int, tables: frozenset[int] | None, oif: int = 0,
                   family: int = socket.AF_INET) -> tuple[dict[RouteKey, RouteForm], bool]:
        seq = self._next_seq(1)
        # Table filter in the request only when there is exactly one table;
        # otherwise dump all tables of our protocol and filter here.
        one = next(iter(tables)) if tables is not None and len(tables) == 1 else 0
        rtable = one if one < 256 else 252
        # With strict checking the kernel filters by RTA_OIF as well; without it the
        # whole protocol comes back and the oif filter below does the work.
        req = _HDR.pack(16 + 12 + 8 + (8 if oif else 0), RTM_GETROUTE,
                        NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
        req += _RTMSG.pack(family, 0, 0, 0, rtable, protocol, 0, 0, 0)
        req += struct.pack("=HHI", 8, RTA_TABLE, one)
        if oif:
            req += struct.pack("=HHI", 8, RTA_OIF, oif)
        self.sock.send(req)
        out: dict[RouteKey, RouteForm] = {}
        interrupted = False
        while True:
            # recv() -> bytes: slicing 4-byte fields from bytes is one allocation,
            # from a memoryview two.
            data = self.sock.recv(1 << 20)
            done, intr = parse_route_dump(data, len(data), out, protocol, tables, seq)
            interrupted = interrupted or intr
            if done:
                if oif:
                    out = {k: f for k, f in out.items() if f[2] == oif}
                return out, interrupted


def dump_with_retry(attempt: Callable[[], tuple[dict, bool]], max_attempts: int = 10) -> dict:
    """Run ``attempt`` until a dump completes without NLM_F_DUMP_INTR."""
    for n in range(1, max_attempts + 1):
        result, interrupted = attempt()
        if not interrupted:
            return result
        log.debug("dump_interrupted_retrying", attempt=n)
    raise DumpInterrupted(errno.EINTR, f"route dump interrupted {max_attempts} times in a row")
