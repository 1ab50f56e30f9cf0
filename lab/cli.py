"""`noderouter-lab up|down|list`: bring the multi-rack lab up and leave it running."""

from __future__ import annotations

import glob
import json
import os
import sys

import click

from bgpd.cli.output import emit, output_option
from config.logs import setup_logging
from lab.procs import LabError
from lab.topology import STATE_DIR, Lab, down_from_state


@click.group("lab")
def lab() -> None:
    """The local multi-rack lab in network namespaces (198.18.0.0/15 only)."""


@lab.command("up")
@click.option("--nodes-per-rack", default=2, show_default=True, type=click.IntRange(1, 50))
@click.option("--design", type=click.Choice(["tor", "mesh"]), default="tor", show_default=True,
              help="tor: nodes peer with their ToR; mesh: nodes full-mesh, CrossSubnet encap.")
@click.option("--prefix", default=None, help="Namespace name prefix (default: random).")
@click.option("--pods-per-node", default=2, show_default=True, type=click.IntRange(0, 50))
@click.option("--underlay-only", is_flag=True, help="Only the racks, ToRs and etcd; no "
                                                    "noderouter, no pods.")
def lab_up(nodes_per_rack: int, design: str, prefix: str | None, pods_per_node: int,
           underlay_only: bool) -> None:
    """Create the lab, run noderouter on every node, wire pods through the CNI plugin,
    show a node's status and the pod-to-pod ping matrix, and leave it all running."""
    if os.geteuid() != 0:
        raise click.ClickException("the lab creates network namespaces: run it as root")
    setup_logging("warning", "auto")
    kwargs = {"prefix": prefix} if prefix else {}
    the_lab = Lab(nodes_per_rack=nodes_per_rack, design=design, **kwargs)
    try:
        click.echo(f"bringing up lab {the_lab.prefix} ({design} design) ...")
        the_lab.up()
        if not underlay_only:
            click.echo("starting noderouter on every node ...")
            the_lab.start_all(wait=True)
            for n in the_lab.nodes:
                for i in range(1, pods_per_node + 1):
                    the_lab.add_pod(n.name, f"pod{i}")
            the_lab.save_state()
    except (LabError, KeyboardInterrupt) as exc:
        the_lab.down()
        raise click.ClickException(f"lab up failed and was torn down: {exc}") from None
    if not underlay_only:
        first = the_lab.nodes[0].name
        click.echo(f"\n$ noderouter status   (on {first})")
        click.echo(the_lab.nr(first, "status").stdout)
        click.echo(ping_matrix(the_lab))
    click.echo(describe(the_lab))


def ping_matrix(the_lab: Lab) -> str:
    """Every pod pings every pod: a table of ok / FAIL."""
    pods = list(the_lab.pods.values())
    names = [f"{p['node'].removeprefix('node-')}/{p['pod']}" for p in pods]
    width = max(len(n) for n in names) if names else 0
    lines = ["pod-to-pod ping matrix (row pings column):",
             " " * (width + 2) + " ".join(n.rjust(width) for n in names)]
    failures = 0
    for src, src_name in zip(pods, names, strict=True):
        cells = []
        for dst in pods:
            if dst is src:
                cells.append("-".rjust(width))
                continue
            ok = the_lab.ping(src["netns"], dst["ip"], count=1, timeout=2) or \
                the_lab.ping(src["netns"], dst["ip"], count=2, timeout=2)
            failures += not ok
            cells.append(("ok" if ok else "FAIL").rjust(width))
        lines.append(f"{src_name.ljust(width)}  " + " ".join(cells))
    lines.append(f"{len(pods) * (len(pods) - 1) - failures} of "
                 f"{len(pods) * (len(pods) - 1)} pairs reachable")
    return "\n".join(lines)


def describe(the_lab: Lab) -> str:
    p = the_lab.prefix
    lines = [f"lab {p} is up ({the_lab.design} design). Namespaces:"]
    lines += [f"  {n.name:10s} {n.netns:14s} {n.address:14s} AS {n.as_number}"
              for n in the_lab.nodes]
    lines += [f"  tor-{k:6s} {t.netns:14s} ({type(t).__name__})" for k, t in the_lab.tors.items()]
    lines += [f"  etcd       {the_lab.ns('etcd'):14s} {the_lab.etcd_endpoint}", "",
              "Look around:",
              f"  ip netns exec {p}-a1 ip route",
              f"  ip netns exec {p}-a1 .venv/bin/noderouter status "
              f"--socket {the_lab.status_socket(the_lab.nodes[0].name)}"
              if the_lab.daemons else "",
              f"  ip netns exec {p}-a1 .venv/bin/noderouter ipam show "
              f"--etcd-endpoints {the_lab.etcd_endpoint}",
              f"  ip netns exec {p}-tora birdc -s {the_lab.tors['a'].workdir}/bird.ctl show protocols"
              if "a" in the_lab.tors else "",
              "Tear down:",
              f"  noderouter-lab down {p}"]
    return "\n".join(line for line in lines if line is not None)


@lab.command("down")
@click.argument("prefix", required=False)
@click.option("--all", "all_", is_flag=True, help="Tear down every recorded lab.")
def lab_down(prefix: str | None, all_: bool) -> None:
    """Stop the lab's daemons by PID and delete its namespaces by name."""
    paths = sorted(glob.glob(os.path.join(STATE_DIR, "*.json"))) if all_ else \
        [os.path.join(STATE_DIR, f"{prefix}.json")] if prefix else []
    if not paths:
        raise click.UsageError("name a lab prefix (see `noderouter-lab list`) or pass --all")
    failed = False
    for path in paths:
        if not os.path.exists(path):
            click.echo(f"no recorded lab at {path}", err=True)
            failed = True
            continue
        errors = down_from_state(path)
        name = os.path.basename(path).removesuffix(".json")
        if errors:
            failed = True
            click.echo(f"lab {name}: teardown problems: {errors}", err=True)
        else:
            click.echo(f"lab {name}: torn down")
    sys.exit(1 if failed else 0)


@lab.command("list")
@output_option
def lab_list(fmt: str) -> None:
    """Labs recorded on this machine."""
    rows = []
    for path in sorted(glob.glob(os.path.join(STATE_DIR, "*.json"))):
        with open(path) as f:
            s = json.load(f)
        rows.append({"prefix": s["prefix"], "design": s.get("design"),
                     "nodes": [n["name"] for n in s.get("nodes", [])], "etcd": s.get("etcd")})
    emit(rows, fmt, ["prefix", "design", "nodes", "etcd"])


# `noderouter-lab` console script: the lab is a development tool with its own entry
# point, so nothing shipped (the `noderouter` CLI included) imports `lab`.
main = lab

if __name__ == "__main__":
    main()
