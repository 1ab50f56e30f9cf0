"""`noderouter ipam show|check|gc|release` and `noderouter pool add|list|delete`.

They talk to etcd directly (``--etcd-endpoints`` or NODEROUTER_ETCD_ENDPOINTS,
TLS with ``--etcd-ca/--etcd-cert/--etcd-key``). Human tables by default,
``-o json`` for scripts. Exit codes: 0 ok, 1 failure (and ``ipam check``
finding problems), 2 usage.
"""

from __future__ import annotations

import datetime
import functools
import os
import re
import sys

import click

from bgpd.cli.etcd_options import etcd_connection_options
from bgpd.cli.output import emit, output_option

CLI_NODE = "noderouter-cli"


def _etcd_options(f):
    @click.option("--etcd-prefix", envvar="NODEROUTER_ETCD_PREFIX", default=None,
                  help="Key prefix of the IPAM data (default /noderouter/ipam/v1/).")
    @etcd_connection_options
    @functools.wraps(f)
    def wrapper(*args, etcd_endpoints, etcd_ca, etcd_cert, etcd_key, etcd_prefix, etcd_timeout,
                **kwargs):
        from ipam.errors import IpamError, IpamInvalid

        _quiet_logs()
        try:
            ipam = _connect(etcd_endpoints, etcd_ca, etcd_cert, etcd_key, etcd_prefix, etcd_timeout)
            try:
                return f(ipam, *args, **kwargs)
            finally:
                ipam.store.close()
        except IpamInvalid as exc:
            raise click.UsageError(str(exc)) from None
        except IpamError as exc:
            raise click.ClickException(str(exc)) from None
    return wrapper


def _quiet_logs() -> None:
    # structlog's default writes every event to stdout, which would corrupt
    # `-o json`. Unless the process already set logging up, warnings only, to stderr.
    # gRPC's C core logs every failed TLS handshake to stderr (~35 lines for one refused
    # client certificate) before our one-line error: silence it unless the user asked
    # for it. Read when grpc first initialises, which happens after this call.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    import structlog

    if not structlog.is_configured():
        from config.logs import setup_logging

        setup_logging("warning")


