"""Network policy resources: values, validation, loading (issue 14).

Kinds accepted (one or many YAML documents, or plain dicts):
- ``v1 Namespace`` — name and labels.
- ``noderouter.io/v1 WorkloadEndpoint`` — a pod: namespace, name, labels, node,
  host interface (optional), IPs, named ports (``spec.ports: [{name, protocol, port}]``).
- ``networking.k8s.io/v1 NetworkPolicy`` — the Kubernetes spec, verbatim.
- ``noderouter.io/v1 NetworkPolicy`` — the same spec plus ``spec.order`` (float;
  unset = after every ordered policy, ties by name, as Calico) and per rule
  ``action: Allow|Deny`` (default Allow). A Kubernetes policy sits at order 1000,
  where Calico's conversion puts it.

Validation refuses the whole input on any problem and names every problem as
``file:line: field.path: problem``: unknown fields, bad selectors, port 0 or
above 65535, endPort below port or with a named port, a CIDR with host bits,
an except outside its CIDR. Nothing here touches the kernel.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from config.policy_layout import (
    PROTOCOLS,
    label_key_problem,
    label_value_problem,
    port_name_problem,
)
from config.yamlsource import YamlSyntaxError, parse_documents
from felix_like.errors import DataplaneError

K8S_POLICY_ORDER = 1000.0
DIRECTIONS = ("Ingress", "Egress")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


class PolicyError(DataplaneError, ValueError):
    """One or more problems in policy input; ``problems`` lists ``where: field: problem``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# --- values ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str                 # In | NotIn | Exists | DoesNotExist
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels


@dataclass(frozen=True)
class Selector:
    """A Kubernetes LabelSelector; the empty selector matches everything."""

    match_labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return (all(labels.get(k) == v for k, v in self.match_labels)
                and all(r.matches(labels) for r in self.expressions))

    def canonical(self) -> str:
        parts = [f"{k}=={v}" for k, v in sorted(self.match_labels)]
        parts += [f"{r.key} {r.operator} ({','.join(sorted(set(r.values)))})"
                  for r in sorted(self.expressions, key=lambda r: (r.key, r.operator, r.values))]
        return " && ".join(parts) or "all()"


@dataclass(frozen=True)
class PortSpec:
    protocol: str = "TCP"
    port: int | str | None = None      # None = every port of the protocol
    end_port: int | None = None


@dataclass(frozen=True)
class IPBlock:
    cidr: str
    excepts: tuple[str, ...] = ()

    def ranges(self) -> tuple[str, ...]:
        """The block minus its excepts as disjoint CIDRs (sorted)."""
        nets = [ipaddress.ip_network(self.cidr)]
        for ex in self.excepts:
            exn = ipaddress.ip_network(ex)
            out = []
            for n in nets:
                if exn.version == n.version and exn.subnet_of(n):
                    out.extend(n.address_exclude(exn))
                elif n.version == exn.version and n.subnet_of(exn):
                    continue
                else:
                    out.append(n)
            nets = out
        return tuple(str(n) for n in sorted(nets, key=lambda n: (n.version, n)))


@dataclass(frozen=True)
class Peer:
    """Exactly one of: ip_block, or pod/namespace selectors (either may be None)."""

    pod_selector: Selector | None = None
    namespace_selector: Selector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class Rule:
    action: str = "Allow"                    # Allow | Deny
    peers: tuple[Peer, ...] = ()             # empty = any peer
    ports: tuple[PortSpec, ...] = ()         # empty = any port, any protocol


@dataclass(frozen=True)
class NetworkPolicy:
    kind: str                                # "k8s" | "noderouter"
    namespace: str
    name: str
    pod_selector: Selector
    policy_types: tuple[str, ...]
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    order: float = K8S_POLICY_ORDER          # math.inf = unset (applied last)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    def sort_key(self) -> tuple:
        return (self.order, self.name, self.namespace, self.kind)


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True)
class NamedPort:
    name: str
    protocol: str
    port: int


@dataclass(frozen=True)
class WorkloadEndpoint:
    namespace: str
    pod: str
    labels: tuple[tuple[str, str], ...]
    ips: tuple[str, ...]
    host_interface: str
    node: str = ""
    named_ports: tuple[NamedPort, ...] = ()
    container_id: str = ""        # the CNI attachment that wrote the record ("" = the CLI)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.pod)

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


# --- validation --------------------------------------------------------------------------
@dataclass
class _Ctx:
    source: str
    problems: list[str] = field(default_factory=list)

    def add(self, line: int | None, path: str, problem: str) -> None:
        where = f"{self.source}:{line}" if line else self.source
        self.problems.append(f"{where}: {path}: {problem}")


