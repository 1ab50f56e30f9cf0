"""The CNI test bench: a "node" namespace (etcd on its loopback, an address in
198.18.9.0/24 on a veth pair, a default route inside it) and pod namespaces; the
real ``noderouter-cni`` executable is always run inside the node namespace.

etcd runs inside the node namespace rather than through the shared ``etcd_server``
fixture: that one listens on the root namespace's loopback, which a process in the
node namespace cannot reach (and we never touch the root namespace to bridge it).
IPAM reads/writes from the test go through ``tests.cni.ipamtool`` run in the node
namespace for the same reason.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest

from lab.netns import NetnsSet, run_prefix, sh

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLUGIN = os.path.join(REPO, ".venv", "bin", "noderouter-cni")
NODE_ADDR = "198.18.9.1"
POOL = "198.19.0.0/16"


@dataclass
class CniResult:
    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def doc(self) -> Any:
        return json.loads(self.stdout) if self.stdout.strip() else None


@dataclass
class CniBench:
    node: str
    etcd: Any
    state_dir: str
    netns_set: NetnsSet
    version: str = "1.0.0"
    extra_conf: dict = field(default_factory=dict)

    def conf(self, **over: Any) -> dict:
        c = {"cniVersion": self.version, "name": "k8s-pod-network", "type": "noderouter-cni",
             "etcd_endpoints": [self.etcd.endpoint], "node_name": "node-a",
             "state_dir": self.state_dir, "etcd_timeout": 2.0,
             # The direct path unless a test names its own server: the default socket
             # (/run/noderouter/cni.sock) may belong to a lab daemon running on the same
             # machine, which would then serve this test's pods from its own etcd.
             "daemon_socket": None, **self.extra_conf}
        c.update(over)
        return c

    def pod(self, tag: str = "p") -> str:
        """A fresh pod namespace; returns its path (CNI_NETNS)."""
        name = self.netns_set.add(f"{self.node}-{tag}")
        return f"/run/netns/{name}"

    @staticmethod
    def env(command: str, cid: str | None = "c1", netns: str | None = None,
            ifname: str | None = "eth0", args: str | None = None) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin"}
        if "PYTHONPATH" in os.environ:
            # The plugin must import the code under test (a worktree's), not whatever
            # the venv's editable install points at.
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        for key, value in (("CNI_CONTAINERID", cid), ("CNI_NETNS", netns),
                           ("CNI_IFNAME", ifname), ("CNI_ARGS", args)):
            if value is not None:
                env[key] = value
        return env

    def run(self, command: str, cid: str | None = "c1", netns: str | None = None,
            ifname: str | None = "eth0", conf: dict | None = None, stdin: str | None = None,
            args: str | None = None) -> CniResult:
        env = self.env(command, cid, netns, ifname, args)
        data = stdin if stdin is not None else json.dumps(conf or self.conf())
        t0 = time.monotonic()
        # timeout: a safety net so a hang fails the test instead of stalling the run.
        res = subprocess.run(["ip", "netns", "exec", self.node, PLUGIN], input=data, env=env,
                             capture_output=True, text=True, timeout=60)
        return CniResult(res.returncode, res.stdout, res.stderr, time.monotonic() - t0)

    def run_together(self, n: int, command: str, cid: str, netns: str | None,
                     conf: dict, ifname: str = "eth0") -> list[CniResult]:
        """``n`` plugin processes with the same request, released at once: all are
        started first and block reading stdin, then every stdin gets the config.
        This only makes their critical sections likely to overlap; nothing asserts
        on timing."""
        data = json.dumps(conf).encode()
        env = self.env(command, cid, netns, ifname)
        t0 = time.monotonic()
        procs = [subprocess.Popen(["ip", "netns", "exec", self.node, PLUGIN], env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE) for _ in range(n)]
        time.sleep(0.3)                 # let every interpreter reach its stdin read
        # One thread per process: each write (far below the pipe's buffer) lands at
        # once, and communicate() drains both pipes; its timeout is a safety net only.
        with ThreadPoolExecutor(n) as ex:
            done = list(ex.map(lambda p: p.communicate(data, timeout=120), procs))
        out = [CniResult(p.returncode, stdout.decode(), stderr.decode(), time.monotonic() - t0)
               for p, (stdout, stderr) in zip(procs, done, strict=True)]
        return out

    def ipam(self, *argv: str) -> Any:
        res = subprocess.run(["ip", "netns", "exec", self.node, sys.executable, "-m",
                              "tests.cni.ipamtool", self.etcd.endpoint, *argv],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, f"ipamtool {argv} failed: {res.stderr[-2000:]}"
        return json.loads(res.stdout)

    def node_sh(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh(list(argv), netns=self.node, check=check)


def _setup_node(node: str) -> None:
    # No dummy module on this kernel: a veth pair inside the node namespace stands in
    # for the node's uplink. The default route gives proxy ARP a route to answer for
    # 169.254.1.1 (a real node has one); none of it leaves the namespace.
    sh(["ip", "link", "add", "nrup0", "type", "veth", "peer", "name", "nrup1"], netns=node)
    for dev in ("nrup0", "nrup1"):
        sh(["ip", "link", "set", dev, "up"], netns=node)
    sh(["ip", "addr", "add", f"{NODE_ADDR}/24", "dev", "nrup0"], netns=node)
    sh(["ip", "route", "add", "default", "dev", "nrup0"], netns=node)


@pytest.fixture
def cni(netns_set, tmp_path):
    """A node namespace with etcd and a pool, ready for the plugin."""
    from lab.etcd import EtcdServer

    if not os.path.exists(PLUGIN):
        pytest.fail(f"{PLUGIN} missing: run scripts/setup (pip install -e .)")
    node = netns_set.add(f"{run_prefix('nrc')}")
    _setup_node(node)
    etcd = EtcdServer(netns=node).start()
    try:
        bench = CniBench(node=node, etcd=etcd, state_dir=str(tmp_path / "state"),
                         netns_set=netns_set)
        bench.ipam("add-pool", POOL)
        yield bench
    finally:
        etcd.stop()


class Server:
    """The daemon's CNI server (``python -m bgpd.cni.server``) run inside the node
    namespace, logging to ``log_path``: the plugin's fast path without BGP."""

    def __init__(self, bench: CniBench, path: str, log_path: str, workers: int = 4,
                 hide_netns: bool = False) -> None:
        self.path = path
        self.log_path = log_path
        self._log = open(log_path, "w")
        wrap: list[str] = []
        if hide_netns:
            # Issue 16: a daemon whose mount namespace does not see the runtime's netns
            # bind mounts. A private copy of the mount namespace with an empty tmpfs
            # over /run/netns: no pod netns made from now on is visible there (the
            # runtime's view is untouched: the mount stays in the copy).
            wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    'mount -t tmpfs nrhidden /run/netns && exec "$@"', "sh"]
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", bench.node, *wrap, sys.executable, "-m", "bgpd.cni.server",
             "--socket", path, "--workers", str(workers)],
            cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not self.listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"cni_server did not come up: {self.events()}")
            time.sleep(0.05)

    def listening(self) -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.path)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def sees(self, path: str) -> bool:
        """Does the server's mount namespace show ``path``? (``ip netns exec``,
        ``unshare`` and ``sh -c exec`` all exec: ``proc.pid`` is the server.)"""
        return subprocess.run(["nsenter", "--mount", "-t", str(self.proc.pid), "test", "-e",
                               path], timeout=30).returncode == 0

    def events(self, event: str | None = None) -> list[dict]:
        out = []
        with open(self.log_path) as f:
            for line in f:
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if event is None or doc.get("event") == event:
                    out.append(doc)
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()          # our own child, by its PID
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture
def server(cni: CniBench, tmp_path):
    srv = Server(cni, str(tmp_path / "cni.sock"), str(tmp_path / "server.log"))
    try:
        yield srv
    finally:
        srv.stop()
