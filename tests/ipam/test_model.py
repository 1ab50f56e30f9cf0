"""Pure block arithmetic, allocation order, selectors and (de)serialisation."""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from ipam.errors import IpamInvalid
from ipam.model import (
    CONFIRMED,
    PENDING,
    AffinityIndex,
    Block,
    HandleRecord,
    Pool,
    cidr_from_key,
    cidr_key,
    claim_order,
    eligible_pools,
    key_cidr,
    overlapping,
    pod_handle,
    request_family,
    reserved_ordinals,
    selector_matches,
    tunnel_handle,
)

net = ipaddress.ip_network
ip = ipaddress.ip_address


def test_pool_defaults_and_block_math():
    p = Pool.new("198.19.0.0/16")
    assert p.block_size == 26
    assert p.n_blocks == 1024 and p.block_len == 64
    assert p.block_at(0) == net("198.19.0.0/26")
    assert p.block_at(5) == net("198.19.1.64/26")
    assert p.block_index(net("198.19.1.64/26")) == 5
    assert p.block_for(ip("198.19.1.100")) == net("198.19.1.64/26")
    assert p.block_at(p.n_blocks - 1) == net("198.19.255.192/26")


def test_pool_v6_default_block_size():
    p = Pool.new("2001:2:0:10::/116")
    assert p.block_size == 122 and p.n_blocks == 64
    assert p.block_for(ip("2001:2:0:10::105")) == net("2001:2:0:10::100/122")


@pytest.mark.parametrize("cidr,size,msg", [
    ("198.19.0.0/16", 15, "block size"),
    ("198.19.0.0/16", 33, "block size"),
    ("198.19.0.1/16", None, "host bits"),
    ("nonsense", None, "not a valid network"),
])
def test_pool_validation_names_the_fix(cidr, size, msg):
    with pytest.raises(IpamInvalid) as e:
        Pool.new(cidr, size)
    assert cidr.split("/")[0] in str(e.value) or msg in str(e.value)


def test_pool_refuses_both_encaps():
    with pytest.raises(IpamInvalid, match="IPIP or VXLAN"):
        Pool.new("198.19.0.0/16", ipip_mode="Always", vxlan_mode="Always")


def test_pool_roundtrip():
    p = Pool.new("198.19.0.0/16", 28, ipip_mode="CrossSubnet", nat_outgoing=True,
                 node_selector='rack == "a"', strict_affinity=True)
    assert Pool.from_dict(p.to_dict()) == p


def test_overlap():
    existing = [net("198.19.0.0/16"), net("2001:2::/64")]
    assert overlapping(net("198.19.4.0/24"), existing) == [net("198.19.0.0/16")]
    assert overlapping(net("198.18.0.0/16"), existing) == []
    assert overlapping(net("2001:2::/48"), existing) == [net("2001:2::/64")]


def test_claim_order_is_seeded_by_name_and_covers_every_block():
    p = Pool.new("198.19.0.0/20")   # 64 blocks
    a, b = claim_order(p, "node-a"), claim_order(p, "node-b")
    assert sorted(a) == list(range(64)) and sorted(b) == list(range(64))
    assert claim_order(p, "node-a") == a      # stable across calls and processes
    assert a[0] != b[0]                       # these two names start apart
    assert all((a[i] + 1) % 64 == a[i + 1] for i in range(63))  # walks forward, wraps
    starts = {claim_order(p, f"n{i}")[0] for i in range(32)}
    assert len(starts) > 16                   # spread out


def test_allocation_order_lowest_free_skipping_reserved_and_cooldown():
    b = Block(net("198.19.0.0/29"), net("198.19.0.0/16"), "n1", CONFIRMED)
    assert b.pick() == 0
    b = b.allocate(0, "h0", "n1", {}, now=10)
    b = b.allocate(1, "h1", "n1", {}, now=10)
    assert b.pick() == 2
    assert b.pick(reserved=frozenset({2, 3})) == 4
    b = b.release(0, now=20, cooldown=30)
    assert b.in_cooldown(0, now=49) and not b.in_cooldown(0, now=50)
    assert b.pick(now=25) == 2                # 0 is cooling
    assert b.pick(now=50) == 0                # cooldown over: lowest again
    assert b.cooling(now=25) == 1
    assert b.free_ordinals(frozenset({7}), now=25) == [2, 3, 4, 5, 6]


def test_sequence_numbers_distinguish_leases_of_one_address():
    b = Block(net("198.19.0.0/30"), net("198.19.0.0/16"), "n1", CONFIRMED)
    b1 = b.allocate(0, "old", "n1", {}, now=1)
    first = b1.allocations[0].seq
    b2 = b1.release(0, now=2, cooldown=0).allocate(0, "new", "n1", {}, now=3)
    assert b2.allocations[0].seq != first and b2.allocations[0].seq > first
    assert b2.seq == 2


