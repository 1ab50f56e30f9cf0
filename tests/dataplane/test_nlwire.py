"""The wire format and sequence-number error matching, without a kernel.

A scripted socket stands in for the kernel: it parses the packed requests with
the same parser the dump path uses and answers NLMSG_ERROR for chosen requests.
"""

from __future__ import annotations

import errno
import socket
import struct

from felix_like.nlwire import (
    MULTIPATH_OIF,
    NLM_F_ACK,
    NLM_F_DUMP_INTR,
    NLM_F_EXCL,
    NLM_F_MULTI,
    NLM_F_REPLACE,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_NOOP,
    OP_ADD,
    OP_DELETE,
    OP_REPLACE,
    RTA_MULTIPATH,
    RTM_DELROUTE,
    RTM_NEWROUTE,
    RTN_BLACKHOLE,
    RTN_UNICAST,
    RTNH_F_ONLINK,
    RouteSocket,
    pack_route_ops,
    parse_route_dump,
)

HDR = struct.Struct("=IHHII")


def split(buf: bytes):
    off = 0
    while off < len(buf):
        mlen, mtype, flags, seq, _ = HDR.unpack_from(buf, off)
        yield mtype, flags, seq, buf[off:off + mlen]
        off += (mlen + 3) & ~3


def test_packed_adds_parse_back_to_the_same_routes():
    ops = [
        (OP_ADD, (254, socket.inet_aton("198.19.1.0"), 26, 0),
         (RTN_UNICAST, socket.inet_aton("198.18.1.12"), 2, False)),
        (OP_REPLACE, (1000, socket.inet_aton("198.19.2.0"), 26, 5),
         (RTN_UNICAST, socket.inet_aton("198.19.2.1"), 9, True)),
        (OP_ADD, (254, socket.inet_aton("198.19.3.0"), 26, 0), (RTN_BLACKHOLE, b"", 0, False)),
        (OP_ADD, (254, socket.inet_aton("198.19.3.7"), 32, 0), (RTN_UNICAST, b"", 4, False)),
    ]
    buf = bytes(pack_route_ops(ops, 73, first_seq=100))
    msgs = list(split(buf))
    assert [m[2] for m in msgs] == [100, 101, 102, 103]
    assert all(m[0] == RTM_NEWROUTE for m in msgs)
    assert msgs[0][1] & NLM_F_EXCL and msgs[1][1] & NLM_F_REPLACE
    assert not any(m[1] & NLM_F_ACK for m in msgs)  # errors only: no 100k success acks
    out: dict = {}
    parse_route_dump(buf, len(buf), out, 73, None)
    assert out == {op[1]: op[2] for op in ops}
    out2: dict = {}
    parse_route_dump(buf, len(buf), out2, 74, None)  # another protocol: nothing
    assert out2 == {}


def test_delete_names_our_protocol():
    buf = bytes(pack_route_ops([(OP_DELETE, (254, socket.inet_aton("198.19.1.0"), 26, 0), None)],
                               73, first_seq=1))
    (mtype, _f, _s, msg), = split(buf)
    assert mtype == RTM_DELROUTE
    assert msg[16 + 5] == 73  # rtm_protocol


class ScriptedKernel:
    """Answers each request in a send like rtnetlink: errors for failing seqs, ack for NOOP."""

    def __init__(self, fail_every: int) -> None:
        self.fail_every = fail_every
        self.pending: list[bytes] = []
        self.sends = 0

    def send(self, buf) -> int:
        self.sends += 1
        out = bytearray()
        for mtype, flags, seq, msg in split(bytes(buf)):
            err = 0
            if mtype != NLMSG_NOOP and seq % self.fail_every == 0:
                err = -errno.ENETUNREACH
            if err or flags & NLM_F_ACK:
                out += HDR.pack(36, NLMSG_ERROR, 0, seq, 0) + struct.pack("=i", err) + msg[:16]
        # Deliver in two datagrams to exercise the collect loop.
        half = len(out) // 2 // 36 * 36
        self.pending += [bytes(out[:half]), bytes(out[half:])]
        return len(buf)

    def recv_into(self, buf) -> int:
        data = self.pending.pop(0)
        buf[:len(data)] = data
        return len(data)


