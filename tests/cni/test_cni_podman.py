"""A real runtime through libcni (issue 16): podman 4.3 with its CNI backend runs
containers on a ``noderouter-cni`` conflist, inside a throwaway node namespace.

How it runs without touching the host (the obstacles issue 16 lists):

* only the network namespace is entered (``nsenter --net``): ``ip netns exec``
  would remount /sys and crun would lose its cgroup mounts;
* podman runs in a *slave* copy of the mount namespace (nothing it mounts
  propagates back) without the cgroup2 side of the hybrid hierarchy, which crun
  refuses; containers run with ``--cgroups=disabled``;
* no CAP_SYS_RESOURCE here: the rlimits podman asks crun for are set at or below
  the current ones;
* the image is Debian's busybox-static imported from a tarball, never a registry;
* storage (vfs), run root, config and the CNI conf dir live in the test's tmp dir.

Skipped when podman, crun or busybox are not installed (``apt-get install podman
busybox-static``).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tarfile
import tempfile

import pytest

from .conftest import NODE_ADDR, PLUGIN, CniBench
from .test_cni_integration import assert_nothing_left

pytestmark = pytest.mark.e2e

WANT = "198.19.255.250"
BUSYBOX = "/usr/bin/busybox"


@pytest.fixture
def podman(cni: CniBench, tmp_path):
    missing = [t for t in ("podman", "crun", "nsenter", "unshare") if not shutil.which(t)]
    if missing or not os.path.exists(BUSYBOX) or not os.path.isdir("/sys/fs/cgroup"):
        pytest.skip(f"needs podman, crun and busybox-static (missing: {missing or BUSYBOX})")
    bindir, confdir = tmp_path / "cnibin", tmp_path / "cniconf"
    bindir.mkdir()
    confdir.mkdir()
    (bindir / "noderouter-cni").symlink_to(PLUGIN)
    plugin_log = tmp_path / "plugin.log"
    (confdir / "nrnet.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "nrnet", "plugins": [{
            "type": "noderouter-cni", "etcd_endpoints": [cni.etcd.endpoint],
            "node_name": "node-a", "state_dir": cni.state_dir, "daemon_socket": None,
            "log_file": str(plugin_log), "capabilities": {"ips": True}}]}))
    conf = tmp_path / "containers.conf"
    conf.write_text(f"""[network]
network_backend = "cni"
cni_plugin_dirs = ["{bindir}", "/usr/lib/cni"]
network_config_dir = "{confdir}"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{tmp_path}/events.log"
tmp_dir = "{tmp_path}/podman-tmp"
""")
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    # podman refuses a run root longer than 50 characters: not under tmp_path.
    runroot = tempfile.mkdtemp(prefix="nrpm-", dir="/tmp")
    inner = ("(! mountpoint -q /sys/fs/cgroup/unified || umount /sys/fs/cgroup/unified) && "
             f'exec nsenter --net=/run/netns/{cni.node} podman --root "$0" '
             f'--runroot {runroot} --storage-driver vfs "$@"')

    def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run(["unshare", "--mount", "--propagation", "slave", "sh", "-c",
                              inner, str(tmp_path / "root"), *argv], env=env,
                             capture_output=True, text=True, timeout=180)
        if check:
            assert res.returncode == 0, f"podman {argv}: {res.stdout}{res.stderr}"
        return res

    image = tmp_path / "busybox.tar"
    with tarfile.open(image, "w") as tar:
        tar.add(BUSYBOX, arcname="bin/busybox")
    run("import", str(image), "localhost/nrbusybox")
    run.plugin_log = plugin_log           # type: ignore[attr-defined]
    try:
        yield run
    finally:
        shutil.rmtree(runroot, ignore_errors=True)


def container(podman, *argv: str, script: str, check: bool = True) -> subprocess.CompletedProcess:
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 4096)
    return podman("run", "--rm", "--cgroups=disabled", "--ulimit", f"nofile={nofile}:{nofile}",
                  "--ulimit", f"nproc={nproc}:{nproc}", "--cap-add", "NET_RAW",
                  "--network", "nrnet", *argv, "localhost/nrbusybox", "/bin/busybox", "sh",
                  "-c", script, check=check)


def test_podman_run_with_ip_through_libcni(cni: CniBench, podman):
    res = container(podman, "--ip", WANT, script="ip -4 addr show eth0; ip -4 route; "
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
    res = container(podman, script="ip -4 -o addr show eth0")
    assert " inet 198.19." in res.stdout and "/32 " in res.stdout, res.stdout + res.stderr
    assert_nothing_left(cni)
    # An address in no pool: podman fails and shows the plugin's error, no container runs.
    bad = container(podman, "--ip", "198.18.200.1", script="echo ran", check=False)
    assert bad.returncode != 0 and "ran" not in bad.stdout
    assert "requested address 198.18.200.1 is in no IP pool" in bad.stderr, bad.stderr
    assert_nothing_left(cni)