def test_full_block_and_double_allocate():
    b = Block(net("198.19.0.0/31"), net("198.19.0.0/16"), "n1", CONFIRMED)
    b = b.allocate(0, "a", "n1", {}, 0).allocate(1, "b", "n1", {}, 0)
    assert b.pick() is None
    with pytest.raises(IpamInvalid):
        b.allocate(1, "c", "n1", {}, 0)


def test_block_roundtrip_and_expired_cooldown_pruned():
    b = Block(net("198.19.0.0/28"), net("198.19.0.0/16"), "n1", PENDING, claimed_at=5)
    b = b.allocate(3, "h", "n1", {"namespace": "ns", "pod": "p"}, now=7).release(3, 8, 10)
    b = b.allocate(4, "h2", "n1", {}, now=9)
    assert Block.from_json(b.to_json()) == b
    b2 = b.allocate(5, "h3", "n1", {}, now=100)   # cooldown of 3 ended at 18: pruned
    assert 3 not in b2.cooldown


def test_reserved_ordinals():
    blk = net("198.19.0.0/26")
    assert reserved_ordinals(blk, [net("198.19.0.0/30"), net("198.19.0.63/32")]) == {0, 1, 2, 3, 63}
    assert reserved_ordinals(blk, [net("198.18.0.0/16"), net("2001:2::/64")]) == frozenset()
    assert reserved_ordinals(blk, [net("198.19.0.0/16")]) == frozenset(range(64))


def test_handles_and_names():
    assert pod_handle("abc123") == "k8s-pod-network.abc123"
    assert tunnel_handle("node-1") == "ipip-tunnel-addr-node-1"
    with pytest.raises(IpamInvalid, match="handle"):
        pod_handle("bad/id")
    with pytest.raises(IpamInvalid, match="node name"):
        tunnel_handle("bad node")
    r = HandleRecord("h").with_ip("198.19.0.1", "198.19.0.0/26", 3, {"pod": "p"})
    assert HandleRecord.from_json(r.to_json()) == r
    assert r.without_ip("198.19.0.1").ips == {}


def test_affinity_index_and_keys():
    a = AffinityIndex("n1").with_block("198.19.0.0/26", PENDING).with_block("198.19.0.0/26", CONFIRMED)
    assert AffinityIndex.from_json(a.to_json()) == a
    assert a.without_block("198.19.0.0/26").blocks == {}
    assert cidr_key(net("198.19.0.0/26")) == "198.19.0.0-26"
    assert key_cidr("2001:2::-122") == net("2001:2::/122")


def test_cidr_from_key_reads_the_cidr_back_from_pool_and_block_keys():
    # The daemon's datastore watch gets only the key of a deleted pool or block.
    assert cidr_from_key("/noderouter/ipam/v1/pools/198.19.0.0-16") == net("198.19.0.0/16")
    assert (cidr_from_key("/noderouter/ipam/v1/blocks/198.19.0.0-16/198.19.7.64-26")
            == net("198.19.7.64/26"))
    assert cidr_from_key("/p/blocks/2001:2::-48/2001:2::40-122") == net("2001:2::40/122")
    # Round trip with the encoder for both families.
    for cidr in ("198.18.0.0/15", "2001:2::/48", "198.19.0.5/32"):
        assert cidr_from_key("/x/pools/" + cidr_key(cidr)) == net(cidr)


@pytest.mark.parametrize("key", ["/p/pools/198.19.0.0", "/p/pools/198.19.0.0-33", "/p/pools/",
                                 "/p/blocks/198.19.0.1-26", "/p/pools/nonsense-8"])
def test_cidr_from_key_names_the_bad_key(key):
    with pytest.raises(IpamInvalid) as e:
        cidr_from_key(key)
    assert repr(key) in str(e.value)


@pytest.mark.parametrize("sel,labels,want", [
    ("all()", {}, True),
    ("", {}, True),
    ('rack == "a"', {"rack": "a"}, True),
    ('rack == "a"', {"rack": "b"}, False),
    ('rack != "a"', {}, True),
    ("has(rack)", {}, False),
    ("!has(edge)", {"rack": "a"}, True),
    ('has(rack) && name == "n1"', {"rack": "x"}, True),
    ('has(rack) && name == "n2"', {"rack": "x"}, False),
])
def test_selector(sel, labels, want):
    assert selector_matches(sel, "n1", labels) is want


def test_selector_parse_error_names_syntax():
    with pytest.raises(IpamInvalid, match="all\\(\\)"):
        selector_matches("rack ~ a", "n1")


def test_block_json_fast_path_equals_plain_encoding():
    import json

    b = Block(net("198.19.0.0/28"), net("198.19.0.0/16"), "n1", CONFIRMED, claimed_at=1.5)
    b = b.allocate(3, "h", "n1", {"pod": 'x"y'}, 2).allocate(1, "h2", "n1", {}, 3).release(3, 4, 10)
    assert json.loads(b.to_json()) == b.to_dict()
    assert Block.from_json(b.to_json()) == b
    empty = Block(net("198.19.0.0/28"), net("198.19.0.0/16"), None)
    assert json.loads(empty.to_json()) == empty.to_dict()


