"""A throwaway etcd (Debian's etcd-server) for the lab and the tests.

Runs on 127.0.0.1 in the root namespace (loopback only, which changes nothing
there) or on a given address inside a lab namespace. Data lives in a temp dir
that ``stop()`` removes; the process is stopped by PID.

``tls=True``: a throwaway CA, a server certificate for ``host`` and one client
certificate are made with ``openssl`` in ``<data_dir>/pki`` (``ca_file``,
``cert_file``, ``key_file`` are the client's); etcd serves https only and
requires a client certificate signed by that CA (``--client-cert-auth``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
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
    tls: bool = False
    # A member of a cluster: "name=http://host:peerport,..." (default: a cluster of one).
    initial_cluster: str | None = None
    daemon: Daemon | None = field(default=None, repr=False)
    _own_dir: bool = False
    # With tls: the CA bundle and the client certificate/key (made by start()).
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    def _make_pki(self) -> list[str]:
        """CA, server and client certificates (EC P-256, 2 days) -> etcd's TLS flags."""
        pki = os.path.join(self.data_dir, "pki")
        os.makedirs(pki, mode=0o700, exist_ok=True)

        def ossl(*args: str) -> None:
            res = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)
            if res.returncode != 0:
                raise LabError(f"openssl {args[0]} failed: {res.stderr.strip()}")

        def path(name: str) -> str:
            return os.path.join(pki, name)

        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        ossl("req", "-x509", *key, "-keyout", path("ca.key"), "-out", path("ca.crt"),
             "-days", "2", "-subj", "/CN=noderouter-lab-ca")
        for who, ext in (("server", f"subjectAltName=IP:{self.host}\n"
                                    "extendedKeyUsage=serverAuth"),
                         ("client", "extendedKeyUsage=clientAuth")):
            with open(path(f"{who}.ext"), "w") as f:
                f.write(ext + "\n")
            ossl("req", "-new", *key, "-keyout", path(f"{who}.key"), "-out", path(f"{who}.csr"),
                 "-subj", f"/CN=noderouter-lab-{who}")
            ossl("x509", "-req", "-in", path(f"{who}.csr"), "-CA", path("ca.crt"),
                 "-CAkey", path("ca.key"), "-CAcreateserial", "-days", "2",
                 "-extfile", path(f"{who}.ext"), "-out", path(f"{who}.crt"))
        self.ca_file, self.cert_file, self.key_file = (path("ca.crt"), path("client.crt"),
                                                       path("client.key"))
        return ["--cert-file", path("server.crt"), "--key-file", path("server.key"),
                "--trusted-ca-file", path("ca.crt"), "--client-cert-auth"]

    def start(self, timeout: float = 20.0, wait: bool = True) -> EtcdServer:
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
            "--initial-cluster", self.initial_cluster or f"{self.name}={peer_url}",
            "--initial-cluster-state", "new",
            # Small and fast for tests: no fsync storms on a shared 2-core box.
            "--unsafe-no-fsync",
            "--log-level", "warn",
        ]
        if self.tls:
            argv += self._make_pki()
        self.daemon = Daemon(self.name, argv, netns=self.netns,
                             log_path=os.path.join(self.data_dir, "etcd.log"))
        # etcd 3.4 on non-amd64 needs ETCD_UNSUPPORTED_ARCH; harmless elsewhere.
        env = dict(os.environ)
        self.daemon.env = env
        self.daemon.start()
        if not wait:  # a cluster member is healthy only once a quorum runs
            return self
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
            res = sh(["curl", "-s", "-m", "1", *self._curl_tls(), f"{self.url}/health"],
                     netns=self.netns, check=False)
            return '"true"' in res.stdout
        if self.tls:
            res = subprocess.run(["curl", "-s", "-m", "1", *self._curl_tls(),
                                  f"{self.url}/health"], capture_output=True, text=True)
            return '"true"' in res.stdout
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                return b'"true"' in r.read()
        except OSError:
            return False

    def _curl_tls(self) -> list[str]:
        if not self.tls:
            return []
        return ["--cacert", self.ca_file, "--cert", self.cert_file, "--key", self.key_file]

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


@dataclass
class EtcdCluster:
    """A cluster of ``size`` members on 127.0.0.1 (each stopped by its PID)."""

    size: int = 3
    members: list[EtcdServer] = field(default_factory=list)

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        ports = [(free_port(), free_port()) for _ in range(self.size)]
        cluster = ",".join(f"nr-etcd{i}=http://127.0.0.1:{peer}"
                           for i, (_, peer) in enumerate(ports))
        self.members = [EtcdServer(name=f"nr-etcd{i}", client_port=client, peer_port=peer,
                                   initial_cluster=cluster)
                        for i, (client, peer) in enumerate(ports)]
        try:
            for m in self.members:
                m.start(wait=False)
            for m in self.members:
                wait_for(m.healthy, timeout, interval=0.1, what=f"etcd member {m.name}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for m in self.members:
            m.stop()

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
