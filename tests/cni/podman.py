"""Debian's podman 4.3 (CNI backend, crun) run inside one lab node's network
namespace, for the tests that drive ``noderouter-cni`` through libcni (issue 16).

How it runs without touching the host (the obstacles issue 16 lists):

* only the network namespace is entered (``nsenter --net``): ``ip netns exec``
  would remount /sys and crun would lose its cgroup mounts;
* podman runs in a *slave* copy of the mount namespace (nothing it mounts
  propagates back) without the cgroup2 side of the hybrid hierarchy, which crun
  refuses; containers run with ``--cgroups=disabled``;
* no CAP_SYS_RESOURCE here: the rlimits podman asks crun for are set at or below
  the current ones;
* the image is Debian's busybox-static imported from a tarball, never a registry;
* storage (vfs), run root, config and the CNI conf dir live in the test's dir.

Every podman command of one ``Podman`` runs in the *same* mount namespace, held
open by a ``sleep`` we start (and end by its PID): podman bind-mounts each
container's network namespace under /run/netns, and a detached container's
mount must still be there when a later ``podman rm`` runs its CNI DEL. (A fresh
copy per command would hand DEL an empty file instead of the netns.)
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tarfile
import tempfile
import time

import pytest

BUSYBOX = "/usr/bin/busybox"
IMAGE = "localhost/nrbusybox"
# Where Debian's containernetworking-plugins puts the reference plugins (portmap,
# bandwidth, ...); podman looks there too, after our own bin dir.
REFERENCE_PLUGINS = "/usr/lib/cni"


def skip_unless_podman() -> None:
    missing = [t for t in ("podman", "crun", "nsenter", "unshare") if not shutil.which(t)]
    if missing or not os.path.exists(BUSYBOX) or not os.path.isdir("/sys/fs/cgroup"):
        pytest.skip(f"needs podman, crun and busybox-static (missing: {missing or BUSYBOX})")


def skip_unless_reference_plugins(*names: str) -> None:
    missing = [n for n in names if not os.path.exists(os.path.join(REFERENCE_PLUGINS, n))]
    if missing:
        pytest.skip(f"needs the reference CNI plugins {missing} in {REFERENCE_PLUGINS} "
                    "(apt-get install containernetworking-plugins)")


class Podman:
    """podman on one node: ``conflist`` is the network (its ``name`` is what
    ``--network`` takes), ``plugin`` our ``noderouter-cni`` executable."""

    def __init__(self, workdir: str, node_netns: str, conflist: dict, plugin: str) -> None:
        self.workdir = workdir
        self.node_netns = node_netns
        self.network = conflist["name"]
        bindir, confdir = os.path.join(workdir, "cnibin"), os.path.join(workdir, "cniconf")
        os.makedirs(bindir)
        os.makedirs(confdir)
        # What libcni hands our plugin, kept per call (stdin of each CNI command in
        # requests/<COMMAND>-<container ID>.*): the tests read DEL's prevResult there.
        self.requests = os.path.join(workdir, "requests")
        os.makedirs(self.requests)
        wrapper = os.path.join(bindir, "noderouter-cni")
        with open(wrapper, "w") as f:
            f.write(f"""#!/bin/sh
req=$(mktemp "{self.requests}/$CNI_COMMAND-${{CNI_CONTAINERID:-none}}.XXXXXX")
cat > "$req"
exec {plugin} < "$req"
""")
        os.chmod(wrapper, 0o755)
        with open(os.path.join(confdir, f"{self.network}.conflist"), "w") as f:
            json.dump(conflist, f)
        conf = os.path.join(workdir, "containers.conf")
        with open(conf, "w") as f:
            f.write(f"""[network]
