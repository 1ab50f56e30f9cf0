"""The store over TLS with client certificates (etcd --client-cert-auth)."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request

import pytest

from ipam.allocator import Ipam
from ipam.errors import IpamError, IpamInvalid
from ipam.store import EtcdStore
from lab.etcd import ETCD_BIN, free_port
from lab.procs import Daemon, wait_for

pytestmark = pytest.mark.integration


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_etcd(tmp_path):
    if shutil.which("openssl") is None:
        pytest.fail("openssl is missing: run scripts/setup")
    d = tmp_path
    ext = d / "san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=nr-test-ca", cwd=d)
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", f"/CN=nr-{name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", str(ext), cwd=d)
    port, peer = free_port(), free_port()
    url = f"https://127.0.0.1:{port}"
    argv = [ETCD_BIN, "--name", "nr-tls", "--data-dir", str(d / "data"),
            "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"nr-tls=http://127.0.0.1:{peer}",
            "--cert-file", str(d / "server.crt"), "--key-file", str(d / "server.key"),
            "--client-cert-auth", "--trusted-ca-file", str(d / "ca.crt"),
            "--unsafe-no-fsync", "--log-level", "warn"]
    daemon = Daemon("nr-etcd-tls", argv, log_path=str(d / "etcd.log"), env=dict(os.environ)).start()

    import ssl

    ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
    ctx.load_cert_chain(str(d / "client.crt"), str(d / "client.key"))

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1, context=ctx) as r:
                return b'"true"' in r.read()
        except OSError:
            return False
    try:
        wait_for(healthy, 20, interval=0.1, what="TLS etcd to be healthy")
        yield f"127.0.0.1:{port}", d
    finally:
        daemon.stop()


def test_tls_client_certificates(tls_etcd):
    endpoint, d = tls_etcd
    store = EtcdStore(endpoint, ca=str(d / "ca.crt"), cert=str(d / "client.crt"),
                      key=str(d / "client.key"), timeout=5)
    ipam = Ipam(store, "node-a")
    ipam.add_pool("198.19.0.0/16")
    ip = ipam.allocate("k8s-pod-network.tls")
    assert ipam.handle_ips("k8s-pod-network.tls") == [ip]
    store.close()
    # No client certificate: etcd refuses, and the error says so within the deadline.
    bare = EtcdStore(endpoint, ca=str(d / "ca.crt"), timeout=2)
    with pytest.raises(IpamError):
        Ipam(bare, "node-a").list_pools()
    bare.close()
    with pytest.raises(IpamInvalid, match="both --etcd-cert and --etcd-key"):
        EtcdStore(endpoint, ca=str(d / "ca.crt"), cert=str(d / "client.crt"))
