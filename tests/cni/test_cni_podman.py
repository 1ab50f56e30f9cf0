"""A real runtime through libcni (issue 16): podman 4.3 with its CNI backend runs
containers on a ``noderouter-cni`` conflist, inside a throwaway node namespace
(how podman runs there without touching the host: tests/cni/podman.py).

Skipped when podman, crun or busybox are not installed (``apt-get install podman
busybox-static``).
"""

from __future__ import annotations

import json

import pytest

from .conftest import NODE_ADDR, PLUGIN, CniBench
from .podman import Podman, skip_unless_podman
from .test_cni_integration import assert_nothing_left

pytestmark = pytest.mark.e2e

WANT = "198.19.255.250"


@pytest.fixture
def podman(cni: CniBench, tmp_path):
    skip_unless_podman()
    plugin_log = tmp_path / "plugin.log"
    runtime = Podman(str(tmp_path / "podman"), cni.node, {
        "cniVersion": "1.0.0", "name": "nrnet", "plugins": [{
            "type": "noderouter-cni", "etcd_endpoints": [cni.etcd.endpoint],
            "node_name": "node-a", "state_dir": cni.state_dir, "daemon_socket": None,
            "log_file": str(plugin_log), "capabilities": {"ips": True}}]}, PLUGIN)
    runtime.plugin_log = plugin_log           # type: ignore[attr-defined]
    try:
        yield runtime.start()
    finally:
        runtime.stop()


def test_podman_run_with_ip_through_libcni(cni: CniBench, podman):
    res = podman.run("--ip", WANT, script="ip -4 addr show eth0; ip -4 route; "
                    f"ping -c1 -W5 {NODE_ADDR} >/dev/null && echo reached")
    assert f"inet {WANT}/32" in res.stdout, res.stdout + res.stderr
    assert "default via 169.254.1.1 dev eth0" in res.stdout
    assert res.stdout.rstrip().endswith("reached"), res.stdout
    # --rm: podman DELs the attachment; nothing of ours is left in the node.
    assert_nothing_left(cni)
    events = [json.loads(line) for line in podman.plugin_log.read_text().splitlines()]
    added = [e for e in events if e.get("event") == "cni_added"]
    assert [(e["ip"], e["requested"]) for e in added] == [(WANT, True)]
    assert len([e for e in events if e.get("event") == "cni_deleted"]) == 1


def test_podman_run_without_ip_allocates_and_refuses_an_address_in_no_pool(cni: CniBench, podman):
    res = podman.run(script="ip -4 -o addr show eth0")
    assert " inet 198.19." in res.stdout and "/32 " in res.stdout, res.stdout + res.stderr
    assert_nothing_left(cni)
    # An address in no pool: podman fails and shows the plugin's error, no container runs.
    bad = podman.run("--ip", "198.18.200.1", script="echo ran", check=False)
    assert bad.returncode != 0 and "ran" not in bad.stdout
    assert "requested address 198.18.200.1 is in no IP pool" in bad.stderr, bad.stderr
    assert_nothing_left(cni)