network_backend = "cni"
cni_plugin_dirs = ["{bindir}", "{REFERENCE_PLUGINS}"]
network_config_dir = "{confdir}"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{workdir}/events.log"
tmp_dir = "{workdir}/podman-tmp"
""")
        self.env = {**os.environ, "CONTAINERS_CONF": conf}
        self.root = os.path.join(workdir, "root")
        # podman refuses a run root longer than 50 characters: not under workdir.
        self.runroot = tempfile.mkdtemp(prefix="nrpm-", dir="/tmp")
        self.holder: subprocess.Popen | None = None

    def start(self) -> Podman:
        # The mount namespace every command enters: a slave copy without the
        # cgroup2 side, held by `sleep` (exec'd: the PID is the holder itself).
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "slave", "sh", "-c",
             "(! mountpoint -q /sys/fs/cgroup/unified || umount /sys/fs/cgroup/unified) && "
             "exec sleep infinity"], stdin=subprocess.DEVNULL)
        own = os.readlink("/proc/self/ns/mnt")
        for _ in range(200):
            try:
                cmdline = open(f"/proc/{self.holder.pid}/cmdline").read()
                if cmdline.startswith("sleep") and os.readlink(
                        f"/proc/{self.holder.pid}/ns/mnt") != own:
                    break
            except OSError:
                pass
            if self.holder.poll() is not None:
                raise RuntimeError(f"the mount namespace holder exited ({self.holder.returncode})")
            time.sleep(0.05)
        else:
            raise RuntimeError("the mount namespace holder did not come up")
        image = os.path.join(self.workdir, "busybox.tar")
        with tarfile.open(image, "w") as tar:
            tar.add(BUSYBOX, arcname="bin/busybox")
        self("import", image, IMAGE)
        return self

    def __call__(self, *argv: str, check: bool = True,
                 timeout: float = 180) -> subprocess.CompletedProcess:
        assert self.holder is not None, "Podman.start() first"
        res = subprocess.run(["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt",
                              f"--net=/run/netns/{self.node_netns}", "podman", "--root",
                              self.root, "--runroot", self.runroot, "--storage-driver", "vfs",
                              *argv], env=self.env, capture_output=True, text=True,
                             timeout=timeout)
        if check:
            assert res.returncode == 0, f"podman {argv}: {res.stdout}{res.stderr}"
        return res

    def sh(self, *argv: str) -> subprocess.CompletedProcess:
        """A command in podman's mount namespace (the host's network namespace)."""
        assert self.holder is not None, "Podman.start() first"
        return subprocess.run(["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", *argv],
                              capture_output=True, text=True, timeout=60, check=True)

    @staticmethod
    def run_options() -> list[str]:
        """``podman run`` options every container here needs (see the module doc)."""
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 4096)
        return ["--cgroups=disabled", "--ulimit", f"nofile={nofile}:{nofile}",
                "--ulimit", f"nproc={nproc}:{nproc}", "--cap-add", "NET_RAW"]

    def run(self, *argv: str, script: str, detach: bool = False,
            check: bool = True) -> subprocess.CompletedProcess:
        """``podman run`` of busybox ``sh -c script`` on our network: ``--rm`` in the
        foreground, or ``-d`` (stdout is then the container ID)."""
        mode = ["-d"] if detach else ["--rm"]
        return self("run", *mode, *self.run_options(), "--network", self.network, *argv,
                    IMAGE, "/bin/busybox", "sh", "-c", script, check=check)

    def inspect(self, cid: str) -> dict:
        return json.loads(self("inspect", cid).stdout)[0]

    def ip_of(self, cid: str) -> str:
        nets = self.inspect(cid)["NetworkSettings"]["Networks"]
        return nets[self.network]["IPAddress"]

    def requests_of(self, command: str, cid: str) -> list[dict]:
        """The stdin documents libcni sent our plugin for ``command`` on ``cid``."""
        out = []
        for name in sorted(os.listdir(self.requests)):
            if name.startswith(f"{command}-{cid}."):
                with open(os.path.join(self.requests, name)) as f:
                    out.append(json.load(f))
        return out

    def stop(self) -> None:
        try:
            if self.holder is not None and self.holder.poll() is None:
                # Containers left by a failed test: their CNI DEL runs while the
                # node (etcd, its namespace) still exists.
                self("rm", "-af", "-t0", check=False, timeout=300)
        finally:
            if self.holder is not None and self.holder.poll() is None:
                self.holder.terminate()        # our own child, by its PID
                self.holder.wait(timeout=30)
            shutil.rmtree(self.runroot, ignore_errors=True)
