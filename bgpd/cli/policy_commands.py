"""`noderouter policy|namespace|workload ...`: network policy resources in etcd (issue 14).

    noderouter policy apply -f FILE        multi-document YAML ('-' = stdin): Kubernetes
                                           NetworkPolicy, noderouter.io/v1 NetworkPolicy,
                                           v1 Namespace, noderouter.io/v1 WorkloadEndpoint
    noderouter policy list|get NAME|delete NAME [-n NAMESPACE]
    noderouter policy explain SRC DST PORT/PROTO
    noderouter namespace label NAME k=v ... [k-]     noderouter namespace list
    noderouter workload label POD k=v ... --node NODE [-n NS]   noderouter workload list

Invalid input is refused whole, every problem on its own line as
``file:line: field: problem``, and nothing is written. The layout in etcd is
``bgpd.node.policy_store``'s. Talks to etcd directly with the options the other
commands use (``--etcd-endpoints``, TLS); ``--etcd-root`` is the config's
``etcd.prefix``. Exit codes: 0 ok, 1 failure (refused input, not found), 2 usage.
"""

from __future__ import annotations

import dataclasses
import functools
import sys

import click

from bgpd.cli.etcd_options import etcd_connection_options
from bgpd.cli.output import emit, output_option


def _store_options(f):
    @click.option("--etcd-root", envvar="NODEROUTER_ETCD_ROOT", default="/noderouter",
                  show_default=True,
                  help="Key prefix of all noderouter data: the config's etcd.prefix "
                       "(env NODEROUTER_ETCD_ROOT).")
    @etcd_connection_options
    @functools.wraps(f)
    def wrapper(*args, etcd_endpoints, etcd_ca, etcd_cert, etcd_key, etcd_root, etcd_timeout,
                **kwargs):
        from bgpd.cli.ipam_commands import _quiet_logs
        from bgpd.node.policy_store import PolicyStore
        from felix_like.policy_model import PolicyError
        from ipam.errors import IpamError
        from ipam.store import EtcdStore

        _quiet_logs()
        try:
            store = EtcdStore(etcd_endpoints, ca=etcd_ca, cert=etcd_cert, key=etcd_key,
                              timeout=etcd_timeout)
            try:
                return f(PolicyStore(store, etcd_root), *args, **kwargs)
            finally:
                store.close()
        except PolicyError as exc:
            # Every problem on its own line, nothing written (the store validates first).
            for problem in exc.problems:
                click.echo(problem, err=True)
            click.echo(f"refused: {len(exc.problems)} problem(s); nothing was written", err=True)
            sys.exit(1)
        except IpamError as exc:
            raise click.ClickException(str(exc)) from None
    return wrapper


def _policy_row(key: str, res, problem: str | None) -> dict:
    if res is None:
        return {"namespace": None, "name": key.rsplit("/", 1)[-1], "kind": None, "types": None,
                "order": None, "selector": None, "key": key, "problem": problem}
    order = None if res.order == float("inf") else res.order
    return {"namespace": res.namespace, "name": res.name,
            "kind": "noderouter.io/v1" if res.kind == "noderouter" else "networking.k8s.io/v1",
            "types": list(res.policy_types), "order": order,
            "selector": res.pod_selector.canonical(), "key": key, "problem": problem}


def _parse_labels(pairs: tuple[str, ...]) -> tuple[dict[str, str], set[str]]:
    """``k=v`` sets, ``k-`` removes (kubectl's form); the model validates the values."""
    sets, removes = {}, set()
    for pair in pairs:
        if "=" in pair:
            k, _, v = pair.partition("=")
            if not k:
                raise click.BadParameter(f"{pair!r}: empty label key", param_hint="LABELS")
            sets[k] = v
        elif pair.endswith("-") and len(pair) > 1:
            removes.add(pair[:-1])
        else:
            raise click.BadParameter(f"{pair!r}: use key=value to set or key- to remove",
                                     param_hint="LABELS")
    return sets, removes


# ====================================================================== policy

@click.group("policy")
def policy() -> None:
    """Network policies (Kubernetes NetworkPolicy semantics, enforced with nftables)."""


@policy.command("apply")
@click.option("-f", "--filename", "file", type=click.File("r"), required=True,
              help="YAML file, one or many documents ('-' = stdin).")
