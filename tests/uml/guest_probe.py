"""Run tunnels' capability probe in the current namespace; print the outcome.

Usage: guest_probe.py KIND   (ipip | vxlan)
Prints "ok" or "<ExceptionName>: <message>"; exit 0 either way, so the test
can judge the message itself.
"""

from __future__ import annotations

import sys

import structlog
from pyroute2 import IPRoute

from tunnels.devices import probe_kind
from tunnels.errors import TunnelError


def main(argv: list[str]) -> int:
    # stdout carries the result; our code's structlog lines go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    with IPRoute() as ipr:
        try:
            probe_kind(ipr, argv[1])
            print("ok")
        except TunnelError as exc:
            print(f"{type(exc).__name__}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