def _line(node, key=None) -> int | None:
    if key is not None:
        lines = getattr(node, "key_lines", None)
        if lines and key in lines:
            return lines[key]
        items = getattr(node, "item_lines", None)
        if items is not None and isinstance(key, int) and key < len(items):
            return items[key]
    return getattr(node, "line", None) or None


def _mapping(ctx: _Ctx, value, path: str, allowed: Iterable[str], line: int | None) -> dict | None:
    if not isinstance(value, Mapping):
        ctx.add(line, path, f"expected a mapping, got {type(value).__name__}")
        return None
    allowed = set(allowed)
    for key in value:
        if key not in allowed:
            ctx.add(_line(value, key), f"{path}.{key}" if path else key,
                    f"unknown field (allowed: {', '.join(sorted(allowed))})")
    return value


def _list(ctx: _Ctx, value, path: str, line: int | None) -> list | None:
    if value is None:
        return []
    if not isinstance(value, list):
        ctx.add(line, path, f"expected a list, got {type(value).__name__}")
        return None
    return value


# The name rules are shared with the CNI plugin (config.policy_layout).
_label_key_problem = label_key_problem
_label_value_problem = label_value_problem
_port_name_problem = port_name_problem


def _labels(ctx: _Ctx, value, path: str, line) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        ctx.add(line, path, "expected a mapping of labels")
        return ()
    out = []
    for k, v in value.items():
        problem = _label_key_problem(k) or _label_value_problem(v)
        if problem:
            ctx.add(_line(value, k), f"{path}.{k}", problem)
        else:
            out.append((k, v))
    return tuple(sorted(out))


def _selector(ctx: _Ctx, value, path: str, line) -> Selector:
    if value is None:
        return Selector()
    m = _mapping(ctx, value, path, ("matchLabels", "matchExpressions"), line)
    if m is None:
        return Selector()
    labels = _labels(ctx, m.get("matchLabels"), f"{path}.matchLabels", _line(m, "matchLabels"))
    exprs = []
    items = _list(ctx, m.get("matchExpressions"), f"{path}.matchExpressions",
                  _line(m, "matchExpressions")) or []
    for i, e in enumerate(items):
        p = f"{path}.matchExpressions[{i}]"
        eline = _line(items, i)
        em = _mapping(ctx, e, p, ("key", "operator", "values"), eline)
        if em is None:
            continue
        key, op = em.get("key"), em.get("operator")
        problem = _label_key_problem(key)
        if problem:
            ctx.add(_line(em, "key") or eline, f"{p}.key", problem)
            continue
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            ctx.add(_line(em, "operator") or eline, f"{p}.operator",
                    f"{op!r} is not one of In, NotIn, Exists, DoesNotExist")
            continue
        values = _list(ctx, em.get("values"), f"{p}.values", _line(em, "values"))
        if values is None:
            continue
        if op in ("In", "NotIn") and not values:
            ctx.add(_line(em, "operator") or eline, f"{p}.values",
                    f"operator {op} needs at least one value")
            continue
        if op in ("Exists", "DoesNotExist") and values:
            ctx.add(_line(em, "values") or eline, f"{p}.values",
                    f"operator {op} takes no values")
            continue
        bad = [v for v in values if _label_value_problem(v)]
        if bad:
            ctx.add(_line(em, "values") or eline, f"{p}.values", _label_value_problem(bad[0]))
            continue
        exprs.append(Requirement(key, op, tuple(values)))
    return Selector(labels, tuple(exprs))


def _network(ctx: _Ctx, value, path: str, line) -> ipaddress._BaseNetwork | None:
    if not isinstance(value, str):
        ctx.add(line, path, f"expected a CIDR string, got {value!r}")
        return None
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        if "host bits" in str(exc):
            ctx.add(line, path, f"{value} has host bits set (did you mean "
                    f"{ipaddress.ip_network(value, strict=False)}?)")
        else:
            ctx.add(line, path, f"{value!r} is not a CIDR")
        return None


def _ip_block(ctx: _Ctx, value, path: str, line) -> IPBlock | None:
    m = _mapping(ctx, value, path, ("cidr", "except"), line)
    if m is None:
        return None
    if "cidr" not in m:
        ctx.add(line, f"{path}.cidr", "required")
        return None
    net = _network(ctx, m["cidr"], f"{path}.cidr", _line(m, "cidr"))
    excepts = []
    items = _list(ctx, m.get("except"), f"{path}.except", _line(m, "except")) or []
    for i, ex in enumerate(items):
        exn = _network(ctx, ex, f"{path}.except[{i}]", _line(items, i))
        if exn is None or net is None:
            continue
        if exn.version != net.version or not exn.subnet_of(net) or exn == net:
            ctx.add(_line(items, i), f"{path}.except[{i}]",
                    f"{exn} is not strictly inside cidr {net}")
            continue
        excepts.append(str(exn))
    if net is None:
        return None
    return IPBlock(str(net), tuple(excepts))