def test_errors_matched_to_requests_by_sequence_number_across_chunks():
    kern = ScriptedKernel(fail_every=7)
    rs = RouteSocket(kern, chunk=50)  # type: ignore[arg-type]
    ops = [(OP_ADD, (254, struct.pack("!I", 0xC6130000 + 4 * i), 30, 0),
            (RTN_BLACKHOLE, b"", 0, False)) for i in range(180)]
    res = rs.execute(ops, 73)
    assert kern.sends == 4
    # seq numbers start at 1; each chunk of 50 uses 51 (the barrier).
    seqs = []
    seq = 1
    for start in range(0, 180, 50):
        n = min(50, 180 - start)
        seqs += range(seq, seq + n)
        seq += n + 1
    expected = [errno.ENETUNREACH if s % 7 == 0 else 0 for s in seqs]
    assert res == expected


def test_dump_parser_reports_interrupt_and_done():
    route = bytes(pack_route_ops([(OP_ADD, (254, socket.inet_aton("198.19.1.0"), 26, 0),
                                   (RTN_BLACKHOLE, b"", 0, False))], 73, first_seq=5))
    # Turn the request into a dump reply with NLM_F_DUMP_INTR set.
    reply = bytearray(route)
    struct.pack_into("=H", reply, 6, NLM_F_MULTI | NLM_F_DUMP_INTR)
    reply += HDR.pack(20, NLMSG_DONE, NLM_F_MULTI, 5, 0) + b"\0\0\0\0"
    out: dict = {}
    done, interrupted = parse_route_dump(bytes(reply), len(reply), out, 73, frozenset({254}))
    assert done and interrupted and len(out) == 1


class OverflowingKernel(ScriptedKernel):
    """The receive queue overflowed: the first recv says ENOBUFS, the rest is gone."""

    def __init__(self) -> None:
        super().__init__(fail_every=10**9)
        self.overflowed = False

    def recv_into(self, buf, nbytes=0, flags=0) -> int:
        if not self.overflowed:
            self.overflowed = True
            raise OSError(errno.ENOBUFS, "No buffer space available")
        if flags:  # the non-blocking drain
            if self.pending:
                return super().recv_into(buf)
            raise BlockingIOError(errno.EAGAIN, "empty")
        raise AssertionError("blocking recv after ENOBUFS would hang")


def test_enobufs_marks_the_chunk_unknown_without_hanging():
    rs = RouteSocket(OverflowingKernel(), chunk=10)  # type: ignore[arg-type]
    ops = [(OP_ADD, (254, struct.pack("!I", 0xC6130000 + 4 * i), 30, 0),
            (RTN_BLACKHOLE, b"", 0, False)) for i in range(5)]
    assert rs.execute(ops, 73) == [errno.ENOBUFS] * 5


def test_dump_parser_ignores_replies_of_another_exchange():
    route = bytes(pack_route_ops([(OP_ADD, (254, socket.inet_aton("198.19.1.0"), 26, 0),
                                   (RTN_BLACKHOLE, b"", 0, False))], 73, first_seq=4))
    done_msg = HDR.pack(20, NLMSG_DONE, NLM_F_MULTI, 5, 0) + b"\0\0\0\0"
    out: dict = {}
    done, _ = parse_route_dump(route + done_msg, len(route) + 20, out, 73, None, seq=5)
    assert done and out == {}


