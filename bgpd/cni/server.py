"""The daemon's CNI server: serves ``noderouter-cni``'s fast path on a unix socket.

The plugin (``bgpd.cni.fast``) sends one JSON line — the CNI environment, its stdin
and its hostname — and reads one JSON line back: the exit code and the exact text
to print. The command runs here with the SAME code as the plugin's direct path
(``bgpd.cni.commands.serve_request``), so the answers cannot drift apart.

* A thread pool (``workers``) runs the commands. The workers share ONE ``Datastore``
  (one ``EtcdStore`` and ``Ipam``) per etcd/IPAM configuration, and its IPAM calls
  take turns on the Datastore's lock (``Ipam`` is not thread-safe). Issue 17: a store
  per thread made the threads race each other's compare-and-swaps on the node's
  block — each thread's cache was stale after every other thread's allocation, so
  concurrent ADDs conflicted, retried and backed off (an 8-way ADD took 6x a
  sequential one), and each new thread paid its own etcd connection. One IPAM call
  is one etcd transaction (~2-3 ms); the netlink work, which is most of a call,
  still runs in parallel. These stores are dedicated to CNI (never the daemon's
  own). They live until ``stop()``.
* Netlink: each command opens its sockets in this process's namespace; the pod
  side uses ``setns()`` on the worker thread only for the instant it opens the pod
  socket (``bgpd.cni.netns``). pyroute2's ``IPRoute(netns=...)`` would fork a
  helper process — never used here.
* The socket is root-only (mode 0600): it can create interfaces and hand out
  addresses. It is bound under a restrictive umask, so it is never more open.
* ``stop()`` closes the socket first (new plugin calls fall back to the direct
  path), then lets running commands finish: an ADD cut half-way would leave the
  runtime without an answer for work that was done.

Runnable on its own (tests and the CNI benchmark run it inside a node namespace)::

    python -m bgpd.cni.server --socket /run/noderouter/cni.sock [--workers 8]
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from bgpd.cni.fast import MAX_REQUEST
from bgpd.cni.protocol import CniError, Code
from config.logs import get_logger

log = get_logger("bgpd.cni.server")

DEFAULT_WORKERS = 8
READ_TIMEOUT = 10.0          # a client that connects and says nothing
MAX_BACKLOG = 256
# An oversized request is read to its end (discarded) so that its sender, still in
# sendall(), gets to read our answer; beyond this the connection is simply closed.
MAX_DISCARD = 16 * MAX_REQUEST


class RequestTooLarge(CniError):
    def __init__(self, size: int) -> None:
        super().__init__(Code.INVALID_CONFIG,
                         f"request larger than {MAX_REQUEST} bytes (read {size})")
        self.size = size


def _conn_key(conf) -> tuple:
    return (conf.etcd_endpoints, conf.etcd_ca, conf.etcd_cert, conf.etcd_key,
            conf.etcd_timeout, conf.node_name, conf.ipam_prefix)


class CniServer:
    def __init__(self, path: str, workers: int = DEFAULT_WORKERS, mode: int = 0o600,
                 hostname: str | None = None) -> None:
        self.path = path
        self.workers = int(workers)
        self.mode = mode
        self.hostname = hostname or socket.gethostname()
        self._sock: socket.socket | None = None
        self._ino: tuple[int, int] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._stores: dict[tuple, object] = {}   # conn key -> the shared Datastore
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.served = 0

    # ------------------------------------------------------------ lifecycle

    def start(self) -> CniServer:
        # Import the commands (structlog, bgpd.cni.protocol, ...) now, not in the first request.
        from bgpd.cni import commands as cni_commands  # noqa: F401

        os.makedirs(os.path.dirname(self.path) or ".", mode=0o755, exist_ok=True)
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)         # a stale socket from a previous run
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(self.path)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old)
        os.chmod(self.path, self.mode)
        st = os.stat(self.path)
        self._ino = (st.st_dev, st.st_ino)
        sock.listen(MAX_BACKLOG)
        self._sock = sock
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="cni")
        self._thread = threading.Thread(target=self._accept_loop, name="cni-accept",
                                        daemon=True)
        self._thread.start()
        log.info("cni_server_listening", path=self.path, mode=oct(self.mode),
                 workers=self.workers)
        return self

    def stop(self) -> None:
        self._stopping.set()
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self._unlink()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        with self._lock:
            stores, self._stores = list(self._stores.values()), {}
        conflicts = sum(ds.ipam_stats().get("conflicts", 0) for ds in stores)
        for ds in stores:
            ds.close()
        # etcd_connections: one per etcd/IPAM configuration; ipam_conflicts: lost
        # compare-and-swaps (against other nodes: this server's calls take turns).
        log.info("cni_server_stopped", served=self.served, etcd_connections=len(stores),
                 ipam_conflicts=conflicts)

    def _unlink(self) -> None:
        # Only our own socket: a newer daemon may already have bound the path.
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == self._ino:
            os.unlink(self.path)

    # ------------------------------------------------------------ serving

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            sock = self._sock
            if sock is None:
                return
            try:
                conn, _ = sock.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                log.exception("cni_accept_failed")
                continue
            try:
                assert self._pool is not None
                self._pool.submit(self._serve, conn)
            except RuntimeError:             # the pool is shutting down
                conn.close()
                return

    def _datastore(self, conf):
        from bgpd.cni.commands import Datastore

        key = _conn_key(conf)
        with self._lock:
            ds = self._stores.get(key)
            if ds is None:
                ds = self._stores[key] = Datastore(conf, lock=threading.RLock())
        return ds

    def _serve(self, conn: socket.socket) -> None:
        from bgpd.cni.commands import serve_request

        fds: list[int] = []
        with conn:
            try:
                conn.settimeout(READ_TIMEOUT)
                request = self._read(conn, fds)
                env = request.get("env")
                stdin = request.get("stdin")
                hostname = request.get("hostname") or self.hostname
                if not isinstance(env, dict) or not isinstance(stdin, str) \
                        or not all(isinstance(v, str) for v in env.values()) \
                        or not isinstance(hostname, str):
                    raise ValueError("request needs env (object of strings) and stdin (string)")
                netns_fd, netns_errno = _passed_netns(request, fds)
            except RequestTooLarge as exc:
                # Not "no answer" (the plugin's code 11, which the runtime retries
                # forever): a permanent error naming the limit (issue 12). Current
                # plugins never send one (they run such a call themselves).
                log.warning("cni_bad_request", error=str(exc))
                _close_all(fds)
                self._reply(conn, {}, 1, _too_large_error(exc.size))
                return
            except (OSError, ValueError) as exc:
                log.warning("cni_bad_request", error=str(exc))
                _close_all(fds)
                return                        # the plugin reports code 11
            try:
                code, out = serve_request(env, stdin.encode("utf-8", "surrogateescape"),
                                          hostname, self._datastore, netns_fd=netns_fd,
                                          netns_errno=netns_errno)
            finally:
                _close_all(fds)
            self.served += 1
            self._reply(conn, env, code, out)

    @staticmethod
    def _reply(conn: socket.socket, env: dict, code: int, out: str | None) -> None:
        try:
            conn.settimeout(READ_TIMEOUT)
            conn.sendall(json.dumps({"code": code, "stdout": out}).encode() + b"\n")
        except OSError as exc:
            # The plugin is gone (killed by the runtime's timeout): the runtime
            # will DEL what this ADD built.
            log.warning("cni_reply_lost", command=env.get("CNI_COMMAND"),
                        container=env.get("CNI_CONTAINERID"), error=str(exc))

    @staticmethod
    def _read(conn: socket.socket, fds: list[int]) -> dict:
        """The request line; file descriptors passed with it are appended to ``fds``
        (the caller closes them)."""
        buf = bytearray()
        while not buf.endswith(b"\n"):
            data, got, _flags, _addr = socket.recv_fds(conn, 65536, 4)
            fds.extend(got)
            if not data:
                break
            buf += data
            if len(buf) > MAX_REQUEST:
                size = len(buf)
                while not data.endswith(b"\n") and size <= MAX_DISCARD:
                    data = conn.recv(65536)
                    if not data:
                        break
                    size += len(data)
                raise RequestTooLarge(size)
        doc = json.loads(bytes(buf))
        if not isinstance(doc, dict):
            raise ValueError("request must be a JSON object")
        return doc


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


def _passed_netns(request: dict, fds: list[int]) -> tuple[int | None, int | None]:
    """(the pod netns fd the plugin passed, the errno of its failed open); see
    ``bgpd.cni.fast`` for the protocol. Stray fds stay in ``fds`` (closed after)."""
    errno_ = request.get("netns_errno")
    if errno_ is not None and (isinstance(errno_, bool) or not isinstance(errno_, int)):
        raise ValueError(f"netns_errno must be an integer, got {errno_!r:.50}")
    if request.get("netns_fd") is True:
        if len(fds) == 1:
            return fds[0], None
        # Unusable: the daemon opens the path itself (the pre-issue-16 way), which
        # works whenever its mount namespace shows the runtime's netns.
        log.warning("cni_netns_fd_missing", fds=len(fds),
                    netns=(request.get("env") or {}).get("CNI_NETNS"))
    return None, errno_


def _too_large_error(size: int) -> str:
    from bgpd.cni.protocol import Code, dumps, error_object

    return dumps(error_object(
        Code.INVALID_CONFIG,
        f"the request ({size} bytes or more) is larger than the noderouter daemon's "
        f"{MAX_REQUEST}-byte limit",
        "the network configuration is too large for the daemon socket; shrink it, or "
        "set daemon_socket to null so the plugin runs the command itself"))


def serve_forever(path: str, workers: int = DEFAULT_WORKERS,
                  ready: Callable[[], None] | None = None) -> None:
    """Run a server until SIGTERM/SIGINT (the module's command line)."""
    import signal

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = CniServer(path, workers).start()
    if ready is not None:
        ready()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    import argparse

    from config.logs import setup_logging

    p = argparse.ArgumentParser(prog="python -m bgpd.cni.server",
                                description="Serve noderouter-cni's fast path (no BGP, "
                                            "no routes: the CNI socket only).")
    p.add_argument("--socket", required=True, help="unix socket path")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    setup_logging(args.log_level, "json")
    serve_forever(args.socket, args.workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