def _peer(ctx: _Ctx, value, path: str, line) -> Peer | None:
    m = _mapping(ctx, value, path, ("podSelector", "namespaceSelector", "ipBlock"), line)
    if m is None:
        return None
    if not m:
        ctx.add(line, path, "a peer needs podSelector, namespaceSelector or ipBlock")
        return None
    if "ipBlock" in m:
        if "podSelector" in m or "namespaceSelector" in m:
            ctx.add(line, path, "ipBlock cannot be combined with podSelector/namespaceSelector")
            return None
        block = _ip_block(ctx, m["ipBlock"], f"{path}.ipBlock", _line(m, "ipBlock"))
        return Peer(ip_block=block) if block else None
    pod = (_selector(ctx, m["podSelector"], f"{path}.podSelector", _line(m, "podSelector"))
           if "podSelector" in m else None)
    ns = (_selector(ctx, m["namespaceSelector"], f"{path}.namespaceSelector",
                    _line(m, "namespaceSelector")) if "namespaceSelector" in m else None)
    return Peer(pod_selector=pod, namespace_selector=ns)


def _port_number(ctx: _Ctx, value, path: str, line) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        ctx.add(line, path, f"expected a port number, got {value!r}")
        return None
    if not 1 <= value <= 65535:
        ctx.add(line, path, f"port {value} is outside 1-65535")
        return None
    return value


def _protocol(ctx: _Ctx, value, path: str, line) -> str | None:
    if value not in PROTOCOLS:
        ctx.add(line, path, f"protocol {value!r} is not one of {', '.join(PROTOCOLS)}")
        return None
    return value


def _port_spec(ctx: _Ctx, value, path: str, line) -> PortSpec | None:
    m = _mapping(ctx, value, path, ("protocol", "port", "endPort"), line)
    if m is None:
        return None
    ok = True
    proto = "TCP"
    if "protocol" in m:
        proto = _protocol(ctx, m["protocol"], f"{path}.protocol", _line(m, "protocol"))
        ok = proto is not None
    port: int | str | None = None
    if m.get("port") is not None:
        raw = m["port"]
        pline = _line(m, "port")
        if isinstance(raw, str):
            problem = _port_name_problem(raw)
            if problem:
                ctx.add(pline, f"{path}.port", problem)
                ok = False
            port = raw
        else:
            port = _port_number(ctx, raw, f"{path}.port", pline)
            ok = ok and port is not None
    end = None
    if m.get("endPort") is not None:
        eline = _line(m, "endPort")
        end = _port_number(ctx, m["endPort"], f"{path}.endPort", eline)
        if end is None:
            ok = False
        elif port is None:
            ctx.add(eline, f"{path}.endPort", "endPort needs a numeric port")
            ok = False
        elif isinstance(port, str):
            ctx.add(eline, f"{path}.endPort", f"endPort cannot be used with a named port ({port})")
            ok = False
        elif end < port:
            ctx.add(eline, f"{path}.endPort", f"endPort {end} is below port {port}")
            ok = False
    return PortSpec(proto, port, end) if ok else None


def _rules(ctx: _Ctx, value, path: str, line, peer_key: str, extended: bool) -> tuple[Rule, ...]:
    items = _list(ctx, value, path, line)
    if items is None:
        return ()
    rules = []
    allowed = {peer_key, "ports"} | ({"action"} if extended else set())
    for i, raw in enumerate(items):
        p = f"{path}[{i}]"
        rline = _line(items, i)
        if raw is None:
            raw = {}
        m = _mapping(ctx, raw, p, allowed, rline)
        if m is None:
            continue
        action = m.get("action", "Allow")
        if action not in ("Allow", "Deny"):
            ctx.add(_line(m, "action") or rline, f"{p}.action", f"{action!r} is not Allow or Deny")
        peers_raw = _list(ctx, m.get(peer_key), f"{p}.{peer_key}", _line(m, peer_key)) or []
        peers = [_peer(ctx, x, f"{p}.{peer_key}[{j}]", _line(peers_raw, j))
                 for j, x in enumerate(peers_raw)]
        ports_raw = _list(ctx, m.get("ports"), f"{p}.ports", _line(m, "ports")) or []
        ports = [_port_spec(ctx, x, f"{p}.ports[{j}]", _line(ports_raw, j))
                 for j, x in enumerate(ports_raw)]
        rules.append(Rule(action, tuple(x for x in peers if x), tuple(x for x in ports if x)))
    return tuple(rules)


