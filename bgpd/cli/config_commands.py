"""`noderouter check-config` and `noderouter config-reference`."""

from __future__ import annotations

import sys

import click

from bgpd.cli.output import emit, output_option
from config import DEFAULT_PATH, ConfigError, load_file, reference


@click.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False), envvar="NODEROUTER_CONFIG",
                default=DEFAULT_PATH)
@output_option
def check_config(path: str, fmt: str) -> None:
    """Validate a node config file (default: /etc/noderouter/node.yaml); print every
    problem with file, line and key."""
    try:
        cfg = load_file(path)
    except ConfigError as exc:
        if fmt == "json":
            emit({"ok": False, "problems": [
                {"source": p.source, "line": p.line, "key": p.key, "message": p.message}
                for p in exc.problems]}, "json")
        else:
            for p in exc.problems:
                click.echo(str(p), err=True)
            click.echo(f"{path}: {len(exc.problems)} problem(s); config refused", err=True)
        sys.exit(1)
    if fmt == "json":
        emit({"ok": True, "node": cfg.node.name, "pools": [str(p.cidr) for p in cfg.pools],
              "peers": len(cfg.bgp.peers)}, "json")
    else:
        click.echo(f"{path}: ok (node {cfg.node.name}, {len(cfg.pools)} pool(s), "
                   f"{len(cfg.bgp.peers)} explicit peer(s), mesh {'on' if cfg.bgp.mesh else 'off'})")


@click.command("config-reference")
@output_option
def config_reference(fmt: str) -> None:
    """Every config parameter with type, default and help."""
    emit(reference(), fmt, ["key", "type", "default", "help"])
