"""The daemon's local status API: JSON over a unix socket.

Protocol: the client sends one JSON line ``{"get": "<view>", ...}`` and reads one
JSON line back: ``{"ok": true, "data": ...}`` or ``{"ok": false, "error": "..."}``.
Views are registered by the daemon (``status``, ``peers``, ``routes``, ...); each
is a callable returning JSON-able data from the daemon's own state (never a
secret: the daemon's views only use redacted config).

The socket is created with the configured mode (default 0660) and owner/group,
and an umask-safe sequence (bind under a restrictive umask, then chmod/chown),
so there is no window where it is world-accessible.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import socketserver
import threading
from collections.abc import Callable

from config.logs import get_logger

log = get_logger("bgpd.status")
MAX_REQUEST = 64 * 1024


class _Handler(socketserver.StreamRequestHandler):
    # A client that connects and says nothing must not hold a thread forever.
    timeout = 10

    def handle(self) -> None:
        server: StatusServer = self.server.owner  # type: ignore[attr-defined]
        try:
            line = self.rfile.readline(MAX_REQUEST)
        except TimeoutError:
            return
        try:
            request = json.loads(line or b"{}")
            if not isinstance(request, dict):
                raise ValueError("request must be a JSON object")
            view = request.get("get")
            fn = server.views.get(view)
            if fn is None:
                reply = {"ok": False, "error": f"unknown view {view!r}; "
                                               f"known: {sorted(server.views)}"}
            else:
                reply = {"ok": True, "data": fn(request)}
        except (ValueError, TypeError) as exc:
            reply = {"ok": False, "error": f"bad request: {exc}"}
        except Exception as exc:  # noqa: BLE001 - a view bug must not kill the server
            log.exception("status_view_failed")
            reply = {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}
        self.wfile.write(json.dumps(reply, default=str).encode() + b"\n")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class StatusServer:
    def __init__(self, path: str, mode: int = 0o660, owner: str = "root",
                 group: str = "root") -> None:
        self.path = path
        self.mode = mode
        self.owner = owner
        self.group = group
        self.views: dict[str, Callable[[dict], object]] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def register(self, name: str, fn: Callable[[dict], object]) -> None:
        self.views[name] = fn

    def start(self) -> StatusServer:
        uid = pwd.getpwnam(self.owner).pw_uid
        gid = grp.getgrnam(self.group).gr_gid
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        if os.path.exists(self.path):
            os.unlink(self.path)  # a stale socket from a previous run
        old = os.umask(0o177)
        try:
            self._server = _Server(self.path, _Handler)
        finally:
            os.umask(old)
        os.chown(self.path, uid, gid)
        os.chmod(self.path, self.mode)
        self._server.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="status-api", daemon=True)
        self._thread.start()
        log.info("status_api_listening", path=self.path, mode=oct(self.mode),
                 owner=self.owner, group=self.group)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if os.path.exists(self.path):
            os.unlink(self.path)
