"""A throwaway etcd (Debian's etcd-server) for the lab and the tests.

Runs on 127.0.0.1 in the root namespace (loopback only, which changes nothing
there) or on a given address inside a lab namespace. Data lives in a temp dir
that ``stop()`` removes; the process is stopped by PID.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import urllib.request
from dataclasses import dataclass, field

from lab.procs import Daemon, LabError, wait_for

ETCD_BIN = shutil.which("etcd") or "/usr/bin/etcd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class EtcdServer:
    host: str = "127.0.0.1"
    netns: str | None = None
    client_port: int = 0
    peer_port: int = 0
    name: str = "nr-etcd"
    data_dir: str | None = None
    daemon: Daemon | None = field(default=None, repr=False)
    _own_dir: bool = False

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def start(self, timeout: float = 20.0) -> EtcdServer:
        if not os.path.exists(ETCD_BIN):
            raise LabError("etcd binary not found: run scripts/setup (installs etcd-server)")
        if not self.client_port:
            self.client_port = free_port() if self.netns is None else 2379
        if not self.peer_port:
            self.peer_port = free_port() if self.netns is None else 2380
        if self.data_dir is None:
            self.data_dir = tempfile.mkdtemp(prefix="nr-etcd-")
            self._own_dir = True
        peer_url = f"http://{self.host}:{self.peer_port}"
        argv = [
            ETCD_BIN,
            "--name", self.name,
            "--data-dir", self.data_dir,
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"{self.name}={peer_url}",
            "--initial-cluster-state", "new",
            # Small and fast for tests: no fsync storms on a shared 2-core box.
            "--unsafe-no-fsync",
            "--log-level", "warn",
        ]
        self.daemon = Daemon(self.name, argv, netns=self.netns,
                             log_path=os.path.join(self.data_dir, "etcd.log"))
        # etcd 3.4 on non-amd64 needs ETCD_UNSUPPORTED_ARCH; harmless elsewhere.
        env = dict(os.environ)
        self.daemon.env = env
        self.daemon.start()
        try:
            wait_for(self.healthy, timeout, interval=0.1, what=f"etcd at {self.url} to be healthy")
        except LabError:
            tail = self.daemon.log_tail()
            self.stop()
            raise LabError(f"etcd did not become healthy; log tail:\n{tail}") from None
        return self

    def healthy(self) -> bool:
        if self.daemon is None or not self.daemon.alive():
            raise LabError(f"etcd exited: {self.daemon.log_tail() if self.daemon else ''}")
        if self.netns is not None:
            from lab.netns import sh
            res = sh(["curl", "-s", "-m", "1", f"{self.url}/health"], netns=self.netns, check=False)
            return '"true"' in res.stdout
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                return b'"true"' in r.read()
        except OSError:
            return False

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
        if self._own_dir and self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    def pause(self) -> None:
        """Stop the process but keep the data (an outage); ``resume()`` restarts it."""
        if self.daemon is not None:
            self.daemon.stop()

    def resume(self, timeout: float = 20.0) -> None:
        assert self.daemon is not None, "resume() after start()"
        self.daemon.start()
        wait_for(self.healthy, timeout, interval=0.1, what="etcd to come back")

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
