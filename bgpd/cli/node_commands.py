"""`noderouter run|status|peers|routes`: the daemon and the operator's view of it."""

from __future__ import annotations

import sys

import click

from bgpd.cli.output import emit, output_option
from bgpd.cli.status_client import DEFAULT_SOCKET, StatusUnavailable, query
from config import DEFAULT_PATH

socket_option = click.option("--socket", "socket_path", envvar="NODEROUTER_STATUS_SOCKET",
                             default=DEFAULT_SOCKET, show_default=True,
                             help="The daemon's status socket.")


@click.command("run")
@click.option("--config", "config_path", envvar="NODEROUTER_CONFIG", default=DEFAULT_PATH,
              show_default=True, type=click.Path(dir_okay=False),
              help="Node config YAML (validated before anything is touched).")
@click.option("--run-dir", default="/run/noderouter", show_default=True)
@click.option("--state-dir", default="/var/lib/noderouter/cni", show_default=True,
              help="Where the CNI plugin records local workloads.")
def run(config_path: str, run_dir: str, state_dir: str) -> None:
    """Run the node daemon (systemd Type=notify)."""
    from bgpd.node.daemon import DaemonError, NodeDaemon
    from config import ConfigError, load_file
    from config.logs import setup_logging

    try:
        cfg = load_file(config_path)
    except ConfigError as exc:
        for p in exc.problems:
            click.echo(str(p), err=True)
        click.echo(f"{config_path}: config refused; nothing was changed", err=True)
        sys.exit(1)
    setup_logging(cfg.logging.level, cfg.logging.format)
    daemon = NodeDaemon(cfg, run_dir=run_dir, state_dir=state_dir)
    daemon.install_signal_handlers()
    try:
        daemon.start()
    except DaemonError as exc:
        click.echo(f"noderouter: {exc}", err=True)
        daemon.shutdown()
        sys.exit(1)
    sys.exit(daemon.run(config_path=config_path))


def _query(socket_path: str, view: str, **params):
    try:
        return query(socket_path, view, **params)
    except StatusUnavailable as exc:
        click.echo(f"noderouter: {exc}", err=True)
        sys.exit(1)


def _age(seconds) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@click.command("status")
@socket_option
@output_option
def status(socket_path: str, fmt: str) -> None:
    """Node, peers, blocks, encapsulation and sync state (like calicoctl node status)."""
    data = _query(socket_path, "status")
    if fmt == "json":
        emit(data, "json")
        return
    click.echo(f"node {data['node']}  AS {data['as_number']}  router-id {data['router_id']}  "
               f"address {data['address']}  mesh {'on' if data['mesh'] else 'off'}")
    sync = data["sync"]
    click.echo(f"sync: datastore {'yes' if sync['datastore'] else 'NO'}, "
               f"ready {'yes' if sync['ready'] else 'NO'}, "
               f"routes swept {'yes' if sync['routes_swept'] else 'not yet'}; "
               f"exabgp pid {data['exabgp_pid']} (starts {data['exabgp_starts']})")
    click.echo("")
    rows = [dict(p, uptime=_age(p["uptime"])) for p in data["peers"]]
    emit(rows, "table", ["address", "asn", "description", "state", "uptime", "accepted",
                         "announced", "rejected_total"],
         ["PEER", "AS", "NAME", "STATE", "UPTIME", "ACCEPTED", "ANNOUNCED", "REJECTED"])
    click.echo("")
    click.echo(f"blocks: {', '.join(data['blocks']) or '-'}")
    if data["borrowed"]:
        click.echo(f"borrowed: {', '.join(data['borrowed'])}")
    for p in data["pools"]:
        click.echo(f"pool {p['cidr']}: ipip {p['ipip_mode']}, vxlan {p['vxlan_mode']}, "
                   f"nat-outgoing {'on' if p['nat_outgoing'] else 'off'}"
                   f"{', disabled' if p['disabled'] else ''}")
    click.echo("routes: " + ", ".join(f"{k} {v}" for k, v in data["routes"].items()) +
               f"; workloads {data['workloads']}")
    if data["last_error"]:
        click.echo(f"last error: {data['last_error']}")
    if not sync["ready"]:
        sys.exit(1)


@click.command("peers")
@socket_option
@output_option
def peers(socket_path: str, fmt: str) -> None:
    """BGP peers: state, uptime, prefixes (like birdc show protocols)."""
    rows = _query(socket_path, "peers")
    if fmt == "json":
        emit(rows, "json")
        return
    rows = [dict(r, uptime=_age(r["uptime"])) for r in rows]
    emit(rows, "table", ["address", "asn", "description", "state", "uptime", "received",
                         "accepted", "announced", "stale", "rejected_total", "last_error"],
         ["PEER", "AS", "NAME", "STATE", "UPTIME", "RECEIVED", "ACCEPTED", "ANNOUNCED", "STALE",
          "REJECTED", "LAST ERROR"])


@click.command("routes")
@click.option("--prefix", default=None, help="Only routes overlapping this CIDR.")
@socket_option
@output_option
def routes(prefix: str | None, socket_path: str, fmt: str) -> None:
    """Learned, announced and kernel routes, and whether they agree."""
    rows = _query(socket_path, "routes", **({"prefix": prefix} if prefix else {}))
    emit(rows, fmt, ["prefix", "class", "via", "dev", "learned_from", "announced", "in_kernel",
                     "agree"],
         ["PREFIX", "CLASS", "VIA", "DEV", "LEARNED FROM", "ANNOUNCED", "IN KERNEL", "AGREE"])
    if fmt != "json" and any(r["agree"] is False for r in rows):
        sys.exit(1)


commands = [run, status, peers, routes]