def test_multipath_packs_rta_multipath_and_parses_back_sorted():
    hops = ((socket.inet_aton("198.18.1.1"), 2, False), (socket.inet_aton("198.18.1.2"), 2, False),
            (socket.inet_aton("198.18.9.1"), 7, True))
    form = (RTN_UNICAST, hops, MULTIPATH_OIF, False)
    k = (254, socket.inet_aton("198.19.3.0"), 26, 0)
    buf = bytes(pack_route_ops([(OP_ADD, k, form)], 73, first_seq=1))
    (mtype, flags, _s, msg), = split(buf)
    assert mtype == RTM_NEWROUTE and flags & NLM_F_EXCL
    attrs = {}
    off = 28
    while off < len(msg):
        alen, atype = struct.unpack_from("=HH", msg, off)
        attrs[atype] = msg[off + 4:off + alen]
        off += (alen + 3) & ~3
    assert RTA_MULTIPATH in attrs and 5 not in attrs and 4 not in attrs  # no RTA_GATEWAY/OIF
    nh = attrs[RTA_MULTIPATH]
    assert len(nh) == 3 * 16
    assert struct.unpack_from("=HBBi", nh, 32) == (16, RTNH_F_ONLINK, 0, 7)
    out: dict = {}
    parse_route_dump(buf, len(buf), out, 73, None)
    assert out == {k: form}


def test_multipath_dump_is_order_insensitive():
    k = (254, socket.inet_aton("198.19.3.0"), 26, 0)
    a, b = (socket.inet_aton("198.18.1.1"), 2, False), (socket.inet_aton("198.18.1.2"), 3, False)
    one = bytes(pack_route_ops([(OP_REPLACE, k, (RTN_UNICAST, (b, a), MULTIPATH_OIF, False))],
                               73, first_seq=1))
    two = bytes(pack_route_ops([(OP_REPLACE, k, (RTN_UNICAST, (a, b), MULTIPATH_OIF, False))],
                               73, first_seq=1))
    assert one != two
    got1: dict = {}
    got2: dict = {}
    parse_route_dump(one, len(one), got1, 73, None)
    parse_route_dump(two, len(two), got2, 73, None)
    assert got1 == got2 == {k: (RTN_UNICAST, (a, b), MULTIPATH_OIF, False)}


def test_template_packing_equals_packing_every_field():
    """pack_route_ops packs runs of ops that share (op, form, table, metric) from one
    template; the bytes must equal the every-field reference for any op sequence."""
    import random

    from felix_like.nlwire import (
        MULTIPATH_OIF,
        OP_ADD,
        OP_DELETE,
        OP_REPLACE,
        RTN_BLACKHOLE,
        RTN_UNICAST,
        _pack_multipath,
        _pack_single,
        pack_route_ops,
    )

    rng = random.Random(11)
    gw = socket.inet_aton("198.18.1.1")
    forms = [(RTN_UNICAST, gw, 2, False), (RTN_UNICAST, gw, 0, False),
             (RTN_UNICAST, b"", 3, False), (RTN_UNICAST, gw, 2, True),
             (RTN_BLACKHOLE, b"", 0, False),
             (RTN_UNICAST, ((gw, 2, False), (socket.inet_aton("198.18.1.2"), 2, False)),
              MULTIPATH_OIF, False)]
    for _ in range(50):
        ops = []
        for _ in range(rng.randint(1, 40)):
            op = rng.choice((OP_ADD, OP_REPLACE, OP_DELETE))
            key = (rng.choice((254, 1000)), socket.inet_aton(f"198.19.{rng.randint(0, 255)}.0"),
                   rng.choice((24, 26, 32)), rng.choice((0, 0, 7)))
            form = None if op == OP_DELETE else rng.choice(forms[:3] if rng.random() < .7 else forms)
            ops.append((op, key, form))
        want = bytearray()
        for i, (op, (table, dst, plen, metric), form) in enumerate(ops):
            if form is not None and form[2] == MULTIPATH_OIF:
                flags = (0x401 | 0x200) if op == OP_ADD else (0x401 | 0x100)
                want += _pack_multipath(flags, 100 + i, table if table < 256 else 252, 73,
                                        form[0], table, dst, plen, metric, form[1])
            else:
                want += _pack_single(op, form, table, metric, 73, 100 + i, plen, dst)
        assert pack_route_ops(ops, 73, 100) == want


# ---------------------------------------------------------------- IPv6 (issue 15)