_META_FIELDS = ("name", "namespace", "labels", "annotations", "uid", "resourceVersion",
                "generation", "creationTimestamp", "managedFields", "selfLink",
                "generateName", "finalizers", "ownerReferences", "deletionTimestamp",
                "deletionGracePeriodSeconds")


def _meta(ctx: _Ctx, doc, namespaced: bool) -> tuple[str | None, str, tuple]:
    m = _mapping(ctx, doc.get("metadata"), "metadata", _META_FIELDS,
                 _line(doc, "metadata") or _line(doc))
    if m is None:
        return None, "default", ()
    name = m.get("name")
    if not isinstance(name, str) or len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        ctx.add(_line(m, "name") or _line(m), "metadata.name",
                f"{name!r} is not a valid name (lowercase DNS subdomain)")
        name = None
    ns = m.get("namespace", "default") if namespaced else ""
    if namespaced and (not isinstance(ns, str) or not _DNS_LABEL.match(ns) or len(ns) > 63):
        ctx.add(_line(m, "namespace"), "metadata.namespace", f"{ns!r} is not a valid namespace")
    labels = _labels(ctx, m.get("labels"), "metadata.labels", _line(m, "labels"))
    return name, ns, labels


def _policy(ctx: _Ctx, doc, extended: bool) -> NetworkPolicy | None:
    name, ns, _ = _meta(ctx, doc, namespaced=True)
    fields = ["podSelector", "policyTypes", "ingress", "egress"] + (["order"] if extended else [])
    spec = _mapping(ctx, doc.get("spec"), "spec", fields, _line(doc, "spec") or _line(doc))
    if spec is None:
        return None
    before = len(ctx.problems)
    pod_sel = _selector(ctx, spec.get("podSelector"), "spec.podSelector", _line(spec, "podSelector"))
    ingress = _rules(ctx, spec.get("ingress"), "spec.ingress", _line(spec, "ingress"), "from",
                     extended)
    egress = _rules(ctx, spec.get("egress"), "spec.egress", _line(spec, "egress"), "to", extended)
    types_raw = _list(ctx, spec.get("policyTypes"), "spec.policyTypes", _line(spec, "policyTypes"))
    types: list[str] = []
    for i, t in enumerate(types_raw or []):
        if t not in DIRECTIONS:
            ctx.add(_line(types_raw, i), f"spec.policyTypes[{i}]", f"{t!r} is not Ingress or Egress")
        elif t in types:
            ctx.add(_line(types_raw, i), f"spec.policyTypes[{i}]", f"{t} listed twice")
        else:
            types.append(t)
    if not types:
        # Kubernetes' defaulting (SetDefaults_NetworkPolicySpec): always Ingress, plus
        # Egress only when the egress list is non-empty (`egress: []` does not count).
        types = ["Ingress"] + (["Egress"] if spec.get("egress") else [])
    order = K8S_POLICY_ORDER
    if extended:
        order = math.inf
        if spec.get("order") is not None:
            raw = spec["order"]
            if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
                ctx.add(_line(spec, "order"), "spec.order", f"expected a finite number, got {raw!r}")
            else:
                order = float(raw)
    if name is None or len(ctx.problems) != before:
        return None
    return NetworkPolicy("noderouter" if extended else "k8s", ns, name, pod_sel,
                         tuple(t for t in DIRECTIONS if t in types), ingress, egress, order)


def _namespace(ctx: _Ctx, doc) -> Namespace | None:
    name, _, labels = _meta(ctx, doc, namespaced=False)
    _mapping(ctx, doc.get("spec") or {}, "spec", ("finalizers",), _line(doc, "spec"))
    if name is None:
        return None
    # Kubernetes sets this label on every namespace; selectors rely on it.
    return Namespace(name, tuple(sorted(dict(labels, **{
        "kubernetes.io/metadata.name": name}).items())))


