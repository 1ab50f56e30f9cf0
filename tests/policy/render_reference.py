"""The delta renderer as it was before it rendered only what changed (issue 14): it
renders every chain and set of both plans and diffs the text. Kept as the reference
the faster ``policy_nft.render_update`` must equal, script for script."""

from __future__ import annotations

from felix_like.policy_calc import PolicyPlan
from felix_like.policy_nft import TABLE, RenderError, chains, set_elements, set_types, vmap_entries


def render_update_reference(old: PolicyPlan, new: PolicyPlan) -> str:
    """One transaction that turns ``old``'s table into ``new``'s by changes only:
    set elements, map entries, and the chains and sets that appear, change or go.
    An empty string means nothing to do. The order makes every reference valid at
    each step: new sets and chains exist before a rule or map entry points at them;
    a chain or set is deleted only after every rule and entry naming it is gone.
    (The base chains depend only on the prefix, which a manager never changes.)"""
    t = f"inet {TABLE}"
    out: list[str] = []
    old_sets, new_sets = set_types(old), set_types(new)
    old_elems, new_elems = set_elements(old), set_elements(new)
    for name, (type_, interval) in new_sets.items():
        if old_sets.get(name) != (type_, interval) and name in old_sets:
            raise RenderError(f"set {name} changed type")  # names are content hashes
        if name not in old_sets:
            flags = " flags interval;" if interval else ""
            out.append(f"add set {t} {name} {{ type {type_};{flags} }}\n")
    for name in sorted(new_sets):
        gone = sorted(set(old_elems.get(name, ())) - set(new_elems[name]))
        if gone:
            out.append(f"delete element {t} {name} {{ {', '.join(gone)} }}\n")
    for name in sorted(new_sets):
        added = sorted(set(new_elems[name]) - set(old_elems.get(name, ())))
        if added:
            out.append(f"add element {t} {name} {{ {', '.join(added)} }}\n")
    old_chains, new_chains = chains(old), chains(new)
    for name in new_chains:
        if name not in old_chains:
            out.append(f"add chain {t} {name}\n")
    for name, (_, rules) in new_chains.items():
        if name in old_chains and old_chains[name][1] == rules:
            continue
        if name in old_chains:
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

