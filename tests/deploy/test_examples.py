"""The example configs the Debian package ships are valid for our own parsers (issue 16)."""

import json
import os

import pytest

from bgpd.cni.protocol import parse_conf, unknown_keys
from config import load_file

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFLIST = os.path.join(REPO, "packaging", "deb", "10-noderouter.conflist.example")


def test_the_example_conflist_chains_our_plugin_with_portmap_and_bandwidth():
    with open(CONFLIST) as f:
        doc = json.load(f)
    assert [p["type"] for p in doc["plugins"]] == ["noderouter-cni", "portmap", "bandwidth"]
    # What a runtime hands our plugin: its entry plus the list's cniVersion and name.
    ours = {"cniVersion": doc["cniVersion"], "name": doc["name"], **doc["plugins"][0]}
    raw = json.dumps(ours)
    assert unknown_keys(raw) == []
    conf = parse_conf(raw, "ADD")
    assert conf.etcd_endpoints == ("198.18.0.10:2379",)
    assert conf.state_dir == "/var/lib/noderouter/cni"  # the unit's --state-dir
    assert conf.etcd_ca and conf.etcd_cert and conf.etcd_key
    # libcni passes runtimeConfig.ips (podman run --ip) only to a plugin that declares it.
    assert doc["plugins"][0]["capabilities"] == {"ips": True}


def test_the_example_node_config_loads():
    cfg = load_file(os.path.join(REPO, "config", "examples", "node.yaml"))
    assert cfg.node.name == "node-a1"


def test_run_reads_the_packaged_config_path_by_default():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "bgpd.cli.main", "run", "--help"],
                         capture_output=True, text=True)
    assert "[default: /etc/noderouter/node.yaml]" in " ".join(res.stdout.split())
