"""Steady traffic and route watching for the fault tests.

``PingFlow`` runs ``ping -i 0.01`` between two lab addresses (the steady pod-to-pod
flow of the fault suite) and reports packets sent and lost. ``RouteWatch`` runs
``ip monitor route`` in a namespace and reports every route of our protocol that
was deleted or added while it watched: "0 kernel routes deleted and re-added" is
then a fact read from the kernel, not a guess.
"""

from __future__ import annotations

import os
import re
import signal
import tempfile
from dataclasses import dataclass, field

from lab.procs import Daemon, wait_for

_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")


@dataclass
class FlowResult:
    sent: int
    received: int

    @property
    def lost(self) -> int:
        return self.sent - self.received


@dataclass
class PingFlow:
    netns: str
    destination: str
    interval: float = 0.01
    daemon: Daemon | None = field(default=None, repr=False)

    def start(self) -> PingFlow:
        fd, log = tempfile.mkstemp(prefix="nr-flow-", suffix=".log")
        os.close(fd)
        self.daemon = Daemon("ping", ["ping", "-q", "-i", str(self.interval), "-W", "1",
                                      self.destination], netns=self.netns, log_path=log).start()
        return self

    def stop(self) -> FlowResult:
        """SIGINT makes ping print its summary; packets in flight get 1 s to return."""
        assert self.daemon is not None and self.daemon.proc is not None
        self.daemon.signal(signal.SIGINT)
        self.daemon.proc.wait(10)
        text = open(self.daemon.log_path).read()
        os.unlink(self.daemon.log_path)
        m = _SUMMARY.search(text)
        if not m:
            raise RuntimeError(f"ping {self.destination} printed no summary: {text[-300:]}")
        return FlowResult(int(m.group(1)), int(m.group(2)))


@dataclass
class RouteWatch:
    netns: str
    protocol: int = 73
    daemon: Daemon | None = field(default=None, repr=False)

    def start(self) -> RouteWatch:
        fd, log = tempfile.mkstemp(prefix="nr-routes-", suffix=".log")
        os.close(fd)
        self.daemon = Daemon("ip-monitor", ["ip", "-o", "monitor", "route"], netns=self.netns,
                             log_path=log).start()
        # ip monitor subscribes at once; give it a moment to be listening.
        wait_for(lambda: self.daemon.alive(), 2, what="ip monitor")
        return self

    def stop(self) -> dict[str, list[str]]:
        assert self.daemon is not None
        self.daemon.stop(2)
        lines = open(self.daemon.log_path).read().splitlines()
        os.unlink(self.daemon.log_path)
        ours = [line for line in lines if f"proto {self.protocol}" in line]
        return {"deleted": [line for line in ours if line.startswith("Deleted")],
                "added": [line for line in ours if not line.startswith("Deleted")]}
