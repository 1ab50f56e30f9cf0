"""config/: the example passes; each bad config gets its own precise error."""

import ipaddress
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config import ConfigError, load_file, load_text, reference
from config.schema import Secret

EXAMPLE = "config/examples/node.yaml"

BASE = """\
node:
  name: node-a1
underlay:
  interface: eth0
  address: 198.18.1.11
  subnet: 198.18.1.0/24
etcd:
  endpoints: [198.18.0.10:2379]
"""


def problems_of(text: str, environ=None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(text, source="node.yaml", environ=environ or {})
    return [str(p) for p in info.value.problems]


def test_example_config_is_valid():
    cfg = load_file(EXAMPLE, environ={})
    assert cfg.node.name == "node-a1"
    assert cfg.underlay.address == ipaddress.IPv4Address("198.18.1.11")
    assert cfg.pools[0].cidr == ipaddress.IPv4Network("198.19.0.0/16")
    assert cfg.bgp.peers[0].import_allow == (ipaddress.IPv4Network("0.0.0.0/0"),)
    assert cfg.status.socket_mode == 0o660
    assert cfg.router_id == cfg.underlay.address


def test_minimal_config_gets_documented_defaults():
    cfg = load_text(BASE, environ={})
    assert cfg.dataplane.route_protocol == 73
    assert cfg.bgp.mesh is True and cfg.bgp.hold_time == 90
    assert cfg.ipam.max_blocks_per_node == 20
    assert cfg.pools == ()


def test_config_objects_are_frozen():
    cfg = load_text(BASE, environ={})
    with pytest.raises(AttributeError):
        cfg.node.name = "other"  # type: ignore[misc]


def test_password_is_a_secret_that_never_prints():
    cfg = load_file(EXAMPLE, environ={})
    pw = cfg.bgp.peers[0].password
    assert isinstance(pw, Secret) and pw == "change-me"
    assert "change-me" not in repr(cfg)


# (name, extra YAML appended or replacement, expected line, expected fragment)
BAD = [
    ("unknown top-level key", BASE + "colour: blue\n", 9, "colour: unknown key"),
    ("unknown nested key", BASE.replace("  name: node-a1", "  name: node-a1\n  asn: 1"), 3,
     "node.asn: unknown key; known keys: as_number, name, router_id"),
    ("missing underlay", "etcd:\n  endpoints: [a:1]\n", 1, "underlay: is required"),
    ("missing etcd endpoints", BASE.replace("  endpoints: [198.18.0.10:2379]\n", "  timeout: 2\n"),
     7, "etcd.endpoints: is required"),
    ("bad address", BASE.replace("address: 198.18.1.11", "address: 198.18.1.300"), 5,
     "underlay.address: '198.18.1.300' is not an IPv4 address"),
    ("host bits in subnet", BASE.replace("subnet: 198.18.1.0/24", "subnet: 198.18.1.5/24"), 6,
     "has host bits set"),
    ("address outside subnet", BASE.replace("address: 198.18.1.11", "address: 198.18.2.11"), 5,
     "198.18.2.11 is not inside underlay.subnet 198.18.1.0/24"),
    ("AS out of range", BASE.replace("name: node-a1", "name: node-a1\n  as_number: 0"), 3,
     "node.as_number: 0 is wrong; expected a number from 1 to 4294967295"),
    # RFC 6286 2.1: the BGP Identifier is a non-zero 32-bit number (issue 18).
    ("router id zero", BASE.replace("name: node-a1", "name: node-a1\n  router_id: 0.0.0.0"), 3,
     "node.router_id: '0.0.0.0' is wrong; expected a non-zero BGP identifier (RFC 6286)"),
    ("underlay address zero as router id",
     BASE.replace("address: 198.18.1.11", "address: 0.0.0.0").replace(
         "subnet: 198.18.1.0/24", "subnet: 0.0.0.0/24"), 5,
     "underlay.address: 0.0.0.0 would be the BGP router id, which must be non-zero"),
    ("AS is a string", BASE.replace("name: node-a1", "name: node-a1\n  as_number: abc"), 3,
     "node.as_number: expected an integer, got 'abc'"),
    ("bad node name", BASE.replace("name: node-a1", "name: Node_A1"), 2,
     "node.name: 'Node_A1' is wrong; expected a DNS-1123 name"),
    ("bad encap mode", BASE + "pools:\n  - cidr: 198.19.0.0/16\n    ipip_mode: Sometimes\n", 11,
     "pools[0].ipip_mode: 'Sometimes' is not allowed; expected one of 'Never', 'CrossSubnet', 'Always'"),
    ("both encaps", BASE + "pools:\n  - cidr: 198.19.0.0/16\n    ipip_mode: Always\n"
                           "    vxlan_mode: Always\n", 10, "choose one encapsulation per pool"),
    ("overlapping pools", BASE + "pools:\n  - cidr: 198.19.0.0/16\n  - cidr: 198.19.4.0/24\n",
     11, "pools[1].cidr: 198.19.4.0/24 overlaps pools[0] 198.19.0.0/16"),
    ("block bigger than pool", BASE + "pools:\n  - cidr: 198.19.0.0/24\n    block_size: 22\n",
     11, "/22 blocks are larger than the pool 198.19.0.0/24"),
    ("block size out of range", BASE + "pools:\n  - cidr: 198.19.0.0/16\n    block_size: 33\n",
     11, "pools[0].block_size: 33 is wrong; expected a number from 20 to 32"),
    ("pool overlaps underlay", BASE + "pools:\n  - cidr: 198.18.0.0/16\n", 10,
     "198.18.0.0/16 overlaps the underlay 198.18.1.0/24"),
    ("route protocol owned by calico", BASE + "dataplane:\n  route_protocol: 80\n", 10,
     "(80 belongs to calico)"),
    ("hold time 2", BASE + "bgp:\n  hold_time: 2\n", 10,
     "bgp.hold_time: 2 is wrong; expected 0 (no keepalives) or 3..65535 seconds"),
    ("peer missing AS", BASE + "bgp:\n  peers:\n    - address: 198.18.1.1\n", 11,
     "bgp.peers[0].as_number: is required"),
    ("duplicate peer", BASE + "bgp:\n  peers:\n    - {address: 198.18.1.1, as_number: 1}\n"
                              "    - {address: 198.18.1.1, as_number: 2}\n", 12,
     "bgp.peers[1].address: 198.18.1.1 is listed twice"),
    ("peer is self", BASE + "bgp:\n  peers:\n    - {address: 198.18.1.11, as_number: 1}\n", 11,
     "198.18.1.11 is this node's own address"),
    ("cert without key", BASE + "  cert_file: /etc/hostname\n", 9,
     "cert_file and key_file go together"),
    ("missing CA file", BASE + "  ca_file: /nonexistent/ca.pem\n", 9,
     "etcd.ca_file: file '/nonexistent/ca.pem' does not exist"),
    ("interface name too long", BASE.replace("interface: eth0", "interface: averyveryverylongname"),
     4, "an interface name of 1..15 characters"),
    ("bad etcd endpoint", BASE.replace("[198.18.0.10:2379]", "[198.18.0.10]"), 8,
     "etcd.endpoints[0]: '198.18.0.10' is wrong; expected host:port"),
    ("duplicate key", BASE + "node:\n  name: x\n", 9, "duplicate key 'node' (first at line 1)"),
    ("YAML syntax", BASE + "bgp: [unclosed\n", 10, "invalid YAML"),
    ("bool as string", BASE + "bgp:\n  mesh: 'yes please'\n", 10,
     "bgp.mesh: expected true or false, got 'yes please'"),
    ("top level not a mapping", "- a\n- b\n", 1, "the top level must be a mapping"),
    ("peers not a list", BASE + "bgp:\n  peers: 198.18.1.1\n", 10,
     "bgp.peers: expected a list of a mapping"),
    ("missing exabgp", BASE + "bgp:\n  exabgp_path: /nonexistent/bin/exabgp\n", 10,
     "bgp.exabgp_path: '/nonexistent/bin/exabgp' is wrong; expected an existing executable file"),
    ("relative exabgp", BASE + "bgp:\n  exabgp_path: bin/exabgp\n", 10,
     "bgp.exabgp_path: 'bin/exabgp' is wrong; expected the absolute path of an executable"),
]


@pytest.mark.parametrize("name,text,line,fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_config_names_file_line_key_and_expectation(name, text, line, fragment):
    problems = problems_of(text)
    matching = [p for p in problems if fragment in p]
    assert matching, f"{name}: expected {fragment!r} in {problems}"
    assert matching[0].startswith(f"node.yaml:{line}:"), matching[0]


def test_bad_configs_give_distinct_errors():
    messages = {problems_of(text)[0] for _, text, _, _ in BAD}
    assert len(messages) == len(BAD) >= 15


def test_every_problem_is_reported_at_once():
    text = BASE.replace("address: 198.18.1.11", "address: nope") + "bgp:\n  hold_time: 1\n"
    problems = problems_of(text)
    assert any("underlay.address" in p for p in problems)
    assert any("bgp.hold_time" in p for p in problems)


def test_environment_overrides_win_and_are_named_in_errors():
    cfg = load_text(BASE, environ={"NODEROUTER_NODE_NAME": "node-b7",
                                   "NODEROUTER_ETCD_ENDPOINTS": "198.18.0.10:2379,198.18.0.11:2379",
                                   "NODEROUTER_BGP_MESH": "false",
                                   "NODEROUTER_DATAPLANE_RESYNC_INTERVAL": "30"})
    assert cfg.node.name == "node-b7"
    assert cfg.etcd.endpoints == ("198.18.0.10:2379", "198.18.0.11:2379")
    assert cfg.bgp.mesh is False
    assert cfg.dataplane.resync_interval == 30.0
    problems = problems_of(BASE, environ={"NODEROUTER_BGP_HOLD_TIME": "1"})
    assert problems[0].startswith("environment NODEROUTER_BGP_HOLD_TIME: bgp.hold_time: 1 is wrong")


def test_exabgp_path_must_be_an_executable_file(tmp_path):
    cfg = load_text(BASE, environ={})
    assert cfg.bgp.exabgp_path is None  # the speaker picks (PyPy, else CPython, else PATH)
    exe = tmp_path / "exabgp"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o644)
    text = BASE + f"bgp:\n  exabgp_path: {exe}\n"
    problems = problems_of(text)
    assert problems == [f"node.yaml:10: bgp.exabgp_path: {str(exe)!r} is wrong; expected an "
                        "executable file (that file is not executable)"]
    assert problems_of(BASE + f"bgp:\n  exabgp_path: {tmp_path}\n")[0].startswith(
        "node.yaml:10: bgp.exabgp_path:")
    exe.chmod(0o755)
    assert load_text(text, environ={}).bgp.exabgp_path == str(exe)
    env = load_text(BASE, environ={"NODEROUTER_BGP_EXABGP_PATH": str(exe)})
    assert env.bgp.exabgp_path == str(exe)
    assert problems_of(BASE, environ={"NODEROUTER_BGP_EXABGP_PATH": "/nonexistent"})[0] \
        .startswith("environment NODEROUTER_BGP_EXABGP_PATH: bgp.exabgp_path:")
    assert any(r["key"] == "bgp.exabgp_path" and r["default"] == "null" and "PyPy" in r["help"]
               for r in reference())


def test_every_parameter_has_help_text():
    rows = reference()
    assert len(rows) > 50
    assert all(r["help"] for r in rows), [r["key"] for r in rows if not r["help"]]


def test_check_config_cli_exit_codes(tmp_path):
    good = subprocess.run([sys.executable, "-m", "bgpd.cli.main", "check-config", EXAMPLE],
                          capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert "ok" in good.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE + "bgp:\n  hold_time: 2\n")
    res = subprocess.run([sys.executable, "-m", "bgpd.cli.main", "check-config", str(bad)],
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert f"{bad}:10: bgp.hold_time: 2 is wrong" in res.stderr
    zero_id = tmp_path / "zero-id.yaml"  # issue 18: used to print "ok"
    zero_id.write_text(BASE.replace("name: node-a1", "name: node-a1\n  router_id: 0.0.0.0"))
    res = subprocess.run([sys.executable, "-m", "bgpd.cli.main", "check-config", str(zero_id)],
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert f"{zero_id}:3: node.router_id: '0.0.0.0' is wrong; expected a non-zero BGP " \
           "identifier (RFC 6286)" in res.stderr, res.stderr
    # No path: the packaged default /etc/noderouter/node.yaml (issue 16), or
    # $NODEROUTER_CONFIG; a missing file is refused naming it (was a usage error).
    absent = tmp_path / "absent.yaml"
    res = subprocess.run([sys.executable, "-m", "bgpd.cli.main", "check-config"],
                         capture_output=True, text=True,
                         env={**os.environ, "NODEROUTER_CONFIG": str(absent)})
    assert res.returncode == 1
    assert f"{absent}: cannot read config" in res.stderr
    helptext = subprocess.run([sys.executable, "-m", "bgpd.cli.main", "check-config", "--help"],
                              capture_output=True, text=True).stdout
    assert "/etc/noderouter/node.yaml" in helptext


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.text(max_size=12),
                         st.sampled_from(["198.18.1.1", "198.19.0.0/16", "Always", "0.0.0.0/0"]))
yaml_values = st.recursive(yaml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(["node", "name", "underlay", "address", "subnet", "etcd",
                                     "endpoints", "bgp", "peers", "pools", "cidr", "as_number",
                                     "interface", "mesh", "x"]), inner, max_size=5)),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), yaml_values.map(repr)))