@output_option
@_store_options
def policy_apply(ps, file, fmt) -> None:
    """Validate every document, then write them all in one etcd transaction."""
    from config.yamlsource import YamlSyntaxError, parse_documents
    from felix_like.policy_model import PolicyError

    source = "<stdin>" if file.name == "<stdin>" else file.name
    try:
        docs = parse_documents(file.read())
    except YamlSyntaxError as exc:
        where = f"{source}:{exc.line}" if exc.line else source
        raise PolicyError([f"{where}: (yaml): {exc}"]) from None
    if not docs:
        raise PolicyError([f"{source}: (document): the file holds no document"])
    placed = ps.apply_documents(docs, source)
    rows = [{"kind": type(r).__name__,
             "namespace": getattr(r, "namespace", None) or None,
             "name": getattr(r, "pod", None) or r.name, "key": k} for k, r in placed]
    if fmt == "json":
        emit(rows, fmt)
        return
    for row in rows:
        ns = f"{row['namespace']}/" if row["namespace"] else ""
        click.echo(f"{row['kind'].lower()} {ns}{row['name']} configured")


@policy.command("list")
@click.option("-n", "--namespace", default=None, help="Only this namespace (default: all).")
@output_option
@_store_options
def policy_list(ps, namespace, fmt) -> None:
    """Every policy: namespace, name, kind, types, order, selector."""
    rows = [_policy_row(k, r, p) for k, r, p in ps.list("networkpolicies")
            if namespace is None or (r is not None and r.namespace == namespace)]
    emit(rows, fmt, ["namespace", "name", "kind", "types", "order", "selector", "problem"])


@policy.command("get")
@click.argument("name")
@click.option("-n", "--namespace", default="default", show_default=True)
@output_option
@_store_options
def policy_get(ps, name, namespace, fmt) -> None:
    """One policy as stored (the document you applied)."""
    found = ps.get(ps.keys.policy(namespace, name))
    if found is None:
        raise click.ClickException(f"policy {namespace}/{name} not found")
    _, doc = found
    if fmt == "json":
        emit(doc, fmt)
        return
    import yaml

    click.echo(yaml.safe_dump(doc, sort_keys=False).rstrip())


@policy.command("delete")
@click.argument("name")
@click.option("-n", "--namespace", default="default", show_default=True)
@output_option
@_store_options
def policy_delete(ps, name, namespace, fmt) -> None:
    """Delete one policy (exit 1 when it does not exist)."""
    if not ps.delete_policy(namespace, name):
        raise click.ClickException(f"policy {namespace}/{name} not found")
    if fmt == "json":
        emit({"deleted": f"{namespace}/{name}"}, fmt)
    else:
        click.echo(f"networkpolicy {namespace}/{name} deleted")


@policy.command("explain")
@click.argument("src")
@click.argument("dst")
@click.argument("port_proto", metavar="PORT/PROTO")
@output_option
@_store_options
def policy_explain(ps, src, dst, port_proto, fmt) -> None:
    """Would a new connection SRC -> DST PORT/PROTO pass? (from the datastore's view:
    endpoints with IPs in their WorkloadEndpoint records)."""
    from felix_like.policy_calc import calculate, plan_allows

    port, _, proto = port_proto.partition("/")
    proto = (proto or "TCP").upper()
    if not port.isdigit() or not 0 < int(port) < 65536 or proto not in ("TCP", "UDP", "SCTP"):
        raise click.BadParameter(f"{port_proto!r}: use PORT/TCP|UDP|SCTP, port 1-65535",
                                 param_hint="PORT/PROTO")
    res = {kind: [r for _, r, _ in ps.list(kind) if r is not None]
           for kind in ("networkpolicies", "namespaces", "workloadendpoints")}
    # Records need no interface; the calculation keys endpoints by one (two sharing an
    # interface count as a conflict), so each gets a stand-in name here.
    endpoints = [dataclasses.replace(ep, host_interface=f"ep{i}")
                 for i, ep in enumerate(res["workloadendpoints"])]
    plan = calculate(res["networkpolicies"], res["namespaces"], endpoints)
    by_ip = {ip: ep for ep in plan.endpoints for ip in ep.addresses}
    allowed = plan_allows(plan, src, dst, proto.lower(), int(port))

    def side(ip: str, direction: str):
        ep = by_ip.get(ip)
        if ep is None:
            return {"endpoint": None, "policies": None}
        chains = ep.ingress if direction == "Ingress" else ep.egress
        policy_of = {c.name: c.policy for c in plan.chains}
        return {"endpoint": "/".join(ep.endpoint),
                "policies": (["/".join(policy_of[n][1:]) for n in chains]
                             if chains is not None else None)}

    data = {"src": src, "dst": dst, "port": int(port), "protocol": proto,
            "allowed": allowed, "egress_of_src": side(src, "Egress"),
            "ingress_of_dst": side(dst, "Ingress")}
    if fmt == "json":
        emit(data, fmt)
        return
    for label, info in (("egress of " + src, data["egress_of_src"]),
                        ("ingress of " + dst, data["ingress_of_dst"])):
        if info["endpoint"] is None:
            click.echo(f"{label}: not a known workload endpoint (not policed here)")
        elif info["policies"] is None:
            click.echo(f"{label}: {info['endpoint']}, no policy selects it (not isolated)")
        else:
            click.echo(f"{label}: {info['endpoint']}, policies: {', '.join(info['policies'])}")
    click.echo(f"verdict: {'ALLOW' if allowed else 'DENY'}")
    if not allowed:
        sys.exit(1)


