"""Network namespaces, veths and bridges for the lab and the kernel tests.

All names carry a per-run prefix so two runs (or a crashed earlier run) cannot
collide; ``NetnsSet`` refuses to create a name that already exists and deletes
exactly the names it created.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Sequence

from lab.procs import LabError, netns_argv

NETNS_DIR = "/run/netns"


def run_prefix(tag: str = "nr") -> str:
    """A short unique prefix, e.g. ``nr3fa9``: interface names are limited to 15 chars."""
    return f"{tag}{secrets.token_hex(2)}"


def sh(argv: Sequence[str], netns: str | None = None, check: bool = True,
       input: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a command (inside ``netns`` when given); raise LabError naming it on failure."""
    full = netns_argv(netns, argv)
    res = subprocess.run(full, capture_output=True, text=True, input=input, timeout=timeout)
    if check and res.returncode != 0:
        where = f" in netns {netns}" if netns else ""
        raise LabError(f"{' '.join(argv)}{where} failed ({res.returncode}): "
                       f"{res.stderr.strip() or res.stdout.strip()}")
    return res


def netns_exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


class NetnsSet:
    """Namespaces created by one owner (a test or a lab run), deleted by exact name."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def add(self, name: str) -> str:
        if netns_exists(name):
            raise LabError(f"network namespace {name!r} already exists; refusing to reuse it "
                           f"(another run? delete it with: ip netns delete {name})")
        sh(["ip", "netns", "add", name])
        self.names.append(name)
        # Loopback up: daemons inside bind to 127.0.0.1.
        sh(["ip", "link", "set", "lo", "up"], netns=name)
        return name

    def delete_all(self) -> list[str]:
        """Delete every namespace we created; returns errors instead of raising."""
        errors = []
        for name in reversed(self.names):
            res = sh(["ip", "netns", "delete", name], check=False)
            if res.returncode != 0 and netns_exists(name):
                errors.append(f"{name}: {res.stderr.strip()}")
        self.names.clear()
        return errors


def veth_pair(a: str, a_ns: str, b: str, b_ns: str, mtu: int | None = None) -> None:
    """Create veth a<->b with each end moved into its namespace.

    The pair is created inside ``a_ns`` (never in the root namespace) and the
    peer end moved to ``b_ns``.
    """
    argv = ["ip", "link", "add", a, "type", "veth", "peer", "name", b, "netns", b_ns]
    sh(argv, netns=a_ns)
    for dev, ns in ((a, a_ns), (b, b_ns)):
        if mtu:
            sh(["ip", "link", "set", dev, "mtu", str(mtu)], netns=ns)
        sh(["ip", "link", "set", dev, "up"], netns=ns)


def sysctl(netns: str, key: str, value: str) -> None:
    sh(["sysctl", "-q", "-w", f"{key}={value}"], netns=netns)


def switch_with_hosts(owned: NetnsSet, prefix: str,
                      hosts: dict[str, tuple[str, str]], prefixlen: int = 24) -> dict[str, str]:
    """One L2 segment: a switch namespace ``<prefix>-sw`` with bridge ``br0`` and, per host
    tag (one letter), a namespace ``<prefix>-<suffix>`` attached by a veth carrying
    ``address/prefixlen``. ``hosts`` maps tag → (namespace suffix, address); returns
    tag → namespace name."""
    sw = owned.add(f"{prefix}-sw")
    names = {tag: owned.add(f"{prefix}-{suffix}") for tag, (suffix, _) in hosts.items()}
    sh(["ip", "link", "add", "br0", "type", "bridge"], netns=sw)
    sh(["ip", "link", "set", "br0", "up"], netns=sw)
    for tag, (_, address) in hosts.items():
        veth_pair(f"{prefix}{tag}", names[tag], f"s{tag}", sw)
        sh(["ip", "link", "set", f"s{tag}", "master", "br0"], netns=sw)
        sh(["ip", "addr", "add", f"{address}/{prefixlen}", "dev", f"{prefix}{tag}"],
           netns=names[tag])
    return names
