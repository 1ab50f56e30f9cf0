"""`noderouter doctor`: what is missing on this host before the node's first start.

One line per check (ok / FAIL / skip, and what to do), exit 1 when any check fails;
``-o json`` for scripts. The checks and their judgements live in ``bgpd.cli.doctor``.
"""

from __future__ import annotations

import os
import sys

import click

from bgpd.cli import doctor as d
from bgpd.cli.output import emit, output_option
from config import DEFAULT_PATH, ConfigError, load_file


@click.command("doctor")
@click.option("--config", "config_path", envvar="NODEROUTER_CONFIG", default=DEFAULT_PATH,
              show_default=True, type=click.Path(dir_okay=False), help="Node config YAML.")
@click.option("--cni-conf-dir", default="/etc/cni/net.d", show_default=True,
              help="Where the container runtime reads CNI network configs.")
@click.option("--cni-bin-dir", default="/opt/cni/bin", show_default=True,
              help="Where the container runtime finds CNI plugins.")
@output_option
def doctor(config_path: str, cni_conf_dir: str, cni_bin_dir: str, fmt: str) -> None:
    """Check this host before the first start: kernel modules, forwarding, the CNI config,
    etcd, ExaBGP and routes to the BGP peers. Run it where the daemon runs (its network
    namespace)."""
    import structlog

    if not structlog.is_configured():
        # structlog's default prints every event (etcd retries...) to stdout, which would
        # break `-o json`; each problem is one of our checks, so errors only, to stderr.
        from config.logs import setup_logging

        setup_logging("error")
    checks: list[d.Check] = []
    try:
        cfg = load_file(config_path)
        checks.append(d.Check("config", True, f"{config_path}: node {cfg.node.name}, "
                              f"{len(cfg.pools)} pool(s), {len(cfg.bgp.peers)} peer(s)"))
    except ConfigError as exc:
        cfg = None
        first = exc.problems[0] if exc.problems else None
        checks.append(d.Check("config", False,
                              f"{len(exc.problems)} problem(s), first: {first}",
                              f"fix {config_path} (`noderouter check-config {config_path}` "
                              "lists every problem); the checks that need it were skipped"))
    needed = d.modules_needed(cfg.pools) if cfg else {m: "unknown (no config)"
                                                      for m in d.MODULE_CONFIG}
    for module, why in needed.items():
        checks.append(d.judge_module(module, why, d.read_module_evidence(module)))
    checks.append(d.judge_forwarding(*d.read_forwarding()))
    checks.append(d.judge_cni_conf(cni_conf_dir, d.read_conf_dir(cni_conf_dir)))
    plugin = os.path.join(cni_bin_dir, d.PLUGIN_TYPE)
    checks.append(d.judge_cni_plugin(plugin, os.path.isfile(plugin)
                                     and os.access(plugin, os.X_OK)))
    if cfg is not None:
        checks.append(d.probe_etcd(cfg.etcd))
        from bgpd.bgp.speaker import default_exabgp

        checks.append(d.probe_exabgp(cfg.bgp.exabgp_path or default_exabgp()))
        checks.extend(d.peer_checks(cfg.bgp))
    code = d.exit_code(checks)
    if fmt == "json":
        emit({"ok": code == 0, "checks": [c.to_dict() for c in checks]}, "json")
    else:
        for line in d.render(checks):
            click.echo(line)
        failed = [c.name for c in checks if c.ok is False]
        click.echo(f"{len(failed)} check(s) failed: {', '.join(failed)}" if failed
                   else "all checks passed")
    sys.exit(code)
