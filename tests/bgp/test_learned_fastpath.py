"""The 100k-routes path's bulk forms agree with the per-route reference forms.

- ``ImportPolicy.split_prefixes`` (inlined, one call per UPDATE) == ``check_prefix`` per prefix;
- ``Rib.add`` settles new prefixes without re-ranking and interns routes;
- ``LearnedRoutes`` (classification per next-hop group, bulk ``update_many``) installs
  exactly what ``felix_like.classify.classify`` says per prefix, incrementally and after a
  context change;
- ``RouteTable``'s bulk methods == the per-route ones; ``desired_targets`` round-trips.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from bgpd.bgp.events import Attributes
from bgpd.bgp.exabgp_config import PrefixFilter
from bgpd.bgp.import_policy import ImportPolicy
from bgpd.bgp.rib import Rib
from bgpd.node.registry import NodeInfo
from felix_like.classify import classify
from felix_like.learned_routes import LearnedRoutes
from felix_like.routetable import NextHop, RouteTable, Target
from felix_like.updates import LearnedContext, RemoteBlock
from felix_like.updates import prefix_range as _range

A = Attributes(as_path=(65001,), as_path_len=1)

# -- import policy ------------------------------------------------------------------
POLICY = ImportPolicy(64512, ("198.19.0.0/16", "198.18.64.0/18"),
                      frozenset({"198.19.1.0/26", "198.19.7.128/25"}),
                      frozenset({"198.18.1.10"}),
                      {"198.18.1.1": (PrefixFilter("0.0.0.0/0"),
                                      PrefixFilter.parse("198.18.200.0/24 le 28"))})

octet = st.integers(0, 255)
prefix_text = st.one_of(
    st.builds(lambda a, b, c, d, n: f"{a}.{b}.{c}.{d}/{n}", st.sampled_from([198, 10, 0]),
              st.sampled_from([18, 19]), octet, octet, st.integers(0, 33)),
    st.builds(lambda c, d: f"198.19.{c}.{d}", octet, octet),          # no length: a /32
    st.sampled_from(["", "/", "198.19.1/26", "198.19.1.0/x", "300.1.1.1/32", "a.b.c.d/8",
                     "198.19.1.0/-1", "198.19.1.0/26/1", " 198.19.1.0/26", "0.0.0.0/0"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(prefix_text, max_size=40), st.sampled_from(["198.18.1.1", "198.18.1.2"]))
def test_split_prefixes_agrees_with_check_prefix(prefixes, peer):
    ok, bad = POLICY.split_prefixes(peer, prefixes)
    want_ok = [p for p in prefixes if POLICY.check_prefix(peer, p) is None]
    want_bad = [(p, POLICY.check_prefix(peer, p)) for p in prefixes
                if POLICY.check_prefix(peer, p) is not None]
    assert (ok, bad) == (want_ok, want_bad)


# -- RIB ------------------------------------------------------------------------------
def test_rib_new_prefixes_share_one_interned_route():
    rib = Rib()
    rib.add("p1", ["198.19.2.0/26", "198.19.3.0/26"], "198.18.1.1", A)
    rib.add("p1", ["198.19.4.0/26"], "198.18.1.1", A)
    ch = rib.take_changes()
    assert ch["198.19.2.0/26"] is ch["198.19.3.0/26"] is ch["198.19.4.0/26"]
    assert ch["198.19.2.0/26"].nexthops == ("198.18.1.1",)


def test_rib_prefix_removed_and_added_back_before_changes_are_taken():
    rib = Rib()
    rib.add("p1", ["198.19.2.0/26"], "198.18.1.1", A)
    rib.take_changes()
    rib.remove("p1", ["198.19.2.0/26"])
    rib.add("p2", ["198.19.2.0/26"], "198.18.1.2", A)   # a different peer takes over
    assert rib.take_changes()["198.19.2.0/26"].peers == ("p2",)
    assert rib.routes()["198.19.2.0/26"].nexthops == ("198.18.1.2",)


# -- learned routes ---------------------------------------------------------------------
NODE_A2 = NodeInfo("node-a2", "198.18.1.12", "198.18.1.0/24", 64601)
NODE_B1 = NodeInfo("node-b1", "198.18.2.11", "198.18.2.0/24", 64602)
CTX = LearnedContext(
    own_name="node-a1",
    own_ranges=(_range("198.19.1.0/26"),),
    pool_ranges=(_range("198.19.0.0/16"),),
    node_names_by_addr={n.address: n.name for n in (NODE_A2, NODE_B1)},
    subnet_range=_range("198.18.1.0/24"),
    uplink="eth0")
# Pool blocks, prefixes outside the pools (a ToR's default, a /32 elsewhere), own block.
PREFIXES = ["198.19.2.0/26", "198.19.3.0/26", "198.19.4.7/32", "198.19.9.0/24",
            "0.0.0.0/0", "198.18.70.0/24", "198.18.200.5/32"]
OWN = "198.19.1.8/32"
HOPS = [(), ("198.18.1.1",), ("198.18.1.12",), ("198.18.2.11",), ("198.18.1.1", "198.18.1.2"),
        ("198.18.1.2", "198.18.1.12"), ("198.18.3.1", "198.18.2.11"), ("198.18.3.1",)]


class FakeKernel:
    def dump_routes(self, protocol, tables):
        return {}

    def link_indexes(self):
        return {"eth0": 2}

    def execute(self, ops, protocol):
        return [0] * len(ops)


def _table() -> RouteTable:
    return RouteTable(driver=FakeKernel(), protocol=73, class_order=("bgp",))


class Blocks:
    def __init__(self) -> None:
        self.blocks: dict[str, RemoteBlock] = {}

    def update(self, b: RemoteBlock) -> None:
        self.blocks[b.cidr] = b

    def remove(self, cidr: str) -> None:
        self.blocks.pop(cidr, None)


def _expected(best: dict[str, tuple[str, ...]], ctx: LearnedContext):
    plain, blocks, pending = {}, {}, {}
    for p, hops in best.items():
        c = classify(p, hops, ctx)
        if isinstance(c, Target):
            plain[p] = c
        elif isinstance(c, RemoteBlock):
            blocks[p] = c
        else:
            pending[p] = c
    return plain, blocks, pending


def _canon(t: Target) -> tuple:
    hops = tuple(sorted((h.gateway, h.ifname, h.onlink) for h in t.nexthops))
    if len(hops) == 1:  # one hop is the plain form (routetable collapses it)
        return (t.dst, hops[0][0], hops[0][1], hops[0][2], ())
    return (t.dst, t.gateway, t.ifname, t.onlink, hops)


def _check(learned: LearnedRoutes, table: RouteTable, blocks: Blocks, best, ctx) -> None:
    plain, remote, pending = _expected(best, ctx)
    got = {t.dst: _canon(t) for t in table.desired_targets("bgp")}
    assert got == {p: _canon(t) for p, t in plain.items()}
    assert blocks.blocks == remote
    assert dict(learned.pending()) == pending
    assert {b.cidr for b in learned.remote_blocks()} == set(remote)
    assert len(learned) == len(plain) + len(remote) + len(pending)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(PREFIXES),
                          st.one_of(st.none(), st.sampled_from(HOPS))), max_size=30),
       st.integers(1, 6))
def test_learned_routes_install_what_classify_says(steps, batch):
    rib = Rib()
    peers = {}
    table, blocks = _table(), Blocks()
    learned = LearnedRoutes(table, on_block_update=blocks.update, on_block_remove=blocks.remove)
    learned.set_context(CTX, {})
    best: dict[str, tuple[str, ...]] = {}
    for i in range(0, len(steps), batch):
        for prefix, hops in steps[i:i + batch]:
            # Model the RIB input: one peer per next hop; replace the prefix's paths.
            for peer in list(peers.get(prefix, ())):
                rib.remove(peer, [prefix])
            peers[prefix] = set(hops or ())
            for nh in hops or ():
                rib.add(nh, [prefix], nh, A)
            if hops:
                best[prefix] = tuple(sorted(set(hops)))
            else:
                best.pop(prefix, None)
        learned.apply(rib.take_changes())
        _check(learned, table, blocks, best, CTX)
    # A context change (we now own 198.19.2.0/26, node-a2 left the registry): everything
    # is classified again, our own block refused even though the RIB holds it.
    ctx2 = LearnedContext(CTX.own_name, CTX.own_ranges + (_range("198.19.2.0/26"),),
                          CTX.pool_ranges, {NODE_B1.address: NODE_B1}, CTX.subnet_range,
                          CTX.uplink)
    learned.set_context(ctx2, rib.routes())
    _check(learned, table, blocks, best, ctx2)


def test_set_context_refuses_a_route_inside_our_own_block():
    rib = Rib()
    rib.add("198.18.1.1", [OWN, "198.19.2.0/26"], "198.18.1.1", A)
    table, blocks = _table(), Blocks()
    learned = LearnedRoutes(table, on_block_update=blocks.update, on_block_remove=blocks.remove)
    learned.set_context(CTX, rib.routes())
    assert [t.dst for t in table.desired_targets("bgp")] == ["198.19.2.0/26"]
    assert learned.pending() == [(OWN, "inside one of our own blocks")]


def test_100k_prefixes_of_one_tor_are_one_group_with_one_shared_want():
    rib = Rib()
    prefixes = [f"198.19.{i // 256}.{i % 256}/32" for i in range(20000)]
    rib.add("198.18.1.1", prefixes, "198.18.1.1", A)
    table = _table()
    learned = LearnedRoutes(table)
    learned.set_context(CTX, {})
    assert learned.apply(rib.take_changes()) == 20000
    wants = {id(w) for w in table._desired["bgp"].values()}  # noqa: SLF001 - the point
    assert len(wants) == 1
    res = table.apply()
    assert res.added == 20000 and not res.failed


# -- route table bulk forms -------------------------------------------------------------
TARGETS = [Target("198.19.5.0/26", gateway="198.18.1.1", ifname="eth0"),
           Target("198.19.6.0/26", gateway="198.18.3.1", onlink=True, ifname="eth0"),
           Target("198.19.7.0/26", type="blackhole"),
           Target("198.19.8.0/26", ifname="eth0", metric=5),
           Target("198.19.9.0/26", nexthops=(NextHop("198.18.1.2", "eth0"),
                                             NextHop("198.18.1.1", "eth0")))]


def test_desired_targets_round_trip():
    t = _table()
    t.set_routes("bgp", TARGETS)
    got = {x.dst: _canon(x) + (x.type, x.metric, x.table) for x in t.desired_targets("bgp")}
    assert got == {x.dst: _canon(x) + (x.type, x.metric, x.table) for x in TARGETS}
    assert t.desired_count("bgp") == len(TARGETS)


def test_bulk_methods_equal_per_route_methods():
    rng = random.Random(7)
    dsts = [f"198.19.{i}.0/24" for i in range(50)]
    a, b = _table(), _table()
    a.mark_in_sync()
    b.mark_in_sync()
    for _ in range(20):
        template = rng.choice(TARGETS)
        chosen = rng.sample(dsts, 10)
        a.update_many("bgp", chosen, template)
        for d in chosen:
            b.route_update("bgp", Target(d, template.gateway, template.ifname, template.type,
                                         template.onlink, template.table, template.metric,
                                         template.nexthops))
        gone = rng.sample(dsts, 5)
        a.remove_many("bgp", gone)
        for d in gone:
            b.route_remove("bgp", d)
        assert a._desired == b._desired  # noqa: SLF001
        assert a.apply().summary() == b.apply().summary()
    grouped = _table()
    grouped.set_routes_grouped("bgp", [([d], t) for d, t in
                                       ((x.dst, x) for x in TARGETS)])
    plain = _table()
    plain.set_routes("bgp", TARGETS)
    assert grouped._desired == plain._desired  # noqa: SLF001


# -- RIB against a reference model --------------------------------------------------------
LONG = Attributes(as_path=(65001, 65002), as_path_len=2)
PEERS = ["p1", "p2", "p3"]
RIB_PREFIXES = ["198.19.2.0/26", "198.19.3.0/26", "198.19.4.0/26", "198.19.5.0/32"]
rib_op = st.one_of(
    st.tuples(st.just("add"), st.sampled_from(PEERS),
              st.lists(st.sampled_from(RIB_PREFIXES), min_size=1, max_size=4),
              st.sampled_from(["198.18.1.1", "198.18.1.2", "198.18.1.3"]),
              st.sampled_from([A, LONG])),
    st.tuples(st.just("remove"), st.sampled_from(PEERS),
              st.lists(st.sampled_from(RIB_PREFIXES), max_size=4)),
    st.tuples(st.just("drop"), st.sampled_from(PEERS)),
    st.tuples(st.just("stale"), st.sampled_from(PEERS)),
    st.tuples(st.just("sweep"), st.sampled_from(PEERS)),
    st.tuples(st.just("take"),),
)


def _model_best(paths: dict, stale: dict, prefix: str):
    if not paths:
        return None
    rank = {peer: (-a.local_pref, a.as_path_len, a.origin, a.med) for peer, (_, a) in paths.items()}
    top = min(rank.values())
    chosen = [peer for peer in paths if rank[peer] == top]
    fresh = [peer for peer in chosen if prefix not in stale.get(peer, set())]
    if len(chosen) > 1 and fresh:
        chosen = fresh
    return (tuple(sorted({paths[p][0] for p in chosen})), tuple(sorted(chosen)))


@settings(max_examples=300, deadline=None)
@given(st.lists(rib_op, max_size=40))
def test_rib_matches_a_reference_model(ops):
    rib = Rib()
    model: dict[str, dict] = {}
    stale: dict[str, set] = {}
    seen: dict[str, tuple] = {}  # what a consumer of take_changes() holds
    for op in ops:
        kind = op[0]
        if kind == "add":
            _, peer, prefixes, nh, attrs = op
            rib.add(peer, prefixes, nh, attrs)
            for p in prefixes:
                model.setdefault(p, {})[peer] = (nh, attrs)
                stale.get(peer, set()).discard(p)
        elif kind in ("remove", "drop", "sweep"):
            peer = op[1]
            if kind == "remove":
                prefixes = op[2]
            elif kind == "drop":
                prefixes = [p for p in model if peer in model[p]]
            else:
                prefixes = list(stale.get(peer, ()))
            held = sum(1 for p in set(prefixes) if peer in model.get(p, {}))
            got = (rib.remove(peer, prefixes) if kind == "remove" else
                   rib.drop_peer(peer) if kind == "drop" else rib.sweep_stale(peer))
            assert got == held
            for p in prefixes:
                model.get(p, {}).pop(peer, None)
                if p in model and not model[p]:
                    del model[p]
            stale.get(peer, set()).difference_update(prefixes)
            if kind in ("drop", "sweep"):
                stale.pop(peer, None)
        elif kind == "stale":
            stale[op[1]] = {p for p in model if op[1] in model[p]}
            rib.mark_stale(op[1])
        else:
            for p, r in rib.take_changes().items():
                if r is None:
                    seen.pop(p, None)
                else:
                    seen[p] = (r.nexthops, r.peers)
        want = {p: _model_best(paths, stale, p) for p, paths in model.items()}
        assert {p: (r.nexthops, r.peers) for p, r in rib.routes().items()} == want
        for p in RIB_PREFIXES:
            assert rib.paths(p) == model.get(p, {})
        for peer in PEERS:
            assert rib.count(peer) == sum(1 for paths in model.values() if peer in paths)
            assert rib.prefixes_of(peer) == {p for p, paths in model.items() if peer in paths}
    for p, r in rib.take_changes().items():
        if r is None:
            seen.pop(p, None)
        else:
            seen[p] = (r.nexthops, r.peers)
    assert seen == {p: (r.nexthops, r.peers) for p, r in rib.routes().items()}


# -- the policy's whole-UPDATE check for host routes ----------------------------------------
host_value = st.one_of(
    st.integers(0xC6130000, 0xC613FFFF),          # 198.19.0.0/16: a pool, with our blocks
    st.integers(0xC61300F0, 0xC613014F),          # around our block 198.19.1.0/26
    st.integers(0xC6130770, 0xC6130810),          # around our block 198.19.7.128/25
    st.integers(0xC6124000, 0xC6127FFF),          # 198.18.64.0/18: the other pool
    st.integers(0xC6120000, 0xC612FFFF),          # 198.18.0.0/16: mostly outside
    st.integers(0, 0xFFFFFFFF))


@settings(max_examples=400, deadline=None)
@given(st.lists(host_value, min_size=1, max_size=30), st.sampled_from(["198.18.1.1", "198.18.1.2"]))
def test_whole_update_check_of_host_routes_agrees_with_per_prefix(values, peer):
    import socket as _s

    prefixes = [f"{_s.inet_ntoa(v.to_bytes(4, 'big'))}/32" for v in values]
    assert POLICY.split_prefixes(peer, prefixes, values) == POLICY.split_prefixes(peer, prefixes)


def test_wire_decoder_gives_host_values_only_for_all_host_route_updates():
    import socket as _s
    import struct as _st

    from bgpd.bgp.wire import decode_update

    def body(nlri: bytes) -> bytes:
        attrs = (b"\x40\x01\x01\x00"                          # ORIGIN igp
                 + b"\x40\x02\x06\x02\x01" + _st.pack(">I", 65001)  # AS_PATH
                 + b"\x40\x03\x04" + _s.inet_aton("198.18.9.1"))  # NEXT_HOP
        return _st.pack(">H", 0) + _st.pack(">H", len(attrs)) + attrs + nlri

    hosts = [0xC6130001, 0xC6130102]
    ev = decode_update("198.18.9.1", body(b"".join(b"\x20" + _st.pack(">I", v) for v in hosts)))
    assert ev.host_values == tuple(hosts)
    assert ev.announced == (("198.18.9.1", ("198.19.0.1/32", "198.19.1.2/32")),)
    mixed = decode_update("198.18.9.1", body(b"\x20" + _st.pack(">I", hosts[0])
                                             + b"\x1a" + _s.inet_aton("198.19.2.0")))
    assert mixed.host_values is None and len(mixed.announced[0][1]) == 2


def test_whole_update_check_falls_back_when_the_pools_index_would_be_too_large():
    wide = ImportPolicy(64512, ("198.0.0.0/8", "198.19.255.252/30"))
    assert wide._host_index is None  # noqa: SLF001 - 2**22 keys: not built
    values = [0xC6130001, 0xC613FFFD, 0x0A000001]
    prefixes = ["198.19.0.1/32", "198.19.255.253/32", "10.0.0.1/32"]
    assert wide.split_prefixes("p", prefixes, values) == (
        prefixes[:2], [("10.0.0.1/32", "outside-pools")])