def _v6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


def test_packed_v6_adds_interleaved_with_v4_parse_back_to_the_same_routes():
    ops = [
        (OP_ADD, (254, _v6("2001:2:0:19::40"), 122, 0),
         (RTN_UNICAST, _v6("2001:2:0:1::12"), 2, False)),
        (OP_ADD, (254, socket.inet_aton("198.19.1.0"), 26, 0),
         (RTN_UNICAST, socket.inet_aton("198.18.1.12"), 2, False)),
        (OP_REPLACE, (1000, _v6("2001:2:0:19::80"), 122, 5),
         (RTN_UNICAST, _v6("2001:2:0:7::11"), 9, True)),
        (OP_ADD, (254, _v6("2001:2:0:19::"), 122, 0), (RTN_BLACKHOLE, b"", 0, False)),
        (OP_ADD, (254, _v6("2001:2:0:19::7"), 128, 0), (RTN_UNICAST, b"", 4, False)),
        (OP_ADD, (254, _v6("2001:2:0:30::"), 64, 0),
         (RTN_UNICAST, ((_v6("2001:2:0:1::2"), 2, False), (_v6("2001:2:0:2::2"), 3, True)),
          MULTIPATH_OIF, False)),
    ]
    buf = bytes(pack_route_ops(ops, 73, first_seq=100))
    msgs = list(split(buf))
    assert [m[2] for m in msgs] == list(range(100, 106))
    assert [m[3][16] for m in msgs] == [socket.AF_INET6, socket.AF_INET] + [socket.AF_INET6] * 4
    assert msgs[0][1] & NLM_F_EXCL and msgs[2][1] & NLM_F_REPLACE
    out: dict = {}
    parse_route_dump(buf, len(buf), out, 73, None)
    assert out == {op[1]: op[2] for op in ops}


def test_v6_read_back_folds_the_kernels_metric_1024_and_blackhole_via_lo():
    # What the kernel dumps for routes we added with metric 0 and a blackhole: metric
    # 1024 (IP6_RT_PRIO_USER) and oif 1 (lo). Both are our plain forms.
    def msg(rtype: int, dst: bytes, plen: int, metric: int, oif: int) -> bytes:
        body = (struct.pack("=BBBBBBBBI", socket.AF_INET6, plen, 0, 0, 254, 73, 0, rtype, 0)
                + struct.pack("=HHI", 8, 15, 254) + struct.pack("=HH", 20, 1) + dst
                + struct.pack("=HHI", 8, 6, metric) + struct.pack("=HHI", 8, 4, oif))
        return HDR.pack(16 + len(body), RTM_NEWROUTE, NLM_F_MULTI, 9, 0) + body
    buf = (msg(RTN_BLACKHOLE, _v6("2001:2:0:19::"), 122, 1024, 1)
           + msg(RTN_UNICAST, _v6("2001:2:0:19::7"), 128, 1024, 4)
           + msg(RTN_UNICAST, _v6("2001:2:0:19::8"), 128, 50, 4))
    out: dict = {}
    parse_route_dump(buf, len(buf), out, 73, None, seq=9)
    assert out == {(254, _v6("2001:2:0:19::"), 122, 0): (RTN_BLACKHOLE, b"", 0, False),
                   (254, _v6("2001:2:0:19::7"), 128, 0): (RTN_UNICAST, b"", 4, False),
                   (254, _v6("2001:2:0:19::8"), 128, 50): (RTN_UNICAST, b"", 4, False)}


def test_v6_delete_names_our_protocol_and_the_stored_metric():
    buf = bytes(pack_route_ops([(OP_DELETE, (254, _v6("2001:2:0:19::"), 122, 0), None)], 73,
                               first_seq=1))
    (mtype, _f, _s, msg), = split(buf)
    assert mtype == RTM_DELROUTE and msg[16] == socket.AF_INET6 and msg[16 + 5] == 73
    assert struct.pack("=HHI", 8, 6, 1024) in msg    # RTA_PRIORITY: exactly the 0/1024 route
