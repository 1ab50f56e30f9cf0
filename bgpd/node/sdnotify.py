"""systemd's sd_notify protocol without libsystemd: one datagram to $NOTIFY_SOCKET.

Messages we send: READY=1 after the first full sync, RELOADING=1 on SIGHUP
(then READY=1 again), STOPPING=1 on SIGTERM, WATCHDOG=1 from the main loop
(only while the loop is alive, so a stuck loop gets restarted), STATUS=<line>.
Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        # "@name" is an abstract socket: the leading NUL is spelled "@" in the variable.
        self.address = ("\0" + path[1:]) if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None
        self._last_watchdog = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *fields: str) -> bool:
        if not self.address:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            try:
                s.connect(self.address)
                s.sendall("\n".join(fields).encode())
            except OSError:
                return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        # systemd ≥ 253 wants MONOTONIC_USEC with RELOADING=1 (Type=notify-reload).
        usec = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6)
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self, now: float) -> bool:
        """Ping the watchdog at most every half interval; ``now`` is monotonic seconds."""
        if self.watchdog_interval is None or now - self._last_watchdog < self.watchdog_interval:
            return False
        self._last_watchdog = now
        return self.notify("WATCHDOG=1")
