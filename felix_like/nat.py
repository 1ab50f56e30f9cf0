"""NAT outgoing: one nftables table of ours, replaced atomically, removed idempotently.

Rule: masquerade traffic whose source is in a pool with NAT outgoing and whose
destination is outside every pool (pod-to-pod traffic keeps its addresses).
The table is created and replaced in one ``nft -f`` transaction ("add, delete,
define" works whether or not the table existed), so a rerun converges and a
reader never sees a half-written table.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field

import structlog

from felix_like.errors import DataplaneError

log = structlog.get_logger("felix_like.nat")

DEFAULT_TABLE = "noderouter_nat"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")


class NatError(DataplaneError, RuntimeError):
    pass


def _cidrs(pools: Iterable[str]) -> list[str]:
    # Normalised and validated: these strings are spliced into an nft script.
    return sorted({str(ipaddress.IPv4Network(p)) for p in pools})


def render(table: str, all_pools: Iterable[str], masq_pools: Iterable[str]) -> str:
    """The nft script that (re)creates our table (pure)."""
    if not _NAME.match(table):
        raise NatError(f"bad nftables table name {table!r}")
    allp = _cidrs(all_pools)
    masq = _cidrs(masq_pools)
    if not masq:
        return remove_script(table)
    missing = [m for m in masq if m not in allp]
    allp = sorted(set(allp) | set(missing))
    return (
        f"table ip {table} {{}}\n"
        f"delete table ip {table}\n"
        f"table ip {table} {{\n"
        f"  set all_pools {{ type ipv4_addr; flags interval; elements = {{ {', '.join(allp)} }} }}\n"
        f"  set masq_pools {{ type ipv4_addr; flags interval; elements = {{ {', '.join(masq)} }} }}\n"
        f"  chain postrouting {{\n"
        f"    type nat hook postrouting priority srcnat; policy accept;\n"
        f"    ip saddr @masq_pools ip daddr != @all_pools counter masquerade\n"
        f"  }}\n"
        f"}}\n")


def remove_script(table: str) -> str:
    # Declaring the table first makes the delete succeed when it is absent.
    return f"table ip {table} {{}}\ndelete table ip {table}\n"


@dataclass
class NatOutgoing:
    """Manager: ``on_update(all_pools, masq_pools)`` records; ``complete_deferred_work`` applies."""

    netns: str | None = None
    table: str = DEFAULT_TABLE
    _want: tuple[tuple[str, ...], tuple[str, ...]] | None = field(default=None, init=False)
    _applied: tuple[tuple[str, ...], tuple[str, ...]] | None = field(default=None, init=False)

    def on_update(self, all_pools: Iterable[str], masq_pools: Iterable[str]) -> None:
        self._want = (tuple(_cidrs(all_pools)), tuple(_cidrs(masq_pools)))

    def queue_resync(self) -> None:
        self._applied = None

    def complete_deferred_work(self) -> bool:
        if self._want is None or self._want == self._applied:
            return False
        self._run(render(self.table, *self._want))
        self._applied = self._want
        log.info("nat_outgoing_applied", table=self.table, masq_pools=list(self._want[1]))
        return True

    def remove(self) -> None:
        self._run(remove_script(self.table))
        self._applied = self._want = None
        log.info("nat_outgoing_removed", table=self.table)

    def _run(self, script: str) -> None:
        argv = ["nft", "-f", "-"]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        res = subprocess.run(argv, input=script, capture_output=True, text=True)
        if res.returncode != 0:
            raise NatError(f"nft failed for table {self.table}: {res.stderr.strip()}")
