"""Pure CNI logic: env/conf parsing and validation, names, results, error objects, records."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from bgpd.cni.main import run
from bgpd.cni.protocol import (
    DEFAULT_MTU,
    DEFAULT_ROUTE_PROTOCOL,
    DEFAULT_STATE_DIR,
    SUPPORTED_VERSIONS,
    Attachment,
    CniError,
    Code,
    NetConf,
    build_result,
    error_object,
    host_veth_name,
    k8s_attrs,
    parse_cni_args,
    parse_conf,
    parse_env,
    pod_handle,
    request_version,
    requested_address,
    requested_addresses,
    result_ips,
    unknown_keys,
    version_answer,
)
from bgpd.cni.records import (
    LockTimeout,
    StateError,
    WorkloadRecord,
    acquire_lock,
    container_lock,
    list_records,
    lock_path,
    read_record,
    release_lock,
    remove_record,
    write_record,
)

BASE = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "noderouter-cni",
        "etcd_endpoints": ["198.18.0.10:2379"], "node_name": "node-a"}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/run/netns/p",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin:/usr/lib/cni"}


def conf(**over) -> str:
    doc = {**BASE, **over}
    return json.dumps({k: v for k, v in doc.items() if v is not None})


def code_of(fn, *a, **kw) -> int:
    with pytest.raises(CniError) as ei:
        fn(*a, **kw)
    return ei.value.code


# ------------------------------------------------------------------ env

def test_env_add_ok():
    e = parse_env({**ENV, "CNI_ARGS": "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;IgnoreUnknown=1"})
    assert (e.command, e.container_id, e.netns, e.ifname) == ("ADD", "abc123", "/run/netns/p",
                                                              "eth0")
    assert e.path == ("/opt/cni/bin", "/usr/lib/cni")
    assert k8s_attrs(e.args) == {"namespace": "ns", "pod": "web"}


@pytest.mark.parametrize("env, code, needle", [
    ({}, Code.INVALID_ENV, "CNI_COMMAND"),
    ({**ENV, "CNI_COMMAND": "FROB"}, Code.INVALID_ENV, "FROB"),
    ({**ENV, "CNI_CONTAINERID": ""}, Code.INVALID_ENV, "CNI_CONTAINERID"),
    ({**ENV, "CNI_CONTAINERID": "-bad"}, Code.INVALID_ENV, "CNI_CONTAINERID"),
    ({**ENV, "CNI_CONTAINERID": "a/b"}, Code.INVALID_ENV, "CNI_CONTAINERID"),
    ({**ENV, "CNI_CONTAINERID": "a" * 238}, Code.INVALID_ENV, "CNI_CONTAINERID"),
    ({**ENV, "CNI_NETNS": ""}, Code.INVALID_ENV, "CNI_NETNS"),
    ({**ENV, "CNI_NETNS": "run/netns/p"}, Code.INVALID_ENV, "absolute"),
    ({**ENV, "CNI_IFNAME": ""}, Code.INVALID_ENV, "CNI_IFNAME"),
    ({**ENV, "CNI_IFNAME": "a" * 16}, Code.INVALID_ENV, "CNI_IFNAME"),
    ({**ENV, "CNI_IFNAME": "eth 0"}, Code.INVALID_ENV, "CNI_IFNAME"),
    ({**ENV, "CNI_IFNAME": ".."}, Code.INVALID_ENV, "CNI_IFNAME"),
    ({**ENV, "CNI_IFNAME": "e:0"}, Code.INVALID_ENV, "CNI_IFNAME"),
    ({**ENV, "CNI_ARGS": "K8S_POD_NAME"}, Code.INVALID_ENV, "KEY=VALUE"),
    ({**ENV, "CNI_COMMAND": "CHECK", "CNI_NETNS": ""}, Code.INVALID_ENV, "CNI_NETNS"),
])
def test_env_errors(env, code, needle):
    with pytest.raises(CniError) as ei:
        parse_env(env)
    assert ei.value.code == code
    assert needle in ei.value.msg + ei.value.details


def test_env_del_without_netns_is_fine():
    e = parse_env({**ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""})
    assert e.netns == ""


def test_env_version_needs_nothing_else():
    assert parse_env({"CNI_COMMAND": "VERSION"}).command == "VERSION"
    assert parse_env({"CNI_COMMAND": "gc"}).command == "GC"


def test_cni_args_from_runtimes_are_accepted():
    kubelet = ("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1;"
               "K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=6f1c-77")
    e = parse_env({**ENV, "CNI_ARGS": kubelet})
    assert k8s_attrs(e.args) == {"namespace": "default", "pod": "web-1"}
    assert e.args["K8S_POD_UID"] == "6f1c-77"
    # The known keys need no IgnoreUnknown; unknown ones are fine with it (any case).
    parse_env({**ENV, "CNI_ARGS": "K8S_POD_NAME=web;K8S_POD_UID=u"})
    parse_env({**ENV, "CNI_ARGS": "IgnoreUnknown=true;FOO=bar"})
    parse_env({**ENV, "CNI_ARGS": "IgnoreUnknown=TRUE;FOO=bar"})


@pytest.mark.parametrize("raw,msg", [
    ("FOO=bar;K8S_POD_NAME=web", "CNI_ARGS has unknown keys: FOO"),
    ("IgnoreUnknown=0;ZZ=1;AA=2", "CNI_ARGS has unknown keys: AA, ZZ"),
    ("IgnoreUnknown=yes", "CNI_ARGS IgnoreUnknown='yes' is not a boolean"),
])
def test_cni_args_unknown_keys_need_ignore_unknown(raw, msg):
    """Like the reference plugins (types.LoadArgs): unknown keys are an error unless
    IgnoreUnknown is true."""
    with pytest.raises(CniError) as ei:
        parse_env({**ENV, "CNI_ARGS": raw})
    assert (ei.value.code, ei.value.msg) == (Code.INVALID_ENV, msg)


def test_cni_args_empty_pairs_and_values_with_equals():
    assert parse_cni_args(";A=1;;B=x=y;") == {"A": "1", "B": "x=y"}


# ------------------------------------------------------------------ conf

def test_conf_defaults():
    c = parse_conf(conf(), default_node="host-1")
    assert c.cni_version == "1.0.0" and c.etcd_endpoints == ("198.18.0.10:2379",)
    assert (c.mtu, c.route_protocol, c.state_dir, c.workload_prefix) == (
        DEFAULT_MTU, DEFAULT_ROUTE_PROTOCOL, DEFAULT_STATE_DIR, "nrw")
    assert c.node_name == "node-a" and c.ipam_prefix is None and c.etcd_timeout == 3.0


def test_conf_node_name_precedence():
    assert parse_conf(conf(node_name=None), default_node="host-1").node_name == "host-1"
    env = {"NODEROUTER_NODE_NAME": "from-env"}
    assert parse_conf(conf(), env=env, default_node="host-1").node_name == "from-env"


def test_conf_empty_node_name_is_an_error_not_the_host_name():
    """Issue 12: absent means the host name; "" used to mean it too, silently."""
    with pytest.raises(CniError) as ei:
        parse_conf(conf(node_name=""), default_node="host-1")
    assert ei.value.code == Code.INVALID_CONFIG and "node_name" in ei.value.msg
    # Even when the environment would name the node: the conf itself is wrong.
    with pytest.raises(CniError):
        parse_conf(conf(node_name=""), env={"NODEROUTER_NODE_NAME": "n"}, default_node="h")


def test_conf_endpoints_forms():
    c = parse_conf(conf(etcd_endpoints="198.18.0.10:2379, https://198.18.0.11:2379"))
    assert c.etcd_endpoints == ("198.18.0.10:2379", "https://198.18.0.11:2379")


@pytest.mark.parametrize("raw, code", [
    ("{not json", Code.DECODE),
    (b"\xff\xfe", Code.DECODE),
    ("[1, 2]", Code.DECODE),
    (conf(cniVersion=None), Code.INVALID_CONFIG),
    (conf(cniVersion="0.2.0"), Code.INCOMPATIBLE_VERSION),
    (conf(cniVersion="2.0.0"), Code.INCOMPATIBLE_VERSION),
    (conf(cniVersion="banana"), Code.INCOMPATIBLE_VERSION),
    (conf(type="bridge"), Code.INVALID_CONFIG),
    (conf(etcd_endpoints=None), Code.INVALID_CONFIG),
    (conf(etcd_endpoints=[]), Code.INVALID_CONFIG),
    (conf(etcd_endpoints=["198.18.0.10"]), Code.INVALID_CONFIG),
    (conf(etcd_endpoints=["198.18.0.10:99999"]), Code.INVALID_CONFIG),
    (conf(etcd_endpoints=5), Code.INVALID_CONFIG),
    (conf(etcd_cert="/c"), Code.INVALID_CONFIG),
    (conf(etcd_cert="/c", etcd_key="/k"), Code.INVALID_CONFIG),
    (conf(etcd_timeout=0), Code.INVALID_CONFIG),
    (conf(mtu=100), Code.INVALID_CONFIG),
    (conf(mtu="1450"), Code.INVALID_CONFIG),
    (conf(mtu=True), Code.INVALID_CONFIG),
    (conf(route_protocol=255), Code.INVALID_CONFIG),
    (conf(workload_prefix="toolong"), Code.INVALID_CONFIG),
    (conf(workload_prefix="a-b"), Code.INVALID_CONFIG),
    (conf(state_dir="relative/dir"), Code.INVALID_CONFIG),
    (conf(node_name="bad name"), Code.INVALID_CONFIG),
    (conf(node_name=""), Code.INVALID_CONFIG),
    (conf(node_name="  "), Code.INVALID_CONFIG),
    (conf(ipam_pool="2001:db8::/64"), Code.INVALID_CONFIG),
    (conf(ipam_pool="nope"), Code.INVALID_CONFIG),
    (conf(log_level="loud"), Code.INVALID_CONFIG),
    (conf(prevResult=[]), Code.INVALID_CONFIG),
    (conf(**{"cni.dev/valid-attachments": {}}), Code.INVALID_CONFIG),
])
def test_conf_errors(raw, code):
    assert code_of(parse_conf, raw) == code


def test_command_version_gates():
    assert code_of(parse_conf, conf(cniVersion="0.3.1"), "CHECK") == Code.INCOMPATIBLE_VERSION
    assert parse_conf(conf(cniVersion="0.4.0"), "CHECK").cni_version == "0.4.0"
    for cmd in ("STATUS", "GC"):
        assert code_of(parse_conf, conf(), cmd) == Code.INCOMPATIBLE_VERSION
        assert parse_conf(conf(cniVersion="1.1.0"), cmd).cni_version == "1.1.0"


def test_valid_attachments_both_spellings():
    doc = {"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]}
    assert parse_conf(conf(cniVersion="1.1.0", **doc), "GC").valid_attachments == (("a", "eth0"),)
    doc = {"cni.dev/attachments": [{"containerID": "b"}]}
    assert parse_conf(conf(cniVersion="1.1.0", **doc), "GC").valid_attachments == (("b", ""),)


def test_unknown_keys_are_reported_not_fatal():
    raw = conf(etcd_endpoint="typo", ipam={"type": "x"})
    assert unknown_keys(raw) == ["etcd_endpoint"]
    parse_conf(raw)


def test_request_version_best_effort():
    assert request_version(conf(cniVersion="0.4.0")) == "0.4.0"
    assert request_version("{broken") == "1.1.0"
    assert request_version(conf(cniVersion="7.0.0")) == "1.1.0"


# ------------------------------------------------------------------ names

def test_host_veth_name():
    name = host_veth_name("nrw", "abc123")
    assert name == "nrw" + hashlib.sha1(b"abc123").hexdigest()[:11]
    assert len(name) == 14 and host_veth_name("nrw", "abc123") == name
    assert len(host_veth_name("abcd", "x" * 237)) == 15
    assert host_veth_name("nrw", "abc124") != name


def test_pod_handle_is_calicos_form():
    assert pod_handle("abc") == "k8s-pod-network.abc"


# ------------------------------------------------------------------ results

ATT = Attachment(ip="198.19.0.5", host_ifname="nrw0123456789a", host_mac="ee:ee:ee:ee:ee:ee",
                 ifname="eth0", pod_mac="02:00:00:00:00:01", netns="/run/netns/p", mtu=1450)


def test_result_1_0_0():
    r = build_result("1.0.0", ATT)
    assert r == {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "nrw0123456789a", "mac": "ee:ee:ee:ee:ee:ee"},
                       {"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/p"}],
        "ips": [{"address": "198.19.0.5/32", "gateway": "169.254.1.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
        "dns": {},
    }


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_result_pre_1_0_has_ip_version(version):
    r = build_result(version, ATT)
    assert r["cniVersion"] == version and r["ips"][0]["version"] == "4"
    assert "mtu" not in r["interfaces"][1]


def test_result_1_1_0_has_interface_mtu():
    assert build_result("1.1.0", ATT)["interfaces"][1]["mtu"] == 1450


def test_result_ips_from_prev_result():
    assert result_ips(build_result("0.4.0", ATT)) == ["198.19.0.5"]
    assert code_of(result_ips, {"ips": [{"address": "nope"}]}) == Code.INVALID_CONFIG
    assert code_of(result_ips, {"ips": "x"}) == Code.INVALID_CONFIG


def test_error_object_shape():
    e = CniError(Code.TRY_AGAIN_LATER, "etcd is unreachable", "etcd at x did not answer")
    assert e.to_dict("0.4.0") == {"cniVersion": "0.4.0", "code": 11,
                                  "msg": "etcd is unreachable",
                                  "details": "etcd at x did not answer"}
    # An unknown request version is answered in ours.
    assert error_object(1, "m", "", "9.9.9")["cniVersion"] == "1.1.0"


def test_version_answer():
    assert version_answer("0.3.1") == {"cniVersion": "0.3.1",
                                       "supportedVersions": list(SUPPORTED_VERSIONS)}
    assert {"0.3.1", "0.4.0", "1.0.0", "1.1.0"} <= set(SUPPORTED_VERSIONS)


def test_run_rejects_bad_requests_before_touching_anything():
    """``run`` fails in parsing for these (no kernel, no etcd is reached)."""
    for env, raw, code in [
        ({**ENV}, b"{", Code.DECODE),
        ({**ENV}, conf(cniVersion="9.9.9").encode(), Code.INCOMPATIBLE_VERSION),
        ({**ENV, "CNI_CONTAINERID": ""}, conf().encode(), Code.INVALID_ENV),
        ({**ENV, "CNI_NETNS": ""}, conf().encode(), Code.INVALID_ENV),
    ]:
        assert code_of(run, env, raw) == code
    assert run({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.0.0"}') == (
        0, version_answer("1.0.0"))


# ------------------------------------------------------------------ records

REC = WorkloadRecord(container_id="abc123", ifname="eth0", netns="/run/netns/p",
                     host_ifname="nrw0123456789a", ip="198.19.0.5",
                     handle="k8s-pod-network.abc123", mtu=1450, route_protocol=73,
                     node="node-a", network="k8s-pod-network",
                     attrs={"namespace": "ns", "pod": "web", "node": "node-a",
                            "ifname": "eth0"})


def test_record_round_trip(tmp_path):
    d = str(tmp_path / "state")
    path = write_record(d, REC)
    assert path == os.path.join(d, "abc123.json") and os.listdir(d) == ["abc123.json"]
    assert read_record(d, "abc123") == REC
    assert json.load(open(path))["version"] == 1
    assert [(c, r) for c, r, _ in list_records(d)] == [("abc123", REC)]
    assert remove_record(d, "abc123") is True and remove_record(d, "abc123") is False
    assert read_record(d, "abc123") is None and list(list_records(d)) == []


def test_record_overwrite_is_atomic_rename(tmp_path):
    d = str(tmp_path)
    write_record(d, REC)
    ino = os.stat(os.path.join(d, "abc123.json")).st_ino
    write_record(d, WorkloadRecord(**{**REC.__dict__, "ip": "198.19.0.6"}))
    assert os.stat(os.path.join(d, "abc123.json")).st_ino != ino   # a new file, renamed in
    assert read_record(d, "abc123").ip == "198.19.0.6"
    assert os.listdir(d) == ["abc123.json"]                          # no temp files left


def test_list_records_skips_temp_and_reports_corrupt(tmp_path):
    d = str(tmp_path)
    write_record(d, REC)
    (tmp_path / ".abc.1234.tmp").write_text("{half")
    (tmp_path / "broken.json").write_text("{half")
    (tmp_path / "other.txt").write_text("x")
    got = {c: (r is not None, bool(e)) for c, r, e in list_records(d)}
    assert got == {"abc123": (True, False), "broken": (False, True)}
    with pytest.raises(StateError):
        read_record(d, "broken")


def test_list_records_missing_dir(tmp_path):
    assert list(list_records(str(tmp_path / "nope"))) == []


def test_record_version_mismatch_is_an_error(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({**json.loads(REC.to_json()), "version": 2}))
    with pytest.raises(StateError):
        read_record(str(tmp_path), "x")


# ------------------------------------------------------------------ container lock (issue 12)

def test_lock_excludes_a_second_caller_until_released(tmp_path):
    d = str(tmp_path / "state")
    fd = acquire_lock(d, "abc123")
    with pytest.raises(LockTimeout) as ei:
        acquire_lock(d, "abc123", timeout=0.05)
    assert "abc123" in str(ei.value)
    other = acquire_lock(d, "other", timeout=0.05)      # other containers are not held up
    release_lock(d, "other", other)
    release_lock(d, "abc123", fd)
    release_lock(d, "abc123", acquire_lock(d, "abc123", timeout=0.05))


def test_lock_file_goes_with_the_record(tmp_path):
    d = str(tmp_path / "state")
    with container_lock(d, "abc123"):
        write_record(d, REC)
    assert os.path.exists(lock_path(d, "abc123"))       # the attachment exists: kept
    assert [c for c, _, _ in list_records(d)] == ["abc123"]   # never seen as a record
    with container_lock(d, "abc123"):
        remove_record(d, "abc123")
    assert os.listdir(os.path.dirname(lock_path(d, "abc123"))) == []
    assert os.listdir(d) == [".locks"]


def test_a_waiter_on_a_removed_lock_file_locks_the_new_one(tmp_path):
    """A holds the lock; B waits on the same file; A removes the file as it releases
    (no record). B must not think it holds the lock on a file nobody else can find:
    it ends up holding the file now at the path, and C is excluded."""
    import threading
    import time

    d = str(tmp_path)
    a = acquire_lock(d, "abc123")
    got: list[int] = []
    b = threading.Thread(target=lambda: got.append(acquire_lock(d, "abc123", timeout=30)))
    b.start()
    # B opens the file, then polls for the lock; wait until it has the file open.
    proc_fds = "/proc/self/fd"
    target = lock_path(d, "abc123")
    for _ in range(2000):
        opened = [f for f in os.listdir(proc_fds)
                  if os.path.realpath(os.path.join(proc_fds, f)) == target]
        if len(opened) >= 2:
            break
        time.sleep(0.005)
    assert len(opened) >= 2, "B never opened the lock file"
    release_lock(d, "abc123", a)                         # unlinks: no record
    b.join(timeout=30)
    assert got, "B did not get the lock"
    held = os.fstat(got[0])
    now = os.stat(target)
    assert (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)
    with pytest.raises(LockTimeout):
        acquire_lock(d, "abc123", timeout=0.05)
    release_lock(d, "abc123", got[0])


def test_lock_in_an_unusable_state_dir_is_a_state_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StateError) as ei:
        acquire_lock(str(blocker / "state"), "abc123")
    assert str(blocker) in str(ei.value)


# ------------------------------------------------------------------ netns ownership (issue 12)

def test_is_our_peer_needs_both_ends_and_the_pod_namespace():
    from bgpd.cni.netns import LinkInfo, is_our_peer

    pod = LinkInfo(index=2, name="eth0", mac="", mtu=1450, up=True, kind="veth",
                   peer_index=7, peer_netnsid=0)
    host = LinkInfo(index=7, name="nrw0123456789a", mac="", mtu=1450, up=True, kind="veth",
                    peer_index=2, peer_netnsid=3)
    assert is_our_peer(pod, host, "nrw", pod_nsid=3)
    assert not is_our_peer(pod, host, "nrw", pod_nsid=4)        # its peer is elsewhere
    assert not is_our_peer(pod, host, "nrw", pod_nsid=-1)       # no id: not a peer of ours
    assert not is_our_peer(pod, host, "xyz", pod_nsid=3)        # not our prefix
    assert not is_our_peer(pod, None, "nrw", pod_nsid=3)
    assert not is_our_peer(pod, LinkInfo(**{**host.__dict__, "peer_index": 9}), "nrw", 3)
    assert not is_our_peer(LinkInfo(**{**pod.__dict__, "kind": "dummy"}), host, "nrw", 3)


# ------------------------------------------------------------------ requested addresses (issue 16)

def _requested(doc_extra: dict, cni_args: str = "") -> str | None:
    conf = parse_conf(json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "noderouter-cni",
                                  "etcd_endpoints": ["198.18.0.10:2379"], "node_name": "a",
                                  **doc_extra}))
    return requested_address(conf.requested_ips, parse_cni_args(cni_args))


@pytest.mark.parametrize("extra,cni_args,want", [
    ({}, "", None),
    ({"runtimeConfig": {"ips": ["198.19.0.5/24"]}}, "", "198.19.0.5"),
    ({"runtimeConfig": {"portMappings": []}}, "", None),
    ({"args": {"cni": {"ips": ["198.19.0.6"]}}}, "", "198.19.0.6"),
    ({"args": {"cni": {"labels": []}}}, "", None),
    ({}, "IgnoreUnknown=1;IP=198.19.0.7", "198.19.0.7"),
    ({"runtimeConfig": {"ips": ["198.19.0.8/16"]}, "args": {"cni": {"ips": ["198.19.0.8"]}}},
     "IP=198.19.0.8", "198.19.0.8"),
])
def test_requested_address_sources(extra, cni_args, want):
    assert _requested(extra, cni_args) == want


@pytest.mark.parametrize("extra,cni_args,code,msg", [
    ({"runtimeConfig": {"ips": "198.19.0.5"}}, "", Code.INVALID_CONFIG,
     "runtimeConfig.ips must be a list of address strings"),
    ({"runtimeConfig": []}, "", Code.INVALID_CONFIG, "runtimeConfig must be an object"),
    ({"args": {"cni": {"ips": ["x"]}}}, "", Code.INVALID_CONFIG,
     "args.cni.ips: 'x' is not an IP address"),
    ({"runtimeConfig": {"ips": ["198.19.0.5"]}}, "IP=198.19.0.6", Code.INVALID_CONFIG,
     "2 addresses requested (198.19.0.5, 198.19.0.6)"),
    ({}, "IP=2001:2::1", Code.INVALID_CONFIG, "requested address 2001:2::1 is IPv6"),
])
def test_requested_address_errors(extra, cni_args, code, msg):
    with pytest.raises(CniError) as ei:
        _requested(extra, cni_args)
    assert (ei.value.code, ei.value.msg) == (code, msg)


# ------------------------------------------------------------------ dual stack (issue 15)

def _conf(**extra) -> NetConf:
    return parse_conf(json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "noderouter-cni",
                                  "etcd_endpoints": ["198.18.0.10:2379"], "node_name": "a",
                                  **extra}))


@pytest.mark.parametrize("ipam,want", [
    (None, (True, False)),
    ({"type": "calico-ipam"}, (True, False)),
    ({"assign_ipv4": "true", "assign_ipv6": "true"}, (True, True)),
    ({"assign_ipv6": True}, (True, True)),
    ({"assign_ipv6": "FALSE"}, (True, False)),
])
def test_assign_families_from_the_ipam_section(ipam, want):
    conf = _conf(**({"ipam": ipam} if ipam is not None else {}))
    assert (conf.assign_ipv4, conf.assign_ipv6) == want


@pytest.mark.parametrize("ipam,msg", [
    ({"assign_ipv6": "yes"}, 'ipam.assign_ipv6 must be "true" or "false"'),
    ({"assign_ipv4": "false", "assign_ipv6": "true"}, 'ipam.assign_ipv4 "false" is not supported'),
    ("calico-ipam", "network config key 'ipam' must be an object"),
])
def test_assign_families_errors(ipam, msg):
    with pytest.raises(CniError) as ei:
        _conf(ipam=ipam)
    assert (ei.value.code, ei.value.msg) == (Code.INVALID_CONFIG, msg)


@pytest.mark.parametrize("ips,cni_args,want", [
    ([], "", {}),
    (["2001:2:0:19::7/64"], "", {6: "2001:2:0:19::7"}),
    (["198.19.0.5/16", "2001:2:0:19::7"], "", {4: "198.19.0.5", 6: "2001:2:0:19::7"}),
    ([], "IP=198.19.0.5,2001:2:0:19::7", {4: "198.19.0.5", 6: "2001:2:0:19::7"}),
])
def test_requested_addresses_by_family(ips, cni_args, want):
    conf = _conf(ipam={"assign_ipv6": "true"}, runtimeConfig={"ips": ips})
    assert requested_addresses(conf.requested_ips, parse_cni_args(cni_args), True, True) == want


def test_requested_addresses_errors():
    with pytest.raises(CniError) as ei:
        requested_addresses(("2001:2:0:19::7", "2001:2:0:19::8"), {}, True, True)
    assert ei.value.msg == "2 IPv6 addresses requested (2001:2:0:19::7, 2001:2:0:19::8)"
    # An IPv4-only conf keeps its old error for an IPv6 request.
    with pytest.raises(CniError) as ei:
        requested_addresses(("2001:2:0:19::7",), {}, True, False)
    assert ei.value.msg == "requested address 2001:2:0:19::7 is IPv6"


@pytest.mark.parametrize("version,shape", [("1.0.0", False), ("0.4.0", True)])
def test_dual_stack_result(version, shape):
    att = Attachment(ip="198.19.0.5", host_ifname="nrw0", host_mac="ee:ee:ee:ee:ee:ee",
                     ifname="eth0", pod_mac="02:00:00:00:00:01", netns="/run/netns/p",
                     ip6="2001:2:0:19::7")
    doc = build_result(version, att)
    v4 = {"address": "198.19.0.5/32", "gateway": "169.254.1.1", "interface": 1}
    v6 = {"address": "2001:2:0:19::7/128", "gateway": "fe80::ecee:eeff:feee:eeee",
          "interface": 1}
    if shape:
        v4, v6 = {"version": "4", **v4}, {"version": "6", **v6}
    assert doc["ips"] == [v4, v6]
    assert doc["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"},
                             {"dst": "::/0", "gw": "fe80::ecee:eeff:feee:eeee"}]
