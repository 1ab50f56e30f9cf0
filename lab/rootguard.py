"""Snapshot of a network namespace's state, to prove tests leave the root namespace alone.

The pytest session hook in tests/conftest.py snapshots the root namespace before
the session and fails the session if anything differs afterwards. The snapshot
can target another namespace (``netns=``) so the guard itself is tested without
touching the root namespace.
"""

from __future__ import annotations

import difflib
import re
import subprocess

from lab.procs import netns_argv

# The sysctls noderouter sets inside node namespaces; none may change in the root.
WATCHED_SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.forwarding",
    "net.ipv4.conf.all.rp_filter",
    "net.ipv4.conf.default.rp_filter",
    "net.ipv4.conf.all.proxy_arp",
    "net.ipv6.conf.all.forwarding",
    "net.core.fb_tunnels_only_for_init_net",
)

_COMMANDS = {
    "links": ["ip", "-o", "link", "show"],
    "addresses": ["ip", "-o", "address", "show"],
    "routes4": ["ip", "-4", "route", "show", "table", "all"],
    "routes6": ["ip", "-6", "route", "show", "table", "all"],
    "rules4": ["ip", "-4", "rule", "show"],
    "rules6": ["ip", "-6", "rule", "show"],
    "neigh_permanent": ["ip", "neigh", "show", "nud", "permanent"],
    "nft": ["nft", "list", "ruleset"],
}

# Counters and lifetimes change on their own; they are not state we could leak.
_VOLATILE = [
    re.compile(r"valid_lft \S+ preferred_lft \S+"),
    re.compile(r"\bqlen \d+"),
]


def _run(argv: list[str], netns: str | None) -> str:
    res = subprocess.run(netns_argv(netns, argv), capture_output=True, text=True, timeout=30)
    out = res.stdout if res.returncode == 0 else f"<{argv[0]} failed: {res.stderr.strip()}>"
    for rx in _VOLATILE:
        out = rx.sub("", out)
    return out


def snapshot(netns: str | None = None) -> dict[str, str]:
    snap = {key: _run(argv, netns) for key, argv in _COMMANDS.items()}
    values = []
    for key in WATCHED_SYSCTLS:
        res = subprocess.run(netns_argv(netns, ["sysctl", "-n", key]),
                             capture_output=True, text=True)
        values.append(f"{key} = {res.stdout.strip() if res.returncode == 0 else '<absent>'}")
    snap["sysctls"] = "\n".join(values)
    return snap


def diff(before: dict[str, str], after: dict[str, str]) -> str:
    """A unified diff per section that changed; empty when nothing did."""
    parts = []
    for key in before:
        if before[key] != after.get(key):
            lines = difflib.unified_diff(before[key].splitlines(), after.get(key, "").splitlines(),
                                         f"{key} before", f"{key} after", lineterm="")
            parts.append("\n".join(lines))
    return "\n".join(parts)