def test_eligible_pools_gives_each_excluded_pool_its_reason():
    pools = [(Pool.new("198.19.0.0/16"), 7),
             (Pool.new("198.18.0.0/24", disabled=True), 8),
             (Pool.new("198.18.1.0/24", node_selector='rack == "b"'), 9),
             (Pool.new("2001:2::/48"), 10)]
    ok, why = eligible_pools(pools, None, "n1", {"rack": "a"})
    assert [(str(p.cidr), mod) for p, mod in ok] == [("198.19.0.0/16", 7), ("2001:2::/48", 10)]
    assert why == ["pool 198.18.0.0/24: disabled",
                   "pool 198.18.1.0/24: node selector 'rack == \"b\"' excludes node n1"]
    ok, why = eligible_pools(pools, net("198.18.0.0/24"), "n1", {})
    assert ok == [] and why == ["pool 198.18.0.0/24: disabled"]
    ok, why = eligible_pools(pools, net("198.18.9.0/24"), "n1", {})
    assert ok == [] and why == ["pool 198.18.9.0/24: does not exist"]



# ---------------------------------------------------------------- IPv6 (issue 15)

@pytest.mark.parametrize("size", [115, 112, 64, 48])
def test_v6_block_size_below_116_is_refused_naming_the_range(size):
    with pytest.raises(IpamInvalid) as e:
        Pool.new("2001:2::/48", size)
    assert f"IPv6 block size /{size}" in str(e.value) and "/116 and /128" in str(e.value)
    assert "2001:2::/48" in str(e.value)


@pytest.mark.parametrize("size", [116, 122, 128])
def test_v6_block_sizes_116_to_128_are_accepted(size):
    p = Pool.new("2001:2::/48", size)
    assert p.block_size == size and p.block_len == 1 << (128 - size)


def test_v6_pool_defaults_to_122_blocks_of_64():
    p = Pool.new("2001:2:0:1::/64")
    assert p.block_size == 122 and p.block_len == 64
    assert p.block_at(1) == net("2001:2:0:1::40/122")
    assert p.block_for(ip("2001:2:0:1::7f")) == net("2001:2:0:1::40/122")


@pytest.mark.parametrize("mode", ["Always", "CrossSubnet"])
def test_ipip_is_refused_on_v6_pools_vxlan_is_not(mode):
    with pytest.raises(IpamInvalid, match="not possible for an IPv6 pool") as e:
        Pool.new("2001:2::/48", ipip_mode=mode)
    assert "vxlan_mode" in str(e.value)
    assert Pool.new("2001:2::/48", vxlan_mode=mode).vxlan_mode == mode
    assert Pool.new("198.19.0.0/16", ipip_mode=mode).ipip_mode == mode    # IPv4 unchanged


def test_claim_order_of_a_huge_v6_pool_is_lazy_and_spread():
    # 2001:2::/48 in /122 blocks: 2**74 of them; a list would never fit in memory.
    p = Pool.new("2001:2::/48")
    assert p.n_blocks == 1 << 74
    walk = claim_order(p, "node-a")
    first = list(itertools.islice(iter(walk), 3))
    assert first == [walk[0], (walk[0] + 1) % (1 << 74), (walk[0] + 2) % (1 << 74)]
    starts = {claim_order(p, f"n{i}")[0] for i in range(32)}
    assert len(starts) == 32 and max(starts) > 1 << 64    # the seed reaches the whole pool
    assert p.block_at(walk[0]).subnet_of(p.cidr)


def test_claim_order_of_v4_pools_keeps_its_start():
    # The seed width grew for huge IPv6 pools only; an IPv4 node keeps its first block.
    import hashlib
    p = Pool.new("198.19.0.0/16")
    seed = int.from_bytes(hashlib.sha256(b"node-a").digest()[:8], "big")
    assert claim_order(p, "node-a")[0] == seed % 1024


def test_request_family_defaults_to_v4_and_follows_the_pool():
    assert request_family(None, None) == 4
    assert request_family(None, 6) == 6
    assert request_family(net("2001:2::/48"), None) == 6
    with pytest.raises(IpamInvalid, match="family 4"):
        request_family(net("2001:2::/48"), 4)
    with pytest.raises(IpamInvalid, match="must be 4 or 6"):
        request_family(None, 5)


def test_eligible_pools_by_family():
    pools = [(Pool.new("198.19.0.0/16"), 1), (Pool.new("2001:2::/48"), 2)]
    v6, _ = eligible_pools(pools, None, "n1", {}, 6)
    v4, _ = eligible_pools(pools, None, "n1", {}, 4)
    assert [str(p.cidr) for p, _ in v6] == ["2001:2::/48"]
    assert [str(p.cidr) for p, _ in v4] == ["198.19.0.0/16"]
