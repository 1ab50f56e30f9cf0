"""Render a ``PolicyPlan`` as nftables text (pure): one ``table inet noderouter``.

Layout (Felix's, in nftables form; shared/POLICY.md section 2)::

  forward (hook)  iifname "nrw*" -> jump from-wl-dispatch   (egress of the sender)
                  oifname "nrw*" -> jump to-wl-dispatch     (ingress of the receiver)
  input (hook)    iifname "nrw*" -> replies accepted (the node's connections to
                  its pods), else jump from-wl-dispatch (pod -> this node: its egress)
  output (hook)   oifname "nrw*" -> accept                  (the node always reaches its pods)
  *-dispatch      iifname/oifname vmap @from-wl/@to-wl -> goto the endpoint's chain;
                  no entry -> drop (fail closed: a workload interface we have not
                  programmed yet passes nothing)
  tw-<if>/fw-<if> ct established,related accept; ct invalid drop; clear the accept
                  mark; jump each policy chain in order and return as soon as the
                  accept mark is set; then drop if any policy applied, else return.
  pi-/pe-<hash>   one per policy and direction; Allow sets the accept mark and
                  RETURNS (Calico's RETURN-on-allow), so a same-node packet runs the
                  sender's egress chain and then the receiver's ingress chain; Deny drops.

Every address set exists in both families (``<name>-4``/``<name>-6``) and every
rule that uses one is rendered once per family, so set contents can change by
element updates alone (``render_update``) without touching a chain.

The full script declares, deletes and recreates our table in ONE transaction: nft
applies it whole or not at all, and it never names another table.
"""

from __future__ import annotations

import ipaddress
import re

from felix_like.policy_calc import ALLOW, EndpointPlan, PolicyChain, PolicyPlan, RuleMatch

TABLE = "noderouter"
WORKLOAD_PREFIX = "nrw"
ACCEPT_MARK = 0x10000            # Calico's accept bit; ours only inside this table
_FAMILIES = (("4", "ip", "ipv4_addr"), ("6", "ip6", "ipv6_addr"))
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


class RenderError(ValueError):
    pass


def _check_ifname(name: str) -> str:
    # Spliced into the script: refuse anything that could end a token.
    if not _IFNAME.match(name):
        raise RenderError(f"interface name {name!r} cannot be rendered")
    return name


def _family_of(item: str) -> str:
    return "6" if ":" in item else "4"


def _address_elements(items, fam: str) -> list[str]:
    nets = [ipaddress.ip_network(x) for x in items if _family_of(x) == fam]
    full = 32 if fam == "4" else 128
    return [str(n.network_address) if n.prefixlen == full else str(n)
            for n in sorted(nets)]


def _named_elements(items, fam: str) -> list[str]:
    return [f"{ip} . {proto} . {port}" for ip, proto, port in
            sorted(items, key=lambda t: (ipaddress.ip_address(t[0]), t[1], t[2]))
            if _family_of(ip) == fam]


def _set_decl(name: str, type_: str, elements: list[str], interval: bool) -> str:
    flags = " flags interval;" if interval else ""
    elems = f" elements = {{ {', '.join(elements)} }}" if elements else ""
    return f"  set {name} {{ type {type_};{flags}{elems} }}\n"


def _rule_lines(m: RuleMatch) -> list[str]:
    verdict = (f"meta mark set meta mark | {ACCEPT_MARK:#x} return" if m.action == ALLOW
               else "drop")
    port = ""
    if m.protocol:
        port = f"meta l4proto {m.protocol}"
        if m.port_range:
            lo, hi = m.port_range
            port += f" th dport {lo}" if lo == hi else f" th dport {lo}-{hi}"
    addr_set = m.src_set or m.dst_set
    direction = "saddr" if m.src_set else "daddr"
    if addr_set is None and m.named_port_set is None:
        return [" ".join(x for x in (port, verdict) if x)]
    lines = []
    for fam, ipkw, _ in _FAMILIES:
        parts = []
        if addr_set:
            parts.append(f"{ipkw} {direction} @{addr_set}-{fam}")
        if m.named_port_set:
            # The named-port set carries address, protocol and port together.
            parts.append(f"{ipkw} daddr . meta l4proto . th dport @{m.named_port_set}-{fam}")
        elif port:
            parts.append(port)
        parts.append(verdict)
        lines.append(" ".join(parts))
    return lines


def _policy_chain(chain: PolicyChain) -> str:
    body = "".join(f"    {line}\n" for m in chain.rules for line in _rule_lines(m))
    return (f"  chain {chain.name} {{\n"
            f"    # {chain.direction} of {chain.policy[0]} policy {chain.policy[1]}/{chain.policy[2]}\n"
            f"{body}  }}\n")


def endpoint_chain_name(direction: str, ifname: str) -> str:
    return f"{'tw' if direction == 'Ingress' else 'fw'}-{_check_ifname(ifname)}"


