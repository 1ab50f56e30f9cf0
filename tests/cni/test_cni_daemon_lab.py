"""The real daemon serves the plugin (one rack, one node, real ToR and etcd): pods
are wired by ``noderouter run``'s CNI server while it runs, by the plugin itself
while it is stopped, and DEL works across the switch either way."""

from __future__ import annotations

import json
import os
import stat

import pytest

from bgpd.cni.records import LOCK_DIR
from lab.procs import wait_for
from lab.topology import Lab

pytestmark = pytest.mark.e2e

NODE = "node-a1"


@pytest.fixture(scope="module")
def lab():
    lab = Lab(racks=1, nodes_per_rack=1, design="tor")
    try:
        lab.up()
        yield lab
    finally:
        lab.stop_noderouter(NODE)
        assert lab.down() == []


def events(path: str, event: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("event") == event:
                out.append(doc)
    return out


def test_daemon_serves_cni_and_plugin_falls_back_when_it_is_stopped(lab: Lab):
    d = lab.node_dir(NODE)
    daemon_log = os.path.join(d, "noderouter.log")
    plugin_log = os.path.join(d, "cni.log")
    sock = lab.cni_socket(NODE)
    assert lab.cni_conf(NODE)["daemon_socket"] == sock

    lab.start_noderouter(NODE)
    lab.wait_ready(NODE)
    st = os.stat(sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert (st.st_uid, st.st_gid) == (0, 0)

    web = lab.add_pod(NODE, "web")                       # through the daemon
    cids = [e.get("container") for e in events(daemon_log, "cni_added")]
    assert web["container_id"] in cids
    assert web["container_id"] not in [e.get("container") for e in events(plugin_log,
                                                                          "cni_added")]
    # The daemon's reconciler owns the route the server's ADD made (same record).
    wait_for(lambda: web["ip"] in lab.exec(NODE, ["ip", "-4", "route", "show",
                                                  "proto", "73"]).stdout,
             20, what="the pod route")

    assert lab.stop_noderouter(NODE) is not None
    assert not os.path.exists(sock)                      # stop() removes its socket
    db = lab.add_pod(NODE, "db")                         # the plugin on its own
    assert db["container_id"] in [e.get("container") for e in events(plugin_log,
                                                                     "cni_added")]
    lab.del_pod(NODE, "web")                             # added by the daemon, DEL direct

    lab.start_noderouter(NODE)
    lab.wait_ready(NODE)
    lab.del_pod(NODE, "db")                              # added direct, DEL by the daemon
    assert db["container_id"] in [e.get("container") for e in events(daemon_log,
                                                                     "cni_deleted")]
    # No record, temp file or lock file left: only the (empty) lock directory.
    state = lab.cni_state_dir(NODE)
    assert os.listdir(state) == [LOCK_DIR] and os.listdir(os.path.join(state, LOCK_DIR)) == []
