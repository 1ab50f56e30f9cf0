"""The CLI side of the status API: one request, one reply, clear errors."""

from __future__ import annotations

import json
import socket

DEFAULT_SOCKET = "/run/noderouter/status.sock"


class StatusUnavailable(RuntimeError):
    """The daemon's status socket cannot be used; the message says why and what to do."""


def query(path: str, view: str, timeout: float = 5.0, **params) -> object:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(json.dumps({"get": view, **params}).encode() + b"\n")
            chunks = []
            while True:
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
                if chunk.endswith(b"\n"):
                    break
    except FileNotFoundError:
        raise StatusUnavailable(f"status socket {path} does not exist: is noderouter running "
                                f"on this node? (systemctl status noderouter)") from None
    except PermissionError:
        raise StatusUnavailable(f"permission denied on status socket {path}: run as root or "
                                f"as a member of its group") from None
    except ConnectionRefusedError:
        raise StatusUnavailable(f"nothing listens on status socket {path}: the daemon "
                                f"stopped and left a stale socket") from None
    except TimeoutError:
        raise StatusUnavailable(f"status socket {path} did not answer within {timeout}s") from None
    except OSError as exc:
        raise StatusUnavailable(f"status socket {path}: {exc.strerror or exc}") from None
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        raise StatusUnavailable(f"status socket {path} sent a malformed reply") from None
    if not reply.get("ok"):
        raise StatusUnavailable(f"daemon refused {view!r}: {reply.get('error')}")
    return reply.get("data")