def test_fuzzed_input_gives_a_clean_error_or_a_valid_config(text):
    try:
        cfg = load_text(text, environ={})
    except ConfigError as exc:
        assert exc.problems and all(str(p) for p in exc.problems)
    else:
        assert cfg.underlay.address in cfg.underlay.subnet


# ---------------------------------------------------------------- IPv6 (issue 15)

DUAL = BASE.replace("  subnet: 198.18.1.0/24\n", "  subnet: 198.18.1.0/24\n"
                    "  ipv6_address: 2001:2:0:1::11\n  ipv6_subnet: 2001:2:0:1::/64\n")


def test_dual_stack_config_with_ipv6_peers_and_pools():
    cfg = load_text(DUAL + "bgp:\n  peers:\n    - {address: 2001:2:0:1::1, as_number: 65001, "
                           "import_allow: ['::/0']}\n"
                           "    - {address: 198.18.1.1, as_number: 65001}\n"
                           "pools:\n  - cidr: 198.19.0.0/16\n  - cidr: 2001:2:0:19::/64\n"
                           "    vxlan_mode: CrossSubnet\n  - cidr: 2001:2:0:20::/64\n"
                           "    block_size: 116\n",
                    source="node.yaml", environ={})
    assert cfg.underlay.ipv6_address == ipaddress.IPv6Address("2001:2:0:1::11")
    assert cfg.underlay.ipv6_subnet == ipaddress.IPv6Network("2001:2:0:1::/64")
    assert [p.address for p in cfg.bgp.peers] == [ipaddress.ip_address("2001:2:0:1::1"),
                                                   ipaddress.ip_address("198.18.1.1")]
    assert cfg.bgp.peers[0].import_allow == (ipaddress.IPv6Network("::/0"),)
    # The block size default follows the family.
    assert [(str(p.cidr), p.block_size) for p in cfg.pools] == [
        ("198.19.0.0/16", 26), ("2001:2:0:19::/64", 122), ("2001:2:0:20::/64", 116)]
    # An IPv4-only config is what it was.
    v4 = load_text(BASE, environ={})
    assert v4.underlay.ipv6_address is None and v4.underlay.ipv6_subnet is None


