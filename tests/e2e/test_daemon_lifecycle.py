"""`noderouter run` as systemd sees it: sd_notify, SIGHUP reload, SIGTERM keeping routes,
status socket permissions, metrics and health endpoints. One rack, one node, real ToR."""

import os
import signal
import socket
import stat

import pytest
import yaml

from lab.netns import sh
from lab.procs import wait_for
from lab.topology import Lab

pytestmark = pytest.mark.e2e


class NotifySocket:
    """What systemd listens on: a unix datagram socket in NOTIFY_SOCKET."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return self.messages

    def wait_for(self, field: str, timeout: float = 60) -> None:
        wait_for(lambda: any(field in m.split("\n") for m in self.drain()), timeout,
                 what=f"{field} on NOTIFY_SOCKET")


@pytest.fixture(scope="module")
def one_node_lab():
    lab = Lab(racks=1, nodes_per_rack=1, design="tor")
    try:
        lab.up()
        yield lab
    finally:
        assert lab.down() == []


def http_get(lab, url: str) -> tuple[int, str]:
    res = sh(["curl", "-s", "-o", "/dev/stdout", "-w", "\n%{http_code}", "-m", "3", url],
             netns=lab.node("node-a1").netns, check=False)
    body, _, code = res.stdout.rpartition("\n")
    return int(code or 0), body


def test_notify_reload_and_stop_keep_routes(one_node_lab, tmp_path):
    lab = one_node_lab
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    lab.start_noderouter("node-a1", env={"NOTIFY_SOCKET": notify.path,
                                         "WATCHDOG_USEC": "2000000"})
    notify.wait_for("READY=1")
    notify.wait_for("WATCHDOG=1")
    lab.wait_ready("node-a1")
    pod = lab.add_pod("node-a1", "web")

    # The status socket: a unix socket, mode 0660, root:root.
    st = os.stat(lab.status_socket("node-a1"))
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert (st.st_uid, st.st_gid) == (0, 0)

    # Health and metrics, from inside the node's namespace.
    assert http_get(lab, "http://127.0.0.1:9099/livez")[0] == 200
    code, body = http_get(lab, "http://127.0.0.1:9099/readyz")
    assert code == 200 and '"datastore_in_sync": true' in body
    # The daemon notices the new pod on its next loop iteration.
    metrics = wait_for(lambda: (lambda r: r[0] == 200 and 'noderouter_kernel_routes{route_class='
                                '"workload"} 1.0' in r[1] and r[1])(
        http_get(lab, "http://127.0.0.1:9091/metrics")), 10, what="workload route metric")
    assert 'noderouter_bgp_peers{state="established"} 1.0' in metrics
    assert "change-me" not in metrics

    tor = lab.node("node-a1").rack.tor_address
    before = {p["address"]: p for p in lab.status("node-a1")["peers"]}
    assert before[str(tor)]["state"] == "established"

    # SIGHUP with a bad config: refused whole, the running config stays.
    conf_path = os.path.join(lab.node_dir("node-a1"), "node.yaml")
    good = open(conf_path).read()
    with open(conf_path, "w") as f:
        f.write(good + "bogus_section: 1\n")
    notify.messages.clear()
    lab.daemons["node-a1"].signal(signal.SIGHUP)
    notify.wait_for("RELOADING=1")
    notify.wait_for("READY=1")
    assert lab.daemons["node-a1"].alive()
    assert "reload_refused" in lab.daemons["node-a1"].log_tail(50)

    # SIGHUP adding a peer: the new peer appears, the ToR session is not dropped.
    cfg = yaml.safe_load(good)
    cfg["bgp"]["peers"].append({"address": "198.18.1.99", "as_number": 64999,
                                "description": "new-peer"})
    with open(conf_path, "w") as f:
        yaml.safe_dump(cfg, f)
    lab.daemons["node-a1"].signal(signal.SIGHUP)
    wait_for(lambda: "198.18.1.99" in {p["address"] for p in lab.status("node-a1")["peers"]},
             30, what="the added peer")
    after = {p["address"]: p for p in lab.status("node-a1")["peers"]}
    assert after[str(tor)]["state"] == "established"
    assert after[str(tor)]["uptime"] >= before[str(tor)]["uptime"], "ToR session was reset"

    # SIGTERM: STOPPING=1, exit 0, and our kernel routes stay for the restart.
    routes_before = sh(["ip", "route", "show", "proto", "73"], netns=lab.node("node-a1").netns)
    assert pod["ip"] in routes_before.stdout
    notify.messages.clear()
    rc = lab.stop_noderouter("node-a1")
    assert rc == 0
    assert any("STOPPING=1" in m for m in notify.drain())
    routes_after = sh(["ip", "route", "show", "proto", "73"], netns=lab.node("node-a1").netns)
    assert routes_after.stdout == routes_before.stdout


def test_run_refuses_a_bad_config_before_touching_anything(one_node_lab, tmp_path):
    lab = one_node_lab
    bad = tmp_path / "bad.yaml"
    bad.write_text(lab.node_config("node-a1") + "bgp_typo: {}\n")
    links_before = sh(["ip", "-o", "link"], netns=lab.node("node-a1").netns).stdout
    exe = os.path.join(os.path.dirname(__import__("sys").executable), "noderouter")
    res = sh([exe, "run", "--config", str(bad)], netns=lab.node("node-a1").netns, check=False)
    assert res.returncode == 1
    assert "bgp_typo: unknown key" in res.stderr and "nothing was changed" in res.stderr
    assert sh(["ip", "-o", "link"], netns=lab.node("node-a1").netns).stdout == links_before


def test_status_cli_when_the_daemon_is_gone(one_node_lab, tmp_path):
    res = one_node_lab.nr("node-a1", "status")
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "status socket" in res.stderr