# ====================================================================== namespace

@click.group("namespace")
def namespace() -> None:
    """Namespaces and their labels (for namespaceSelector)."""


@namespace.command("label")
@click.argument("name")
@click.argument("labels", nargs=-1, required=True)
@output_option
@_store_options
def namespace_label(ps, name, labels, fmt) -> None:
    """Set (k=v) or remove (k-) labels of namespace NAME (created if missing)."""
    sets, removes = _parse_labels(labels)
    found = ps.get(ps.keys.namespace(name))
    current = dict(found[0].labels) if found else {}
    # Kubernetes' own label is derived from the name: never stored.
    current.pop("kubernetes.io/metadata.name", None)
    current.update(sets)
    for k in removes:
        current.pop(k, None)
    ns = ps.put_namespace(name, current)
    emit({"namespace": ns.name, "labels": dict(ns.labels)}, fmt)


@namespace.command("list")
@output_option
@_store_options
def namespace_list(ps, fmt) -> None:
    rows = [{"name": r.name if r else k.rsplit("/", 1)[-1],
             "labels": [f"{a}={b}" for a, b in r.labels] if r else None, "problem": p}
            for k, r, p in ps.list("namespaces")]
    emit(rows, fmt, ["name", "labels", "problem"])


# ====================================================================== workload

@click.group("workload")
def workload() -> None:
    """Workload endpoint records: a pod's labels and named ports (the node joins them
    with its CNI records by namespace and pod name)."""


@workload.command("label")
@click.argument("pod")
@click.argument("labels", nargs=-1, required=True)
@click.option("--node", required=True, help="The node the pod runs on.")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("--ip", "ips", multiple=True,
              help="The pod's address (repeat); needed only for peers on other nodes.")
@click.option("--port", "ports", multiple=True, metavar="NAME=PORT[/PROTO]",
              help="A named port of the pod (repeat).")
@output_option
@_store_options
def workload_label(ps, pod, labels, node, namespace, ips, ports, fmt) -> None:
    """Set (k=v) or remove (k-) labels of POD's record (created if missing)."""
    from felix_like.policy_model import NamedPort, WorkloadEndpoint

    sets, removes = _parse_labels(labels)
    found = ps.get(ps.keys.endpoint(node, namespace, pod))
    old = found[0] if found else WorkloadEndpoint(namespace, pod, (), (), "", node, ())
    current = dict(old.labels)
    current.update(sets)
    for k in removes:
        current.pop(k, None)
    named = list(old.named_ports)
    for spec in ports:
        pname, _, rest = spec.partition("=")
        number, _, proto = rest.partition("/")
        if not pname or not number.isdigit():
            raise click.BadParameter(f"{spec!r}: use NAME=PORT[/PROTO]", param_hint="--port")
        named = [p for p in named if p.name != pname] + [
            NamedPort(pname, (proto or "TCP").upper(), int(number))]
    ep = ps.put_endpoint(WorkloadEndpoint(namespace, pod, tuple(sorted(current.items())),
                                          tuple(ips) or old.ips, old.host_interface, node,
                                          tuple(named), old.container_id))
    emit(_endpoint_row(ps.keys.endpoint(node, namespace, pod), ep, None), fmt)


def _endpoint_row(key: str, ep, problem: str | None) -> dict:
    if ep is None:
        return {"node": None, "namespace": None, "pod": key.rsplit("/", 1)[-1], "labels": None,
                "ips": None, "ports": None, "problem": problem}
    return {"node": ep.node, "namespace": ep.namespace, "pod": ep.pod,
            "labels": [f"{k}={v}" for k, v in ep.labels], "ips": list(ep.ips),
            "ports": [f"{p.name}={p.port}/{p.protocol}" for p in ep.named_ports],
            "problem": problem}


@workload.command("list")
@click.option("--node", default=None, help="Only this node's records.")
@output_option
@_store_options
def workload_list(ps, node, fmt) -> None:
    rows = [_endpoint_row(k, r, p) for k, r, p in ps.list("workloadendpoints")
            if node is None or (r is not None and r.node == node)]
    emit(rows, fmt, ["node", "namespace", "pod", "labels", "ips", "ports", "problem"])


commands = (policy, namespace, workload)