def test_ipv6_underlay_from_the_environment():
    cfg = load_text(BASE, environ={"NODEROUTER_UNDERLAY_IPV6_ADDRESS": "2001:2:0:1::12",
                                   "NODEROUTER_UNDERLAY_IPV6_SUBNET": "2001:2:0:1::/64"})
    assert str(cfg.underlay.ipv6_address) == "2001:2:0:1::12"
    problems = problems_of(BASE, environ={"NODEROUTER_UNDERLAY_IPV6_ADDRESS": "2001:2:0:1::zz",
                                          "NODEROUTER_UNDERLAY_IPV6_SUBNET": "2001:2:0:1::/64"})
    assert problems == ["environment NODEROUTER_UNDERLAY_IPV6_ADDRESS: underlay.ipv6_address: "
                        "'2001:2:0:1::zz' is not an IPv6 address such as 2001:2:0:1::11"]


BAD6 = [
    ("v6 address not an address", DUAL.replace("2001:2:0:1::11", "2001:2:0:1::g"), 7,
     "underlay.ipv6_address: '2001:2:0:1::g' is not an IPv6 address such as 2001:2:0:1::11"),
    ("v4 address as v6", DUAL.replace("ipv6_address: 2001:2:0:1::11", "ipv6_address: 198.18.1.11"), 7,
     "underlay.ipv6_address: '198.18.1.11' is not an IPv6 address"),
    ("v6 subnet host bits", DUAL.replace("2001:2:0:1::/64", "2001:2:0:1::1/64"), 8,
     "underlay.ipv6_subnet: '2001:2:0:1::1/64' is not an IPv6 CIDR such as 2001:2:0:1::/64 (no host "
     "bits set) (2001:2:0:1::1/64 has host bits set)"),
    ("v6 address without subnet", DUAL.replace("  ipv6_subnet: 2001:2:0:1::/64\n", ""), 3,
     "underlay.ipv6_subnet: ipv6_address and ipv6_subnet go together"),
    ("v6 address outside subnet", DUAL.replace("2001:2:0:1::11", "2001:2:0:2::11"), 7,
     "underlay.ipv6_address: 2001:2:0:2::11 is not inside underlay.ipv6_subnet 2001:2:0:1::/64"),
    ("v6 link-local underlay", DUAL.replace("2001:2:0:1::11", "fe80::11").replace(
        "2001:2:0:1::/64", "fe80::/64"), 7,
     "underlay.ipv6_address: fe80::11 is not a global unicast address"),
    ("v6 peer without v6 underlay", BASE + "bgp:\n  peers:\n    - {address: 2001:2:0:1::1, "
                                          "as_number: 1}\n", 11,
     "bgp.peers[0].address: IPv6 peer 2001:2:0:1::1 needs underlay.ipv6_address"),
    ("v6 peer is self", DUAL + "bgp:\n  peers:\n    - {address: 2001:2:0:1::11, as_number: 1}\n", 13,
     "bgp.peers[0].address: 2001:2:0:1::11 is this node's own address"),
    ("v6 peer link-local", DUAL + "bgp:\n  peers:\n    - {address: 'fe80::1', as_number: 1}\n", 13,
     "bgp.peers[0].address: fe80::1 is link-local"),
    ("peer address garbage", BASE + "bgp:\n  peers:\n    - {address: 2001:2::x, as_number: 1}\n",
     11, "bgp.peers[0].address: '2001:2::x' is not an IPv4 or IPv6 address"),
    ("v6 import filter host bits", DUAL + "bgp:\n  peers:\n    - {address: 2001:2:0:1::1, "
                                          "as_number: 1, import_allow: ['2001:2::1/48']}\n", 13,
     "bgp.peers[0].import_allow[0]: '2001:2::1/48' is not an IPv4 or IPv6 CIDR"),
    ("v6 block size too big", DUAL + "pools:\n  - cidr: 2001:2:0:19::/64\n    block_size: 112\n", 13,
     "pools[0].block_size: 112 is wrong; expected a number from 116 to 128 (IPv6 blocks)"),
    ("v4 block size on a v6 pool", DUAL + "pools:\n  - cidr: 2001:2:0:19::/64\n    block_size: 26\n",
     13, "pools[0].block_size: 26 is wrong; expected a number from 116 to 128"),
    ("ipip on a v6 pool", DUAL + "pools:\n  - cidr: 2001:2:0:19::/64\n    ipip_mode: CrossSubnet\n",
     13, "pools[0].ipip_mode: CrossSubnet is not possible for the IPv6 pool 2001:2:0:19::/64"),
    ("v6 pools overlap", DUAL + "pools:\n  - cidr: 2001:2:0:19::/64\n  - cidr: 2001:2:0:19::/96\n", 13,
     "pools[1].cidr: 2001:2:0:19::/96 overlaps pools[0] 2001:2:0:19::/64"),
    ("v6 pool overlaps v6 underlay", DUAL + "pools:\n  - cidr: 2001:2:0:1::/112\n", 12,
     "pools[0].cidr: 2001:2:0:1::/112 overlaps the underlay 2001:2:0:1::/64"),
]


@pytest.mark.parametrize("name,text,line,fragment", BAD6, ids=[b[0] for b in BAD6])
def test_bad_ipv6_config_names_file_line_key_and_expectation(name, text, line, fragment):
    problems = problems_of(text)
    matching = [p for p in problems if fragment in p]
    assert matching, f"{name}: expected {fragment!r} in {problems}"
    assert matching[0].startswith(f"node.yaml:{line}:"), matching[0]
