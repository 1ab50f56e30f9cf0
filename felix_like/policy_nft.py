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

Every drop rule has a counter (Deny rules, the end-of-tier drops, the fail-closed
dispatch drops): ``policy_counters`` reads them as denied packets per policy.

Every address set exists in both families (``<name>-4``/``<name>-6``) and every
rule that uses one is rendered once per family, so set contents can change by
element updates alone (``render_update``) without touching a chain.

The full script declares, deletes and recreates our table in ONE transaction: nft
applies it whole or not at all, and it never names another table.
"""

from __future__ import annotations

import ipaddress
import re

from felix_like.errors import DataplaneError
from felix_like.policy_calc import ALLOW, EndpointPlan, PolicyPlan, RuleMatch

TABLE = "noderouter"
WORKLOAD_PREFIX = "nrw"
ACCEPT_MARK = 0x10000            # Calico's accept bit; ours only inside this table
_FAMILIES = (("4", "ip", "ipv4_addr"), ("6", "ip6", "ipv6_addr"))
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


class RenderError(DataplaneError, ValueError):
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
    # Filter before sorting: a dual-stack pod's named port puts both families in one set,
    # and IPv4 and IPv6 addresses do not compare (TypeError, found by hypothesis).
    mine = [t for t in items if _family_of(t[0]) == fam]
    return [f"{ip} . {proto} . {port}" for ip, proto, port in
            sorted(mine, key=lambda t: (ipaddress.ip_address(t[0]), t[1], t[2]))]


def _set_decl(name: str, type_: str, elements: list[str], interval: bool) -> str:
    flags = " flags interval;" if interval else ""
    elems = f" elements = {{ {', '.join(elements)} }}" if elements else ""
    return f"  set {name} {{ type {type_};{flags}{elems} }}\n"


def _rule_lines(m: RuleMatch) -> list[str]:
    # Deny rules count what they drop: the per-policy denied metrics (policy_counters).
    verdict = (f"meta mark set meta mark | {ACCEPT_MARK:#x} return" if m.action == ALLOW
               else "counter drop")
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


def endpoint_chain_name(direction: str, ifname: str) -> str:
    return f"{'tw' if direction == 'Ingress' else 'fw'}-{_check_ifname(ifname)}"


def _endpoint_rules(ep: EndpointPlan, direction: str) -> list[str]:
    return _endpoint_chain_rules(ep.ingress if direction == "Ingress" else ep.egress)


def _endpoint_chain_rules(policies: tuple[str, ...] | None) -> list[str]:
    lines = ["ct state established,related accept", "ct state invalid drop",
             f"meta mark set meta mark & {~ACCEPT_MARK & 0xFFFFFFFF:#x}"]
    for name in policies or ():
        lines.append(f"jump {name}")
        lines.append(f"meta mark & {ACCEPT_MARK:#x} == {ACCEPT_MARK:#x} return")
    if policies is None:
        lines.append("return")        # no policy selects the pod here: not isolated
    else:
        lines.append('counter drop comment "no policy allowed it"')
    return lines


def chains(plan: PolicyPlan) -> dict[str, tuple[str, list[str]]]:
    """Every non-base chain: name -> (a comment for readers, its rules in order)."""
    out: dict[str, tuple[str, list[str]]] = {}
    for ep in plan.endpoints:
        for direction in ("Ingress", "Egress"):
            out[endpoint_chain_name(direction, ep.interface)] = (
                f"{direction} of {ep.endpoint[0]}/{ep.endpoint[1]}", _endpoint_rules(ep, direction))
    for chain in plan.chains:
        out[chain.name] = (
            f"{chain.direction} of {chain.policy[0]} policy {chain.policy[1]}/{chain.policy[2]}",
            [line for m in chain.rules for line in _rule_lines(m)])
    return out


def set_types(plan: PolicyPlan) -> dict[str, tuple[str, bool]]:
    """Every set: name -> (nft type, interval flag)."""
    out = {}
    for name, _ in plan.address_sets:
        for fam, _, type_ in _FAMILIES:
            out[f"{name}-{fam}"] = (type_, True)
    for name, _ in plan.named_port_sets:
        for fam, _, type_ in _FAMILIES:
            out[f"{name}-{fam}"] = (f"{type_} . inet_proto . inet_service", False)
    return out


def vmap_entries(plan: PolicyPlan) -> dict[str, dict[str, str]]:
    """The two dispatch maps: interface -> verdict."""
    return {
        "from-wl": {ep.interface: f"goto {endpoint_chain_name('Egress', ep.interface)}"
                    for ep in plan.endpoints},
        "to-wl": {ep.interface: f"goto {endpoint_chain_name('Ingress', ep.interface)}"
                  for ep in plan.endpoints},
    }


def _vmap(name: str, entries: dict[str, str]) -> str:
    items = ", ".join(f'"{k}" : {v}' for k, v in sorted(entries.items()))
    elems = f" elements = {{ {items} }}" if items else ""
    return f"  map {name} {{ type ifname : verdict;{elems} }}\n"


def render_structure(plan: PolicyPlan, prefix: str = WORKLOAD_PREFIX) -> str:
    """The table body without set contents: equal structures differ only in elements."""
    if not re.match(r"^[A-Za-z0-9]{1,8}$", prefix):
        raise RenderError(f"workload interface prefix {prefix!r} cannot be rendered")
    out = [_set_decl(name, type_, [], interval)
           for name, (type_, interval) in set_types(plan).items()]
    out.extend(_vmap(name, entries) for name, entries in vmap_entries(plan).items())
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
    for name, (comment, rules) in chains(plan).items():
        body = "".join(f"    {rule}\n" for rule in rules)
        out.append(f"  chain {name} {{\n    # {comment}\n{body}  }}\n")
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


def _chain_sources(plan: PolicyPlan) -> dict[str, tuple[str, ...] | None | tuple[RuleMatch, ...]]:
    """Every non-base chain, in ``chains``' order: name -> what its rules are rendered
    from (an endpoint's policy chain names in that direction, or a policy chain's
    matches). Equal sources render equal rules, so a delta renders only the chains
    whose source changed."""
    out: dict = {}
    for ep in plan.endpoints:
        out[endpoint_chain_name("Ingress", ep.interface)] = ("ep", ep.ingress)
        out[endpoint_chain_name("Egress", ep.interface)] = ("ep", ep.egress)
    for chain in plan.chains:
        out[chain.name] = ("policy", chain.rules)
    return out


def _render_chain(source) -> list[str]:
    kind, value = source
    if kind == "ep":
        return _endpoint_chain_rules(value)
    return [line for m in value for line in _rule_lines(m)]


def _family_elements(name: str, items, named: bool) -> dict[str, list[str]]:
    render = _named_elements if named else _address_elements
    return {f"{name}-{fam}": render(items, fam) for fam, _, _ in _FAMILIES}


def render_update(old: PolicyPlan, new: PolicyPlan) -> str:
    """One transaction that turns ``old``'s table into ``new``'s by changes only:
    set elements, map entries, and the chains and sets that appear, change or go.
    An empty string means nothing to do. The order makes every reference valid at
    each step: new sets and chains exist before a rule or map entry points at them;
    a chain or set is deleted only after every rule and entry naming it is gone.
    (The base chains depend only on the prefix, which a manager never changes.)

    Only what changed is rendered (issue 14: rendering both whole plans to diff them
    cost ~0.3 s at 1,000 pods x 1,000 policies): sets whose contents differ, chains
    whose source (``_chain_sources``) differs."""
    t = f"inet {TABLE}"
    out: list[str] = []
    old_sets, new_sets = set_types(old), set_types(new)
    for name, (type_, interval) in new_sets.items():
        if old_sets.get(name) != (type_, interval) and name in old_sets:
            raise RenderError(f"set {name} changed type")  # names are content hashes
        if name not in old_sets:
            flags = " flags interval;" if interval else ""
            out.append(f"add set {t} {name} {{ type {type_};{flags} }}\n")
    old_elems: dict[str, list[str]] = {}
    new_elems: dict[str, list[str]] = {}
    for named, old_contents, new_contents in (
            (False, dict(old.address_sets), new.address_sets),
            (True, dict(old.named_port_sets), new.named_port_sets)):
        for name, items in new_contents:
            before = old_contents.get(name)
            if before is items or before == items:
                continue
            new_elems.update(_family_elements(name, items, named))
            if before is not None:
                old_elems.update(_family_elements(name, before, named))
    for name in sorted(new_elems):
        gone = sorted(set(old_elems.get(name, ())) - set(new_elems[name]))
        if gone:
            out.append(f"delete element {t} {name} {{ {', '.join(gone)} }}\n")
    for name in sorted(new_elems):
        added = sorted(set(new_elems[name]) - set(old_elems.get(name, ())))
        if added:
            out.append(f"add element {t} {name} {{ {', '.join(added)} }}\n")
    old_chains, new_chains = _chain_sources(old), _chain_sources(new)
    for name in new_chains:
        if name not in old_chains:
            out.append(f"add chain {t} {name}\n")
    for name, source in new_chains.items():
        before = old_chains.get(name)
        if before is not None and (before[1] is source[1] or before == source):
            continue
        rules = _render_chain(source)
        if before is not None:
            if _render_chain(before) == rules:
                continue
            out.append(f"flush chain {t} {name}\n")
        out.extend(f"add rule {t} {name} {rule}\n" for rule in rules)
    old_maps, new_maps = vmap_entries(old), vmap_entries(new)
    for map_name, entries in new_maps.items():
        before = old_maps[map_name]
        gone = sorted(k for k in before if entries.get(k) != before[k])
        if gone:
            keys = ", ".join(f'"{k}"' for k in gone)
            out.append(f"delete element {t} {map_name} {{ {keys} }}\n")
        added = sorted(k for k in entries if before.get(k) != entries[k])
        if added:
            items = ", ".join(f'"{k}" : {entries[k]}' for k in added)
            out.append(f"add element {t} {map_name} {{ {items} }}\n")
    removed = [name for name in old_chains if name not in new_chains]
    out.extend(f"flush chain {t} {name}\n" for name in removed)
    out.extend(f"delete chain {t} {name}\n" for name in removed)
    out.extend(f"delete set {t} {name}\n" for name in old_sets if name not in new_sets)
    return "".join(out)


def ruleset_size(plan: PolicyPlan, prefix: str = WORKLOAD_PREFIX) -> tuple[int, int]:
    """(rules, sets) the table of ``plan`` holds: every rule of every chain, base chains
    included, and every named set (both families; the two dispatch maps not counted).
    Equal to counting ``render_structure``'s rules, without rendering the sets."""
    # Counted, not rendered (rendering every chain cost ~40 ms per apply at 1,000
    # pods x 1,000 policies): an endpoint chain has 3 rules, 2 per policy chain it
    # jumps to and a last one; a policy rule is one rule, or one per family when it
    # uses a set (``_rule_lines``).
    endpoint_rules = sum(
        8 + 2 * (len(ep.ingress or ()) + len(ep.egress or ())) for ep in plan.endpoints)
    policy_rules = sum(len(_FAMILIES) if m.src_set or m.dst_set or m.named_port_set else 1
                       for chain in plan.chains for m in chain.rules)
    return (_base_rules(prefix) + endpoint_rules + policy_rules, len(set_types(plan)))


_BASE_RULES: dict[str, int] = {}


def _base_rules(prefix: str) -> int:
    if prefix not in _BASE_RULES:
        empty = PolicyPlan((), (), (), ())
        _BASE_RULES[prefix] = sum(
            1 for line in render_structure(empty, prefix).splitlines()
            if line.startswith("    ") and not line.strip().startswith(("type filter hook", "#")))
    return _BASE_RULES[prefix]