def _workload(ctx: _Ctx, doc) -> WorkloadEndpoint | None:
    name, ns, labels = _meta(ctx, doc, namespaced=True)
    spec = _mapping(ctx, doc.get("spec"), "spec",
                    ("node", "interface", "ips", "ports", "containerID"),
                    _line(doc, "spec") or _line(doc))
    if spec is None or name is None:
        return None
    before = len(ctx.problems)
    # The interface is optional: a record in etcd (written by the CLI or the CNI) may
    # not know it; the node joins its own workloads with the CNI's local records.
    ifname = spec.get("interface", "")
    if ifname != "" and (not isinstance(ifname, str) or not _IFNAME.match(ifname)):
        ctx.add(_line(spec, "interface") or _line(spec), "spec.interface",
                f"{ifname!r} is not an interface name (1-15 of [A-Za-z0-9_.-])")
    node = spec.get("node", "")
    if not isinstance(node, str):
        ctx.add(_line(spec, "node"), "spec.node", "expected a string")
    container_id = spec.get("containerID", "")
    if not isinstance(container_id, str):
        ctx.add(_line(spec, "containerID"), "spec.containerID", "expected a string")
    ips = []
    items = _list(ctx, spec.get("ips"), "spec.ips", _line(spec, "ips")) or []
    for i, ip in enumerate(items):
        try:
            ips.append(str(ipaddress.ip_address(ip)))
        except ValueError:
            ctx.add(_line(items, i), f"spec.ips[{i}]", f"{ip!r} is not an IP address")
    named = []
    ports = _list(ctx, spec.get("ports"), "spec.ports", _line(spec, "ports")) or []
    for i, raw in enumerate(ports):
        p = f"spec.ports[{i}]"
        m = _mapping(ctx, raw, p, ("name", "protocol", "port"), _line(ports, i))
        if m is None:
            continue
        pname = m.get("name")
        problem = (_port_name_problem(pname) if isinstance(pname, str)
                   else f"expected a port name, got {pname!r}")
        if problem:
            ctx.add(_line(m, "name") or _line(ports, i), f"{p}.name", problem)
        proto = _protocol(ctx, m.get("protocol", "TCP"), f"{p}.protocol", _line(m, "protocol"))
        number = _port_number(ctx, m.get("port"), f"{p}.port", _line(m, "port") or _line(m))
        if not problem and proto and number:
            named.append(NamedPort(pname, proto, number))
    if len(ctx.problems) != before:
        return None
    return WorkloadEndpoint(ns, name, labels, tuple(ips), ifname, node, tuple(named),
                            container_id)


_KINDS = {
    ("networking.k8s.io/v1", "NetworkPolicy"): lambda c, d: _policy(c, d, extended=False),
    ("noderouter.io/v1", "NetworkPolicy"): lambda c, d: _policy(c, d, extended=True),
    ("v1", "Namespace"): _namespace,
    ("noderouter.io/v1", "WorkloadEndpoint"): _workload,
}

Resource = NetworkPolicy | Namespace | WorkloadEndpoint


def _document(ctx: _Ctx, doc) -> Resource | None:
    if not isinstance(doc, Mapping):
        ctx.add(_line(doc), "(document)", "expected a mapping with apiVersion and kind")
        return None
    unknown = set(doc) - {"apiVersion", "kind", "metadata", "spec", "status"}
    for key in sorted(unknown):
        ctx.add(_line(doc, key), key, "unknown field (allowed: apiVersion, kind, metadata, spec)")
    kind = (doc.get("apiVersion"), doc.get("kind"))
    builder = _KINDS.get(kind)
    if builder is None:
        ctx.add(_line(doc, "kind") or _line(doc), "kind",
                f"{kind[0]}/{kind[1]} is not supported (supported: "
                + ", ".join(f"{a} {k}" for a, k in _KINDS) + ")")
        return None
    if unknown:
        return None
    return builder(ctx, doc)


def load_documents(docs: Iterable, source: str = "<input>") -> list[Resource]:
    """Validate documents (dicts, optionally LinedDicts); all or nothing."""
    ctx = _Ctx(source)
    out = []
    seen: dict[tuple, int | None] = {}
    for doc in docs:
        before = len(ctx.problems)
        res = _document(ctx, doc)
        if res is None or len(ctx.problems) != before:
            continue
        key = (type(res).__name__, getattr(res, "key", None) or res.name)
        if key in seen:
            ctx.add(_line(doc), "metadata.name",
                    f"{type(res).__name__} {key[1]} defined twice (first at line {seen[key]})")
            continue
        seen[key] = _line(doc)
        out.append(res)
    if ctx.problems:
        raise PolicyError(ctx.problems)
    return out


def load_yaml(text: str, source: str = "<input>") -> list[Resource]:
    """Parse and validate a multi-document YAML file; PolicyError refuses it whole."""
    try:
        docs = parse_documents(text)
    except YamlSyntaxError as exc:
        where = f"{source}:{exc.line}" if exc.line else source
        raise PolicyError([f"{where}: (yaml): {exc}"]) from None
    return load_documents(docs, source)
