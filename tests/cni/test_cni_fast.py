"""The plugin's fast path (``bgpd.cni.fast`` → ``bgpd.cni.server``) and its fallback.

The server is the daemon's own ``CniServer`` (``python -m bgpd.cni.server``), run
inside the throwaway node namespace, so the commands it runs touch only that
namespace and the pod namespaces. Which path served a call is read from the logs:
the server logs to its own stderr (captured to a file), the direct path to the
conf's ``log_file``.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys

import pytest

from bgpd.cni.protocol import host_veth_name

from .conftest import REPO, CniBench, Server
from .test_cni_integration import assert_nothing_left, assert_valid_result, links

pytestmark = pytest.mark.integration


def plugin_events(path: str, event: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [d for d in map(json.loads, filter(str.strip, f)) if d.get("event") == event]


def test_fast_path_serves_add_check_del(cni: CniBench, server: Server, tmp_path):
    plugin_log = str(tmp_path / "plugin.log")
    conf = cni.conf(daemon_socket=server.path, log_file=plugin_log)
    ns = cni.pod()
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
    res = cni.run("ADD", "c1", ns, conf=conf)
    assert res.code == 0, res.stdout + res.stderr
    ip = assert_valid_result(res.doc, "1.0.0", ns)
    assert [e["container"] for e in server.events("cni_added")] == ["c1"]
    assert plugin_events(plugin_log, "cni_added") == []        # the plugin did not do it
    assert host_veth_name("nrw", "c1") in links(cni)
    assert cni.ipam("handles") == {"k8s-pod-network.c1": [ip]}

    chk = cni.run("CHECK", "c1", ns, conf=conf)
    assert chk.code == 0 and chk.stdout == "", chk.stdout + chk.stderr
    again = cni.run("ADD", "c1", ns, conf=conf)                # idempotent, same answer
    assert again.code == 0 and again.doc == res.doc

    dele = cni.run("DEL", "c1", ns, conf=conf)
    assert dele.code == 0 and dele.stdout == "", dele.stdout + dele.stderr
    assert [e["container"] for e in server.events("cni_deleted")] == ["c1"]
    assert_nothing_left(cni)


def test_fast_path_errors_match_the_direct_path(cni: CniBench, server: Server, tmp_path):
    """Same code, same error objects: a bad request answered by the daemon and by
    the plugin itself prints the same document with the same exit code."""
    missing = str(tmp_path / "no-daemon.sock")
    ns = cni.pod()
    cases = [
        dict(command="ADD", cid="c1", netns=None),                   # code 4
        dict(command="ADD", cid="c1", netns="/nonexistent/netns"),   # code 3
        dict(command="ADD", cid="bad/id", netns=ns),                 # code 4
        dict(command="CHECK", cid="c9", netns=ns),                   # code 3 (no record)
        dict(command="VERSION", cid=None, netns=None),
    ]
    for case in cases:
        fast = cni.run(case["command"], case["cid"], case["netns"],
                       conf=cni.conf(daemon_socket=server.path))
        direct = cni.run(case["command"], case["cid"], case["netns"],
                         conf=cni.conf(daemon_socket=missing))
        assert (fast.code, fast.doc) == (direct.code, direct.doc), case
    bad_mtu = cni.run("ADD", "c1", ns, conf=cni.conf(daemon_socket=server.path, mtu=1))
    assert bad_mtu.code == 1 and bad_mtu.doc["code"] == 7
    assert len(server.events("cni_error")) == 5       # 4 cases (VERSION is no error) + MTU
    assert_nothing_left(cni)


def test_parallel_adds_through_the_daemon(cni: CniBench, server: Server):
    from concurrent.futures import ThreadPoolExecutor

    conf = cni.conf(daemon_socket=server.path)
    pods = [(f"p{i}", cni.pod(f"q{i}")) for i in range(8)]
    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(lambda p: cni.run("ADD", p[0], p[1], conf=conf), pods))
    assert all(r.code == 0 for r in results), [r.stdout + r.stderr for r in results]
    ips = [r.doc["ips"][0]["address"] for r in results]
    assert len(set(ips)) == len(ips)
    with ThreadPoolExecutor(8) as ex:
        dels = list(ex.map(lambda p: cni.run("DEL", p[0], p[1], conf=conf), pods))
    assert all(r.code == 0 for r in dels), [r.stdout + r.stderr for r in dels]
    assert_nothing_left(cni, "p0")


@pytest.mark.parametrize("how", ["missing", "refused", "disabled"])
def test_fallback_when_no_daemon(cni: CniBench, tmp_path, how: str):
    plugin_log = str(tmp_path / "plugin.log")
    path = str(tmp_path / "cni.sock")
    holder = None
    if how == "refused":
        # Bound but never listening: connect() is refused (a daemon that died and
        # left its socket file behind).
        holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        holder.bind(path)
    try:
        conf = cni.conf(log_file=plugin_log,
                        daemon_socket=None if how == "disabled" else path)
        ns = cni.pod()
        res = cni.run("ADD", "c1", ns, conf=conf)
        assert res.code == 0, res.stdout + res.stderr
        assert_valid_result(res.doc, "1.0.0", ns)
        assert [e["container"] for e in plugin_events(plugin_log, "cni_added")] == ["c1"]
        assert cni.run("DEL", "c1", ns, conf=conf).code == 0
        assert_nothing_left(cni)
    finally:
        if holder is not None:
            holder.close()


def test_daemon_gone_mid_call_is_code_11(cni: CniBench, tmp_path):
    """A socket that accepts and closes without answering: no fallback (the daemon
    may have done part of the work), code 11 so the runtime retries."""
    path = str(tmp_path / "cni.sock")
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(1)

    import threading

    def drop() -> None:
        conn, _ = lsock.accept()
        conn.recv(65536)
        conn.close()

    t = threading.Thread(target=drop, daemon=True)
    t.start()
    try:
        res = cni.run("ADD", "c1", cni.pod(), conf=cni.conf(daemon_socket=path))
    finally:
        t.join(timeout=30)
        lsock.close()
    assert res.code == 1 and res.doc["code"] == 11, res.stdout
    assert cni.ipam("handles") == {}


def test_fast_path_imports_only_the_standard_library():
    """Loading the plugin's entry point and its fast path must not pull in the heavy
    modules (structlog, etcd3/grpc, pyroute2, ipam) — that cost is what it avoids —
    nor json/socket and the re/enum they import (issue 17: ~10 ms of CPU a call)."""
    code = ("import sys\n"
            "from bgpd.cni.main import main\n"
            "import bgpd.cni.fast\n"
            "heavy = ('structlog', 'etcd3', 'grpc', 'pyroute2', 'ipam', 'bgpd.cni.protocol',\n"
            "         'bgpd.cni.commands', 'bgpd.cni.records', 'bgpd.cni.netns', 'json',\n"
            "         'socket', 're', 'enum')\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n"
            "from bgpd.cni.main import run\n"          # the lazy re-export still works
            "print(run.__module__)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == ["[]", "bgpd.cni.commands"]


VERSION_STDINS = [b"", b"  \n", b'{"cniVersion": "0.3.1"}', b'{"cniVersion": "0.4.0"}',
                  b'{"cniVersion": "1.1.0", "name": "n", "type": "noderouter-cni"}',
                  b'{"cniVersion": "9.9.9"}', b'{"cniVersion": 4}', b"not json", b"[1, 2]",
                  b"\xff\xfe", '{"cniVersion": "0.3.1"}'.encode("utf-16"),
                  b'{"cniVersion": "1.0.0", "daemon_socket": "/nonexistent/cni.sock"}']


@pytest.mark.parametrize("stdin", VERSION_STDINS, ids=repr)
def test_version_is_answered_with_the_standard_library_only(stdin: bytes):
    """Issue 16: libcni calls VERSION for every plugin of every conflist on each
    container start. The executable answers it without the fast path's socket and
    without importing the command module, and prints exactly what the full path
    (``bgpd.cni.commands``) prints."""
    code = ("import sys\n"
            "from bgpd.cni.main import main\n"
            "rc = main()\n"
            "heavy = ('structlog', 'etcd3', 'grpc', 'pyroute2', 'ipam', 'bgpd.cni.commands',\n"
            "         'bgpd.cni.protocol', 'bgpd.cni.fast', 'socket')\n"
            "sys.stderr.write(repr(sorted(m for m in heavy if m in sys.modules)))\n"
            "sys.exit(rc)\n")
    env = {**os.environ, "CNI_COMMAND": "VERSION"}
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, input=stdin, env=env,
                         capture_output=True, timeout=60)
    assert res.stderr.decode() == "[]", res.stderr.decode()

    from bgpd.cni.commands import answer, run

    full_code, full_text = answer(lambda: run(env, stdin), env, stdin)
    assert (res.returncode, res.stdout.decode()) == (full_code, full_text + "\n")
    assert json.loads(res.stdout)["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0",
                                                           "1.0.0", "1.1.0"]


def test_version_answer_of_the_executable_names_the_request_version():
    from .conftest import PLUGIN

    env = {"PATH": os.environ.get("PATH", ""), "CNI_COMMAND": "VERSION",
           **({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {})}
    res = subprocess.run([PLUGIN], input=b'{"cniVersion": "0.4.0"}', env=env,
                         capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"cniVersion": "0.4.0", "supportedVersions": [
        "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


def test_stdlib_version_constants_match_the_protocol():
    from bgpd.cni import main as cni_main
    from bgpd.cni import protocol

    assert cni_main.SUPPORTED_VERSIONS == protocol.SUPPORTED_VERSIONS
    assert cni_main.CURRENT_VERSION == protocol.CURRENT_VERSION


def test_add_when_the_daemon_does_not_see_the_pod_netns(cni: CniBench, tmp_path):
    """Issue 16: the runtime creates the pod netns after the daemon started, in a mount
    namespace the daemon does not share, so the CNI_NETNS path is not there for the
    daemon. The plugin opens it and passes the descriptor over the socket."""
    srv = Server(cni, str(tmp_path / "cni.sock"), str(tmp_path / "server.log"),
                 hide_netns=True)
    try:
        conf = cni.conf(daemon_socket=srv.path)
        ns = cni.pod()
        assert os.path.exists(ns) and not srv.sees(ns)     # the premise of the test
        res = cni.run("ADD", "c1", ns, conf=conf)
        assert res.code == 0, res.stdout + res.stderr
        ip = assert_valid_result(res.doc, "1.0.0", ns)
        assert [e["container"] for e in srv.events("cni_added")] == ["c1"]
        assert [link for link in links(cni) if link.startswith("nrw")] \
            == [host_veth_name("nrw", "c1")]
        assert cni.ipam("handles") == {"k8s-pod-network.c1": [ip]}
        chk = cni.run("CHECK", "c1", ns, conf=conf)
        assert chk.code == 0 and chk.stdout == "", chk.stdout + chk.stderr
        again = cni.run("ADD", "c1", ns, conf=conf)
        assert again.code == 0 and again.doc == res.doc, again.stdout
        dele = cni.run("DEL", "c1", ns, conf=conf)
        assert dele.code == 0 and dele.stdout == "", dele.stdout + dele.stderr
        assert [e["container"] for e in srv.events("cni_deleted")] == ["c1"]
        assert_nothing_left(cni)

        # Errors name the path and what the plugin found there (not the daemon's view).
        plain = tmp_path / "not-a-netns"
        plain.write_text("")
        bad = cni.run("ADD", "c2", str(plain), conf=conf)
        assert bad.code == 1 and (bad.doc["code"], bad.doc["msg"]) == (
            3, f"{plain} is not a network namespace: it is a regular file of 0 bytes")
        gone = cni.run("ADD", "c2", str(tmp_path / "gone"), conf=conf)
        assert gone.code == 1 and (gone.doc["code"], gone.doc["msg"], gone.doc["details"]) == (
            3, f"network namespace {tmp_path / 'gone'} does not exist",
            "ENOENT: the container is gone, or CNI_NETNS is wrong")
        assert len(srv.events("cni_error")) == 2
        assert_nothing_left(cni, "c2")
    finally:
        srv.stop()


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0"])
def test_fast_path_serves_older_versions_in_their_format(cni: CniBench, server: Server,
                                                         version: str):
    """libcni still hands 0.3.1/0.4.0 conflists to the plugin (issue 16): results in
    those versions' shape (ips[].version) through the daemon too."""
    cni.version = version
    conf = cni.conf(daemon_socket=server.path)
    ns = cni.pod()
    res = cni.run("ADD", "c1", ns, conf=conf)
    assert res.code == 0, res.stdout + res.stderr
    assert res.doc["cniVersion"] == version
    assert_valid_result(res.doc, version, ns)
    if version == "0.4.0":
        chk = cni.run("CHECK", "c1", ns, conf={**conf, "prevResult": res.doc})
        assert chk.code == 0 and chk.stdout == "", chk.stdout + chk.stderr
    assert cni.run("DEL", "c1", ns, conf=conf).code == 0
    assert [e["container"] for e in server.events("cni_added")] == ["c1"]
    assert_nothing_left(cni)


def test_fast_path_serves_status_and_gc(cni: CniBench, server: Server):
    cni.version = "1.1.0"
    conf = cni.conf(daemon_socket=server.path)
    st = cni.run("STATUS", cid=None, netns=None, ifname=None, conf=conf)
    assert st.code == 0 and st.stdout == "", st.stdout + st.stderr
    keep, stale = cni.pod("k"), cni.pod("s")
    assert cni.run("ADD", "keep", keep, conf=conf).code == 0
    assert cni.run("ADD", "stale", stale, conf=conf).code == 0
    gc = cni.run("GC", cid=None, netns=None, ifname=None, conf={
        **conf, "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]})
    assert gc.code == 0 and gc.stdout == "", gc.stdout + gc.stderr
    assert list(cni.ipam("handles")) == ["k8s-pod-network.keep"]
    assert [e["container"] for e in server.events("cni_deleted")] == ["stale"]
    assert cni.run("DEL", "keep", keep, conf=conf).code == 0
    assert_nothing_left(cni, "keep")
