"""The CLI facing a gone daemon or an etcd that refuses it: one clear line on stderr, exit 1.

Real sockets and a real etcd with TLS client-certificate authentication (``--client-cert-auth``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from lab.etcd import EtcdServer

pytestmark = pytest.mark.integration

EXE = os.path.join(os.path.dirname(sys.executable), "noderouter")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=60)


def one_line_error(res: subprocess.CompletedProcess) -> str:
    """The error text; fails unless it is exactly one line on stderr and nothing on stdout."""
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert res.stdout == "", res.stdout
    assert res.stderr.endswith("\n") and res.stderr.count("\n") == 1, res.stderr
    return res.stderr


@pytest.mark.parametrize("cmd", ["status", "peers", "routes"])
def test_status_socket_that_does_not_exist(tmp_path, cmd):
    path = str(tmp_path / "status.sock")
    err = one_line_error(run(cmd, "--socket", path))
    assert path in err and "does not exist" in err and "noderouter running" in err


def test_status_socket_left_stale_by_a_dead_daemon(tmp_path):
    # A socket file nobody listens on any more (what a SIGKILLed daemon leaves behind).
    path = str(tmp_path / "status.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()
    assert os.path.exists(path)
    err = one_line_error(run("status", "--socket", path, "-o", "json"))
    assert path in err and "nothing listens" in err


def test_status_socket_that_answers_garbage(tmp_path):
    # Something else listening on the path: a malformed reply is an error, not a traceback.
    path = str(tmp_path / "status.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    proc = subprocess.Popen([EXE, "status", "--socket", path], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        conn, _ = srv.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n\n")
        conn.close()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        srv.close()
    res = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert "malformed reply" in one_line_error(res)


@pytest.fixture(scope="module")
def tls_etcd():
    server = EtcdServer(tls=True).start()
    try:
        yield server
    finally:
        server.stop()


def test_ipam_show_with_the_client_certificate_works(tls_etcd):
    e = tls_etcd
    res = run("ipam", "show", "--etcd-endpoints", e.endpoint, "--etcd-ca", e.ca_file,
              "--etcd-cert", e.cert_file, "--etcd-key", e.key_file, "-o", "json")
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""


@pytest.mark.parametrize("tls_args", [
    pytest.param("ca-only", id="tls-without-client-cert"),
    pytest.param("plaintext", id="plaintext-against-tls"),
])
def test_ipam_show_refused_by_a_client_cert_auth_etcd(tls_etcd, tls_args):
    e = tls_etcd
    extra = ["--etcd-ca", e.ca_file] if tls_args == "ca-only" else []
    res = run("ipam", "show", "--etcd-endpoints", e.endpoint, "--etcd-timeout", "2", *extra)
    err = one_line_error(res)  # no gRPC C-core handshake noise (fixed in cli_ipam)
    assert err.startswith("Error: ") and e.endpoint in err and "TLS" in err


def test_ipam_show_with_half_a_client_certificate_is_a_usage_error(tls_etcd):
    e = tls_etcd
    res = run("ipam", "show", "--etcd-endpoints", e.endpoint, "--etcd-ca", e.ca_file,
              "--etcd-cert", e.cert_file)
    assert res.returncode == 2 and "--etcd-key" in res.stderr and "Traceback" not in res.stderr
