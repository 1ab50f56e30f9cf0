"""A small interpreter for the nftables text our renderer emits (tests only).

It runs a new connection's first packet through the rendered ``forward`` (pod to
pod) chain the way the kernel would: jump/goto/return, verdict maps, the mark,
interval sets (CIDR containment), concatenated (address . protocol . port) sets.
Anything it does not understand raises, so a renderer change cannot silently
turn into "no match". The kernel test checks the same text against the kernel.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass


class Unsupported(Exception):
    pass


@dataclass
class Packet:
    iif: str
    oif: str
    saddr: str
    daddr: str
    proto: str          # tcp | udp
    dport: int
    mark: int = 0


class Ruleset:
    def __init__(self, text: str):
        self.sets: dict[str, list[str]] = {}
        self.maps: dict[str, dict[str, tuple[str, str]]] = {}
        self.chains: dict[str, list[str]] = {}
        self._parse(text)

    def _parse(self, text: str) -> None:
        current = None
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#") or line in ("table inet noderouter {}",
                                                             "delete table inet noderouter",
                                                             "table inet noderouter {"):
                continue
            m = re.match(r"add element inet noderouter (\S+) \{ (.*) \}$", line)
            if m:
                self.sets.setdefault(m.group(1), []).extend(x.strip() for x in m.group(2).split(","))
                continue
            m = re.match(r"set (\S+) \{ type [^;]+;", line)
            if m:
                self.sets.setdefault(m.group(1), [])
                continue
            m = re.match(r'map (\S+) \{ type ifname : verdict;(?: elements = \{ (.*) \})? \}$', line)
            if m:
                entries = {}
                for item in filter(None, (m.group(2) or "").split(",")):
                    k, _, v = item.partition(":")
                    verb, target = v.split()
                    entries[k.strip().strip('"')] = (verb, target)
                self.maps[m.group(1)] = entries
                continue
            m = re.match(r"chain (\S+) \{$", line)
            if m:
                current = m.group(1)
                self.chains[current] = []
                continue
            if line == "}":
                current = None
                continue
            if current is None:
                raise Unsupported(f"line outside a chain: {line}")
            if line.startswith("type filter hook"):
                continue
            self.chains[current].append(line)

    # --- matching -------------------------------------------------------------------
    def _in_set(self, name: str, value) -> bool:
        for elem in self.sets[name]:
            if isinstance(value, tuple):
                ip, proto, port = elem.split(" . ")
                if (ip, proto, int(port)) == value:
                    return True
            elif ipaddress.ip_address(value) in ipaddress.ip_network(elem):
                return True
        return False

    def _run_rule(self, rule: str, pkt: Packet):
        """None = no match / fell through; else a verdict tuple."""
        toks = shlex.split(rule)
        i = 0
        while i < len(toks):
            t = toks[i]
            if t in ("iifname", "oifname") and toks[i + 1] == "vmap":
                key = pkt.iif if t == "iifname" else pkt.oif
                entry = self.maps[toks[i + 2].lstrip("@")].get(key)
                return entry  # (verb, chain) or None
            if t in ("iifname", "oifname"):
                name, want = (pkt.iif if t == "iifname" else pkt.oif), toks[i + 1]
                ok = name.startswith(want[:-1]) if want.endswith("*") else name == want
                if not ok:
                    return None
                i += 2
            elif t == "ct" and toks[i + 1] == "state":
                return None          # a first packet is neither established nor invalid
            elif t == "icmpv6":
                return None          # tcp/udp packets only
            elif t == "meta" and toks[i + 1:i + 5] == ["mark", "set", "meta", "mark"]:
                op, val = toks[i + 5], int(toks[i + 6], 16)
                pkt.mark = pkt.mark & val if op == "&" else pkt.mark | val
                i += 7
            elif t == "meta" and toks[i + 1] == "mark" and toks[i + 2] == "&":
                if pkt.mark & int(toks[i + 3], 16) != int(toks[i + 5], 16):
                    return None
                i += 6
            elif t in ("ip", "ip6") and toks[i + 1] in ("saddr", "daddr") and \
                    toks[i + 2] == ".":
                if (t == "ip6") != (":" in pkt.daddr):
                    return None
                if toks[i + 2:i + 8] != [".", "meta", "l4proto", ".", "th", "dport"]:
                    raise Unsupported(rule)
                if not self._in_set(toks[i + 8].lstrip("@"), (pkt.daddr, pkt.proto, pkt.dport)):
                    return None
                i += 9
            elif t in ("ip", "ip6") and toks[i + 1] in ("saddr", "daddr"):
                addr = pkt.saddr if toks[i + 1] == "saddr" else pkt.daddr
                if (t == "ip6") != (":" in addr):
                    return None
                if not self._in_set(toks[i + 2].lstrip("@"), addr):
                    return None
                i += 3
            elif t == "meta" and toks[i + 1] == "l4proto":
                if pkt.proto != toks[i + 2]:
                    return None
                i += 3
            elif t == "th" and toks[i + 1] == "dport":
                lo, _, hi = toks[i + 2].partition("-")
                if not int(lo) <= pkt.dport <= int(hi or lo):
                    return None
                i += 3
            elif t == "counter":
                i += 1
            elif t == "comment":
                i += 2
            elif t in ("accept", "drop", "return"):
                return (t, None)
            elif t in ("jump", "goto"):
                return (t, toks[i + 1])
            else:
                raise Unsupported(f"{t!r} in {rule!r}")
        return None

    def run_chain(self, name: str, pkt: Packet, depth: int = 0) -> str | None:
        """'accept' | 'drop' | None (returned / fell off the end)."""
        if depth > 16:
            raise Unsupported("chain recursion")
        for rule in self.chains[name]:
            verdict = self._run_rule(rule, pkt)
            if verdict is None:
                continue
            verb, target = verdict
            if verb in ("accept", "drop"):
                return verb
            if verb == "return":
                return None
            result = self.run_chain(target, pkt, depth + 1)
            if result is not None:
                return result
            if verb == "goto":
                return None
        return None

    def forward(self, pkt: Packet) -> bool:
        """Does the first packet of this connection pass the forward hook?"""
        return self.run_chain("forward", pkt) != "drop"
