"""The plugin's fast path: hand the whole CNI call to the local daemon.

A plugin process that imports structlog, etcd3/grpc and pyroute2 pays ~400 ms before
it does any work; the daemon has them loaded, an etcd connection open and an
``Ipam`` with warm caches. So ``noderouter-cni`` first sends the call to the
daemon's CNI socket (``bgpd.cni.server``) and prints the daemon's answer. This
module imports only ``os``, ``sys``, ``_socket`` and ``bgpd.cni.litejson`` (issue 17:
``json`` and ``socket`` import ``re`` and ``enum``, ~10 ms of CPU per plugin start
together; their C cores ``_json`` and ``_socket`` are all the fast path needs).

Protocol (one request per connection, one JSON line each way)::

    -> {"env": {"CNI_COMMAND": ..., ...}, "stdin": "<the network config>",
        "hostname": "<the plugin's hostname>",
        "netns_fd": true            (ADD/CHECK: an fd of CNI_NETNS rides along) |
        "netns_errno": <errno>}     (ADD/CHECK: the plugin could not open CNI_NETNS)
    <- {"code": <exit code>, "stdout": "<the document to print>" | null}

The pod netns travels as a file descriptor (SCM_RIGHTS on the request's first bytes),
not only as a path (issue 16): the runtime and the daemon may see different mount
namespaces (a daemon in its own container, or started before the runtime made the
netns bind mount), and a path that is a netns for the runtime is then missing — or an
empty file — for the daemon. The plugin runs where the runtime does, so what it opens
is the namespace the runtime meant. A daemon that cannot use the fd opens the path.

When to fall back (``try_daemon`` returns None, the caller runs the command itself):
the conf's ``daemon_socket`` is ``null``/``""``, stdin is not a JSON object (the
direct path then reports the error), the request is larger than the daemon reads
(``MAX_REQUEST``: the daemon would drop it, and a code 11 for it would be retried
forever — issue 12), or nothing accepts the connection (socket missing, refused, not
a socket) — the daemon restarting must not stop pods from
starting (see ``bgpd.cni.protocol``). Once the request is sent there is no fallback: the
daemon may have done part of the work, and running the command again here could
race it. A daemon that drops the connection without answering gets code 11 (try
again later); the runtime retries.
"""

from __future__ import annotations

import _socket
import os
import sys

from bgpd.cni import litejson

DEFAULT_SOCKET = "/run/noderouter/cni.sock"
CONF_KEY = "daemon_socket"
# The environment the commands read (bgpd.cni.protocol.parse_env / parse_conf / cni_main).
# Commands whose CNI_NETNS the daemon opens (DEL never needs the pod's namespace).
NETNS_COMMANDS = ("ADD", "CHECK")
ENV_KEYS = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS",
            "CNI_PATH", "NODEROUTER_NODE_NAME", "NODEROUTER_ETCD_ENDPOINTS")
TRY_AGAIN_LATER = 11
# Bounded so a wedged daemon cannot hold the runtime forever; an ADD that waits on
# a contended etcd stays far below it (etcd_timeout bounds each attempt).
REPLY_TIMEOUT = 120.0
MAX_REPLY = 16 * 1024 * 1024
MAX_REQUEST = 4 * 1024 * 1024    # the daemon's limit on one request line (bgpd.cni.server)


def socket_path(stdin: bytes) -> str | None:
    """The daemon socket the conf names (default ``DEFAULT_SOCKET``), or None."""
    try:
        # UTF-8 only (the daemon's full parser rejects UTF-16/32: the direct path
        # then reports it).
        doc = litejson.loads(stdin.decode("utf-8"))
    except ValueError:                   # UnicodeDecodeError included
        return None
    if not isinstance(doc, dict):
        return None
    path = doc.get(CONF_KEY, DEFAULT_SOCKET)
    return path if isinstance(path, str) and path else None


def _error(stdin: bytes, msg: str, details: str) -> str:
    try:
        version = litejson.loads(stdin.decode("utf-8")).get("cniVersion")
    except (ValueError, AttributeError):
        version = None
    return litejson.dumps({"cniVersion": version if isinstance(version, str) else "1.1.0",
                           "code": TRY_AGAIN_LATER, "msg": msg, "details": details},
                          item_sep=",", key_sep=": ")


def open_pod_netns(env: dict[str, str]) -> tuple[int | None, int | None]:
    """(fd of CNI_NETNS, None) for the daemon, or (None, errno) when the plugin cannot
    open it, or (None, None) when the command needs no netns or the path is not
    absolute (the daemon's validation reports that)."""
    if env.get("CNI_COMMAND", "").strip().upper() not in NETNS_COMMANDS:
        return None, None
    netns = env.get("CNI_NETNS", "")
    if not netns.startswith("/"):
        return None, None
    try:
        return os.open(netns, os.O_RDONLY | os.O_CLOEXEC), None
    except OSError as exc:
        return None, exc.errno


def call(path: str, env: dict[str, str], stdin: bytes,
         hostname: str) -> tuple[int, str | None] | None:
    """(exit code, stdout text) from the daemon at ``path``; None if nothing accepts
    or the request is too large for it (nothing was sent: the caller runs the command)."""
    request: dict = {"env": {k: env[k] for k in ENV_KEYS if k in env},
                     "stdin": stdin.decode("utf-8", "surrogateescape"), "hostname": hostname}
    netns_fd, netns_errno = open_pod_netns(env)
    if netns_fd is not None:
        request["netns_fd"] = True
    elif netns_errno is not None:
        request["netns_errno"] = netns_errno
    # ASCII: every non-ASCII character (a lone surrogate too) becomes a \u escape.
    payload = litejson.dumps(request).encode("ascii") + b"\n"
    if len(payload) > MAX_REQUEST:
        if netns_fd is not None:
            os.close(netns_fd)
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            sock.connect(path)
        except OSError:
            return None       # missing, refused, not a socket: the daemon is not there
        sock.settimeout(REPLY_TIMEOUT)
        try:
            if netns_fd is not None:
                # The fd rides on the first bytes; sendmsg may send less than all.
                # socket.send_fds without the socket module: one SCM_RIGHTS int.
                sent = sock.sendmsg([payload], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                                                 netns_fd.to_bytes(4, sys.byteorder))])
                if sent < len(payload):
                    # Not an empty send: a daemon that already answered (a fast error)
                    # and closed would turn it into EPIPE and lose its answer.
                    sock.sendall(payload[sent:])
            else:
                sock.sendall(payload)
            chunks = []
            size = 0
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
                size += len(data)
                if data.endswith(b"\n") or size > MAX_REPLY:
                    break
            reply = litejson.loads(b"".join(chunks).decode("utf-8"))
            code = reply["code"]
            out = reply["stdout"]
            if not isinstance(code, int) or not (out is None or isinstance(out, str)):
                raise ValueError(f"unexpected reply {reply!r:.200}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return 1, _error(stdin, f"the noderouter daemon did not answer on {path}",
                             f"{type(exc).__name__}: {exc}")
        return code, out
    finally:
        sock.close()
        if netns_fd is not None:
            os.close(netns_fd)


def try_daemon(stdin: bytes, env: dict[str, str] | None = None) -> int | None:
    """Serve this call through the daemon and print its answer; returns the exit
    code, or None when the daemon is not there (the caller runs the direct path)."""
    path = socket_path(stdin)
    if path is None:
        return None
    res = call(path, dict(os.environ if env is None else env), stdin, _socket.gethostname())
    if res is None:
        return None
    code, out = res
    if out is not None:
        sys.stdout.write(out + "\n")
    sys.stdout.flush()
    return code