def _endpoint_chain(ep: EndpointPlan, direction: str) -> str:
    policies = ep.ingress if direction == "Ingress" else ep.egress
    lines = ["ct state established,related accept", "ct state invalid drop",
             f"meta mark set meta mark & {~ACCEPT_MARK & 0xFFFFFFFF:#x}"]
    for name in policies or ():
        lines.append(f"jump {name}")
        lines.append(f"meta mark & {ACCEPT_MARK:#x} == {ACCEPT_MARK:#x} return")
    if policies is None:
        lines.append("return")        # no policy selects the pod here: not isolated
    else:
        lines.append('counter drop comment "no policy allowed it"')
    body = "".join(f"    {line}\n" for line in lines)
    return (f"  chain {endpoint_chain_name(direction, ep.interface)} {{\n"
            f"    # {direction} of {ep.endpoint[0]}/{ep.endpoint[1]}\n{body}  }}\n")


def _vmap(name: str, entries: list[str]) -> str:
    elems = f" elements = {{ {', '.join(entries)} }}" if entries else ""
    return f"  map {name} {{ type ifname : verdict;{elems} }}\n"


def _vmap_entries(plan: PolicyPlan, direction: str) -> list[str]:
    return [f'"{ep.interface}" : goto {endpoint_chain_name(direction, ep.interface)}'
            for ep in plan.endpoints]


def render_structure(plan: PolicyPlan, prefix: str = WORKLOAD_PREFIX) -> str:
    """The table body without set contents: equal structures differ only in elements."""
    if not re.match(r"^[A-Za-z0-9]{1,8}$", prefix):
        raise RenderError(f"workload interface prefix {prefix!r} cannot be rendered")
    out = []
    for name, _ in plan.address_sets:
        for fam, _, type_ in _FAMILIES:
            out.append(_set_decl(f"{name}-{fam}", type_, [], interval=True))
    for name, _ in plan.named_port_sets:
        for fam, _, type_ in _FAMILIES:
            out.append(_set_decl(f"{name}-{fam}", f"{type_} . inet_proto . inet_service", [],
                                 interval=False))
    out.append(_vmap("from-wl", _vmap_entries(plan, "Egress")))
    out.append(_vmap("to-wl", _vmap_entries(plan, "Ingress")))
    out.append(
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f'    iifname "{prefix}*" jump from-wl-dispatch\n'
        f'    oifname "{prefix}*" jump to-wl-dispatch\n'
        "  }\n"
        "  chain input {\n"
        "    type filter hook input priority filter; policy accept;\n"
        # Replies to the node's own connections pass even from a workload interface
        # not programmed yet: the node always reaches its pods (kubelet probes a new
        # pod before its endpoint reaches us).
        f'    iifname "{prefix}*" ct state established,related accept\n'
        # IPv6 neighbour discovery to the node must survive an egress deny-all.
        f'    iifname "{prefix}*" icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, '
        "nd-router-solicit } accept\n"
        f'    iifname "{prefix}*" jump from-wl-dispatch\n'
        "  }\n"
        "  chain output {\n"
        "    type filter hook output priority filter; policy accept;\n"
        f'    oifname "{prefix}*" accept comment "the node always reaches its own pods"\n'
        "  }\n"
        "  chain from-wl-dispatch {\n"
        "    iifname vmap @from-wl\n"
        '    counter drop comment "workload interface not programmed"\n'
        "  }\n"
        "  chain to-wl-dispatch {\n"
        "    oifname vmap @to-wl\n"
        '    counter drop comment "workload interface not programmed"\n'
        "  }\n")
    for ep in plan.endpoints:
        out.append(_endpoint_chain(ep, "Ingress"))
        out.append(_endpoint_chain(ep, "Egress"))
    for chain in plan.chains:
        out.append(_policy_chain(chain))
    return "".join(out)


def set_elements(plan: PolicyPlan) -> dict[str, list[str]]:
    """Every set of the table with its rendered elements."""
    out: dict[str, list[str]] = {}
    for name, items in plan.address_sets:
        for fam, _, _ in _FAMILIES:
            out[f"{name}-{fam}"] = _address_elements(items, fam)
    for name, items in plan.named_port_sets:
        for fam, _, _ in _FAMILIES:
            out[f"{name}-{fam}"] = _named_elements(items, fam)
    return out


def render_full(plan: PolicyPlan, prefix: str = WORKLOAD_PREFIX) -> str:
    """One transaction that replaces our table (and only our table) whole."""
    elements = "".join(
        f"add element inet {TABLE} {name} {{ {', '.join(elems)} }}\n"
        for name, elems in set_elements(plan).items() if elems)
    return (f"table inet {TABLE} {{}}\n"
            f"delete table inet {TABLE}\n"
            f"table inet {TABLE} {{\n{render_structure(plan, prefix)}}}\n"
            f"{elements}")


def render_update(old: PolicyPlan, new: PolicyPlan, prefix: str = WORKLOAD_PREFIX) -> str | None:
    """Element changes that turn ``old``'s table into ``new``'s, or None when chains,
    sets or map entries differ (then only ``render_full`` will do). Deletes come
    before adds; an empty string means nothing to do."""
    if render_structure(old, prefix) != render_structure(new, prefix):
        return None
    before, after = set_elements(old), set_elements(new)
    lines = []
    for name in sorted(after):
        gone = sorted(set(before[name]) - set(after[name]))
        if gone:
            lines.append(f"delete element inet {TABLE} {name} {{ {', '.join(gone)} }}\n")
    for name in sorted(after):
        added = sorted(set(after[name]) - set(before[name]))
        if added:
            lines.append(f"add element inet {TABLE} {name} {{ {', '.join(added)} }}\n")
    return "".join(lines)
