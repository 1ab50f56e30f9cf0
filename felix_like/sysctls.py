"""Sysctls inside the node's namespace, written only when they differ.

Keys are path tuples, not dotted strings: interface names may contain dots
(``vxlan.nr``) which the dotted sysctl syntax would split.

``netns=None`` means "the namespace this process runs in" (the daemon runs
inside the node's namespace); a name runs ``ip netns exec`` so tests can drive a
namespace from outside without this process ever switching namespace.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

import structlog

from felix_like.errors import DataplaneError

log = structlog.get_logger("felix_like.sysctls")


class SysctlError(DataplaneError, RuntimeError):
    pass


def conf_key(ifname: str, leaf: str) -> tuple[str, ...]:
    return ("net", "ipv4", "conf", ifname, leaf)


FORWARDING = ("net", "ipv4", "ip_forward")


@dataclass
class Sysctls:
    netns: str | None = None

    def _path(self, key: tuple[str, ...]) -> str:
        if any("/" in part or part in ("", ".", "..") for part in key):
            raise SysctlError(f"bad sysctl key {key!r}")
        return os.path.join("/proc/sys", *key)

    def get(self, key: tuple[str, ...]) -> str | None:
        path = self._path(key)
        if self.netns is None:
            try:
                with open(path) as f:
                    return f.read().strip()
            except FileNotFoundError:
                return None
        res = subprocess.run(["ip", "netns", "exec", self.netns, "cat", path],
                             capture_output=True, text=True)
        return res.stdout.strip() if res.returncode == 0 else None

    def set(self, key: tuple[str, ...], value: str) -> bool:
        """Write ``value`` if different; True if written. Missing key -> SysctlError."""
        current = self.get(key)
        if current is None:
            raise SysctlError(f"sysctl {'/'.join(key)} does not exist"
                              + (f" in netns {self.netns}" if self.netns else ""))
        if current == value:
            return False
        path = self._path(key)
        if self.netns is None:
            with open(path, "w") as f:
                f.write(value)
        else:
            res = subprocess.run(["ip", "netns", "exec", self.netns, "tee", path],
                                 input=value, capture_output=True, text=True)
            if res.returncode != 0:
                raise SysctlError(f"writing {path} in netns {self.netns} failed: "
                                  f"{res.stderr.strip()}")
        log.info("sysctl_set", key="/".join(key), old=current, new=value)
        return True

    def ensure(self, values: Mapping[tuple[str, ...], str]) -> list[tuple[str, ...]]:
        return [k for k, v in values.items() if self.set(k, v)]


def node_sysctls(rp_filter: str | None = None) -> dict[tuple[str, ...], str]:
    """Node-wide settings: forwarding on; rp_filter only when configured.

    rp_filter: strict (1) drops VXLAN-decapsulated packets whose source route
    points elsewhere on asymmetric paths; deployments choose loose (2) there.
    """
    out = {FORWARDING: "1"}
    if rp_filter is not None:
        out[conf_key("all", "rp_filter")] = rp_filter
        out[conf_key("default", "rp_filter")] = rp_filter
    return out