def _connect(endpoints, ca, cert, key, prefix, timeout):
    from ipam.allocator import DEFAULT_PREFIX, Ipam
    from ipam.store import EtcdStore

    store = EtcdStore(endpoints, ca=ca, cert=cert, key=key, timeout=timeout)
    return Ipam(store, CLI_NODE, prefix=prefix or DEFAULT_PREFIX)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def _duration(text: str) -> float:
    m = _DURATION.match(str(text))
    if not m:
        raise click.BadParameter(f"{text!r}: use seconds or a number with s/m/h/d, e.g. 15m")
    return float(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _live_options(f):
    @click.option("--live-handles-file", "live_file", type=click.File("r"), required=True,
                  help="Handles of live workloads: JSON list or one per line ('-' = stdin).")
    @click.option("--node", default=None, help="Only judge addresses this node allocated "
                                               "(the live list covers only its workloads).")
    @click.option("--live-node", "live_nodes", multiple=True,
                  help="A node that still exists (repeat). When given, blocks of other nodes are "
                       "reported and their tunnel-address handles count as live.")
    @functools.wraps(f)
    def wrapper(*args, live_file, node, live_nodes, **kwargs):
        from ipam.allocator import parse_live_handles

        live = parse_live_handles(live_file.read())
        return f(*args, live=live, node=node, live_nodes=set(live_nodes) if live_nodes else None,
                 **kwargs)
    return wrapper


# ====================================================================== ipam

@click.group("ipam")
def ipam() -> None:
    """Pod address management in etcd: show, check, gc, release."""


_FAMILY_OPTION = click.option("--family", type=click.Choice(["4", "6"]), default=None,
                              help="Only IPv4 or only IPv6 (default: both).")


def _in_family(net, family: str | None) -> bool:
    return family is None or net.version == int(family)


def _show_data(ip, node: str | None, family: str | None = None) -> dict:
    from ipam.model import net_sort_key

    d = ip.dump()
    pools = []
    for cidr, (p, _) in sorted(d.pools.items(), key=lambda kv: net_sort_key(kv[0])):
        if not _in_family(p.cidr, family):
            continue
        blocks = [b for b, _ in d.blocks.values() if b.pool == p.cidr]
        used = sum(len(b.allocations) for b in blocks)
        pools.append({"cidr": cidr, "family": p.cidr.version, "block_size": p.block_size,
                      "blocks": f"{len(blocks)}/{p.n_blocks}", "used": used,
                      "size": p.cidr.num_addresses, "disabled": p.disabled,
                      "deleting": p.deleting, "ipip": p.ipip_mode, "vxlan": p.vxlan_mode,
                      "nat_outgoing": p.nat_outgoing, "strict_affinity": p.strict_affinity,
                      "node_selector": p.node_selector})
    blocks = []
    for cidr, (b, _) in sorted(d.blocks.items(), key=lambda kv: net_sort_key(kv[0])):
        if node is not None and b.affinity != node and all(a.node != node for a in b.allocations.values()):
            continue
        if not _in_family(b.cidr, family):
            continue
        borrowers = sorted({a.node for a in b.allocations.values() if a.node != b.affinity})
        blocks.append({"block": cidr, "pool": str(b.pool), "node": b.affinity, "state": b.state,
                       "used": len(b.allocations), "size": b.size, "borrowed_by": borrowers})
    return {"pools": pools, "blocks": blocks,
            "reservations": [str(r) for r in d.reservations], "revision": d.revision}


@ipam.command("show")
@click.option("--node", default=None, help="Only blocks of this node (and blocks it borrows from).")
@click.option("--allocations", is_flag=True, help="Also list every allocation.")
@_FAMILY_OPTION
@output_option
@_etcd_options
def ipam_show(ip, node, allocations, family, fmt) -> None:
    """Pools, blocks with their node affinity and state, usage (IPv4 and IPv6)."""
    data = _show_data(ip, node, family)
    if allocations:
        from ipam.model import net_sort_key

        rows = []
        _, blocks = ip.snapshot()
        for b in sorted(blocks, key=lambda b: net_sort_key(b.cidr)):
            if not _in_family(b.cidr, family):
                continue
            for o, a in sorted(b.allocations.items()):
                if node is None or a.node == node or b.affinity == node:
                    rows.append({"ip": str(b.ip(o)), "handle": a.handle, "seq": a.seq,
                                 "node": a.node, "block": str(b.cidr),
                                 "namespace": a.attrs.get("namespace"), "pod": a.attrs.get("pod")})
        data["allocations"] = rows
    if fmt == "json":
        emit(data, fmt)
        return
    click.echo("POOLS")
    emit(data["pools"], fmt, ["cidr", "family", "block_size", "blocks", "used", "size", "disabled", "ipip",
                              "vxlan", "nat_outgoing", "strict_affinity"])
    click.echo("\nBLOCKS")
    emit(data["blocks"], fmt, ["block", "pool", "node", "state", "used", "size", "borrowed_by"])
    if data["reservations"]:
        click.echo("\nRESERVED  " + ", ".join(data["reservations"]))
    if allocations:
        click.echo("\nALLOCATIONS")
        emit(data["allocations"], fmt, ["ip", "handle", "seq", "node", "block", "namespace", "pod"])


_CHECK_KINDS = ("leaks", "orphaned_handles", "missing_handles", "double_allocations",
                "orphan_affinities", "affinity_mismatches", "pending_blocks")


def _check_rows(rep) -> list[dict]:
    rows = []
    for kind in _CHECK_KINDS:
        for item in getattr(rep, kind):
            handles = item.get("handles")
            rows.append({"problem": kind.rstrip("s").replace("_", "-"),
                         "ip": item.get("ip"), "block": item.get("block"),
                         "handle": item.get("handle") or (",".join(handles) if handles else None),
                         "node": item.get("node"), "detail": item.get("reason")})
    return rows


@ipam.command("check")
@_live_options
@output_option
@_etcd_options
def ipam_check(ip, live, node, live_nodes, fmt) -> None:
    """Compare allocations with the live workloads; exit 1 if anything is wrong.

    Reports leaks (allocated, workload not live), orphaned or missing handle
    records, double allocations, blocks of nodes that are gone, and node
    indexes that disagree with the blocks. Pending claims are listed but are
    not an error."""
    rep = ip.check(live, node=node, live_nodes=live_nodes)
    if fmt == "json":
        emit(rep.to_dict(), fmt)
    else:
        rows = _check_rows(rep)
        emit(rows, fmt, ["problem", "ip", "block", "handle", "node", "detail"])
        click.echo(f"\n{rep.allocations} allocations, {rep.handles} handles, {rep.blocks} blocks: "
                   + ("clean" if rep.clean else "PROBLEMS FOUND"))
    if not rep.clean:
        sys.exit(1)


@ipam.command("gc")
@_live_options
@click.option("--grace", default="15m", show_default=True,
              help="A leak is released only after being seen this long (s/m/h).")
@click.option("--dry-run", is_flag=True, help="Only show what would be released.")
@output_option
@_etcd_options
def ipam_gc(ip, live, node, live_nodes, grace, dry_run, fmt) -> None:
    """Release leaks seen for longer than --grace and blocks empty on two runs in a row.

    Run it periodically: the first run only records what it sees (in etcd), so
    a leak is released on the first run after its grace period."""
    rep = ip.gc(live, grace=_duration(grace), node=node, live_nodes=live_nodes, dry_run=dry_run)
    if fmt == "json":
        emit(rep.to_dict(), fmt)
        return
    rows = ([{"action": "released", "ip": r["ip"], "handle": r["handle"], "detail": None}
             for r in rep.released]
            + [{"action": "skipped", "ip": r["ip"], "handle": r["handle"], "detail": r["reason"]}
               for r in rep.skipped]
            + [{"action": "waiting" if not dry_run else "leak", "ip": r["ip"],
                "handle": r["handle"], "detail": f"grace ends {_when(r['due_at'])}"}
               for r in rep.waiting]
            + [{"action": "freed-block", "ip": c, "handle": None, "detail": None}
               for c in rep.freed_blocks]
            + [{"action": "kept-block", "ip": c, "handle": None,
                "detail": "empty, last block of a live node"} for c in rep.kept_blocks])
    emit(rows, fmt, ["action", "ip", "handle", "detail"])


@ipam.command("release")
@click.option("--handle", default=None, help="Release every address of this handle.")
@click.option("--ip", "address", default=None, help="Release this address.")
@click.option("--seq", type=int, default=None,
              help="With --ip: only if the address is still held under this sequence number.")
@output_option
@_etcd_options
def ipam_release(ip, handle, address, seq, fmt) -> None:
    """Release addresses by handle or by address."""
    if (handle is None) == (address is None):
        raise click.UsageError("give exactly one of --handle or --ip")
    if handle is not None:
        if seq is not None:
            raise click.UsageError("--seq goes with --ip")
        released = ip.release_handle(handle)
    else:
        released = [address] if ip.release_ip(address, seq=seq) else []
    emit([{"ip": x, "released": True} for x in released], fmt, ["ip", "released"])


# ====================================================================== pool

@click.group("pool")
def pool() -> None:
    """IP pools: add, list, delete."""


def _pool_row(p) -> dict:
    d = p.to_dict()
    d["blocks_total"] = p.n_blocks
    d["family"] = p.cidr.version
    return d


_POOL_COLS = ["cidr", "block_size", "blocks_total", "family", "disabled", "ipip_mode", "vxlan_mode",
              "nat_outgoing", "strict_affinity", "node_selector", "deleting"]


@pool.command("add")
@click.argument("cidr")
@click.option("--block-size", type=int, default=None,
              help="Prefix length of a block (default /26 for IPv4, /122 for IPv6, which "
                   "allows /116-/128); fixed once created.")
@click.option("--disabled", is_flag=True, help="Create the pool disabled (no new allocations).")
@click.option("--node-selector", default="all()", show_default=True,
              help='Which nodes may use it, e.g. \'rack == "a"\'.')
@click.option("--ipip-mode", type=click.Choice(["Never", "Always", "CrossSubnet"]), default="Never",
              show_default=True)
@click.option("--vxlan-mode", type=click.Choice(["Never", "Always", "CrossSubnet"]), default="Never",
              show_default=True)
@click.option("--nat-outgoing", is_flag=True, help="Masquerade traffic leaving the pool.")
@click.option("--strict-affinity", is_flag=True, help="Never borrow addresses from other nodes' blocks.")
@output_option
@_etcd_options
def pool_add(ip, cidr, block_size, disabled, node_selector, ipip_mode, vxlan_mode, nat_outgoing,
             strict_affinity, fmt) -> None:
    """Add a pool (refused if it overlaps another)."""
    p = ip.add_pool(cidr, block_size, disabled=disabled, node_selector=node_selector,
                    ipip_mode=ipip_mode, vxlan_mode=vxlan_mode, nat_outgoing=nat_outgoing,
                    strict_affinity=strict_affinity)
    emit(_pool_row(p), fmt)


@pool.command("list")
@_FAMILY_OPTION
@output_option
@_etcd_options
def pool_list(ip, family, fmt) -> None:
    """List pools (IPv4 first, then IPv6)."""
    emit([_pool_row(p) for p in ip.list_pools() if _in_family(p.cidr, family)], fmt, _POOL_COLS)


@pool.command("delete")
@click.argument("cidr")
@click.option("--force", is_flag=True, help="Delete even with allocations (they are released).")
@output_option
@_etcd_options
def pool_delete(ip, cidr, force, fmt) -> None:
    """Delete a pool; refused while it has allocations unless --force."""
    emit(ip.delete_pool(cidr, force=force), fmt)
