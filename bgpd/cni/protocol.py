"""The CNI plugin's pure half: request parsing and validation, results, error objects.

Nothing here touches the kernel, etcd or the clock; ``bgpd.cni.main`` feeds it the
environment and stdin and writes what it returns to stdout.

Why the plugin talks to etcd directly and not to the local daemon
-----------------------------------------------------------------
Calico's plugin talks to the datastore directly, and so does ours: the daemon is a
long-lived process that restarts (upgrades, SIGHUP mistakes, crashes, issue 7's fault
suite kills it on purpose), and pods must keep starting and stopping while it does.
Everything ADD needs is either in etcd (the address, by handle, with the same
compare-and-swap discipline the daemon uses) or in the local kernel (veth, proxy ARP,
the /32 host route). The daemon learns about the workload from the state record in
``state_dir`` (written before the route exists) and owns the route from then on (same
route protocol number), so nothing in ADD has to wait for it. The cost: each plugin
invocation opens its own etcd connection (one process per pod event), and an etcd
outage fails ADD — which it must anyway, since no address can be allocated safely
without the datastore. That failure is fast and explicit (code 11, bounded timeout).

Review notes (invariants)
-------------------------
* stdout carries exactly one JSON document (a result, a VERSION answer or an error
  object) or nothing (DEL/CHECK/STATUS/GC success); logs never go there.
* Every error carries a spec code: 1 incompatible version, 2 unsupported field,
  3 unknown container, 4 invalid environment, 6 undecodable input, 7 invalid network
  config, 11 try again later (etcd unreachable), 50 plugin not available (STATUS);
  100+ are ours (see ``Code``).
* Validation happens before anything is touched: a bad request leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from config.policy_layout import (
    DEFAULT_ETCD_PREFIX,
    DEFAULT_NAMESPACE,
    PROTOCOLS,
    dns_label_problem,
    dns_subdomain_problem,
    label_key_problem,
    label_value_problem,
    port_name_problem,
    port_number_problem,
)

# ----------------------------------------------------------------- versions

# 0.3.0/0.3.1 and 0.4.0 share the "ips[].version" result shape; 1.x dropped it.
SUPPORTED_VERSIONS: tuple[str, ...] = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION = "1.1.0"

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")

GATEWAY = "169.254.1.1"          # Calico's link-local next hop, answered by proxy ARP
# Issue 15: the host veth of a dual-stack pod gets this fixed MAC (Calico's), so its
# EUI-64 link-local address is known before the veth exists and the pod's IPv6
# default route can point at it without waiting for (or reading) the host side.
HOST_MAC6 = "ee:ee:ee:ee:ee:ee"
GATEWAY6 = "fe80::ecee:eeff:feee:eeee"   # the EUI-64 link-local of HOST_MAC6
DEFAULT_MTU = 1450               # VXLAN-safe on a 1500-byte underlay
DEFAULT_ROUTE_PROTOCOL = 73      # == config.schema.DEFAULT_ROUTE_PROTOCOL (the daemon's)
DEFAULT_STATE_DIR = "/var/lib/noderouter/cni"
DEFAULT_WORKLOAD_PREFIX = "nrw"
DEFAULT_ETCD_TIMEOUT = 3.0       # bounded: an outage fails ADD in ~3 s with code 11
HANDLE_PREFIX = "k8s-pod-network."   # == ipam.model.POD_HANDLE_PREFIX
PLUGIN_TYPE = "noderouter-cni"


class Code:
    """CNI error codes: the spec's well-known ones, then ours (100+)."""

    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENV = 4
    IO_FAILURE = 5
    DECODE = 6
    INVALID_CONFIG = 7
    TRY_AGAIN_LATER = 11
    NOT_AVAILABLE = 50           # STATUS (spec 1.1.0): cannot service ADD now
    # ours
    INTERNAL = 100               # a bug: the message says where; please report it
    IPAM_EXHAUSTED = 101         # no address in any eligible pool
    ALREADY_ATTACHED = 102       # ADD again, but the attachment differs (DEL it first)
    KERNEL = 103                 # a netlink/sysctl operation failed
    CHECK_FAILED = 104           # CHECK found a missing or wrong resource
    DATASTORE = 105              # etcd answered but refused (TLS, permissions, conflicts)
    STATE = 106                  # the node-local state dir could not be read or written
    ADDRESS_UNAVAILABLE = 107    # the requested address (ips) is held, reserved or not ours


class CniError(Exception):
    """An error the plugin reports as a CNI error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = int(code)
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str = CURRENT_VERSION) -> dict[str, Any]:
        return error_object(self.code, self.msg, self.details, cni_version)


def error_object(code: int, msg: str, details: str = "",
                 cni_version: str = CURRENT_VERSION) -> dict[str, Any]:
    """The spec's error object; ``cniVersion`` echoes the request's when it was valid."""
    if cni_version not in SUPPORTED_VERSIONS:
        cni_version = CURRENT_VERSION
    return {"cniVersion": cni_version, "code": int(code), "msg": msg, "details": details}


def version_key(v: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", v)
    if not m:
        raise CniError(Code.INCOMPATIBLE_VERSION, f"cniVersion {v!r} is not a version",
                       f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    return int(m[1]), int(m[2]), int(m[3])


def version_answer(cni_version: str = CURRENT_VERSION) -> dict[str, Any]:
    """The VERSION command's answer (in the request's version when we speak it)."""
    if cni_version not in SUPPORTED_VERSIONS:
        cni_version = CURRENT_VERSION
    return {"cniVersion": cni_version, "supportedVersions": list(SUPPORTED_VERSIONS)}


# ----------------------------------------------------------------- environment

# Spec: "must start with an alphanumeric character, optionally followed by any
# combination of one or more alphanumeric characters, underscore, dot or hyphen".
# The length bound keeps the IPAM handle within its 253-character limit.
_CONTAINER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,236}$")
_ARG_RE = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class CniEnv:
    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Mapping[str, str] = field(default_factory=dict)
    path: tuple[str, ...] = ()


def check_ifname(name: str) -> str:
    """Linux interface-name rules, as the spec restates them."""
    if not name:
        raise CniError(Code.INVALID_ENV, "CNI_IFNAME is empty",
                       "give the interface name inside the container, e.g. eth0")
    if name in (".", "..") or len(name) > 15 or any(c in name for c in "/:") \
            or any(c.isspace() for c in name):
        raise CniError(Code.INVALID_ENV, f"CNI_IFNAME {name!r} is not a valid interface name",
                       "1-15 characters, not '.' or '..', no '/', ':' or whitespace")
    return name


def check_container_id(cid: str) -> str:
    if not cid:
        raise CniError(Code.INVALID_ENV, "CNI_CONTAINERID is missing or empty",
                       "the runtime must pass the container ID")
    if not _CONTAINER_ID_RE.match(cid):
        raise CniError(Code.INVALID_ENV, f"CNI_CONTAINERID {cid!r} is invalid",
                       "1-237 characters: alphanumeric first, then alphanumerics, '_', '.', '-'")
    return cid


def parse_cni_args(raw: str) -> dict[str, str]:
    """``CNI_ARGS``: ``K=V;K2=V2``; a malformed pair is an error. Which keys are
    allowed is ``check_cni_args``'s business."""
    out: dict[str, str] = {}
    for part in raw.split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not _ARG_RE.match(key):
            raise CniError(Code.INVALID_ENV, f"CNI_ARGS item {part!r} is not KEY=VALUE",
                           "CNI_ARGS is KEY=VALUE pairs separated by ';'")
        out[key] = value
    return out


# CNI_ARGS keys this plugin reads or knows runtimes send (kubelet, CRI-O, containerd,
# podman all send IgnoreUnknown=1 with the K8S_* ones); IP: the legacy requested-
# address convention (``requested_address``).
KNOWN_CNI_ARGS = frozenset({"IgnoreUnknown", "K8S_POD_NAMESPACE", "K8S_POD_NAME",
                            "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID", "IP"})


def check_cni_args(args: Mapping[str, str]) -> None:
    """As the reference plugins (``types.LoadArgs``): a key the plugin does not know
    is an error unless ``IgnoreUnknown`` is true ("1"/"true", any case); another
    IgnoreUnknown value is an error too."""
    ignore = args.get("IgnoreUnknown")
    if ignore is not None and ignore.strip().lower() not in ("1", "true", "0", "false"):
        raise CniError(Code.INVALID_ENV, f"CNI_ARGS IgnoreUnknown={ignore!r} is not a boolean",
                       "use IgnoreUnknown=1 (or true, 0, false)")
    unknown = sorted(k for k in args if k not in KNOWN_CNI_ARGS)
    if unknown and (ignore or "").strip().lower() not in ("1", "true"):
        raise CniError(Code.INVALID_ENV, f"CNI_ARGS has unknown keys: {', '.join(unknown)}",
                       f"known: {', '.join(sorted(KNOWN_CNI_ARGS))}; add IgnoreUnknown=1 "
                       "to CNI_ARGS to have unknown keys ignored")


def parse_env(env: Mapping[str, str]) -> CniEnv:
    """The CNI_* variables; which are required depends on the command (spec table)."""
    command = env.get("CNI_COMMAND", "").strip().upper()
    if not command:
        raise CniError(Code.INVALID_ENV, "CNI_COMMAND is not set",
                       f"one of {', '.join(COMMANDS)}")
    if command not in COMMANDS:
        raise CniError(Code.INVALID_ENV, f"CNI_COMMAND {command!r} is unknown",
                       f"one of {', '.join(COMMANDS)}")
    path = tuple(p for p in env.get("CNI_PATH", "").split(":") if p)
    if command in ("VERSION", "STATUS", "GC"):
        return CniEnv(command, path=path)
    cid = check_container_id(env.get("CNI_CONTAINERID", ""))
    ifname = check_ifname(env.get("CNI_IFNAME", ""))
    netns = env.get("CNI_NETNS", "")
    # DEL may come without a netns (the container is already gone): spec says clean
    # up what we can. ADD and CHECK cannot work without one.
    if command in ("ADD", "CHECK") and not netns:
        raise CniError(Code.INVALID_ENV, f"CNI_NETNS is missing for {command}",
                       "the runtime must pass the path of the container's network namespace")
    if netns and not netns.startswith("/"):
        raise CniError(Code.INVALID_ENV, f"CNI_NETNS {netns!r} is not an absolute path",
                       "e.g. /var/run/netns/<name> or /proc/<pid>/ns/net")
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    check_cni_args(args)
    return CniEnv(command, cid, netns, ifname, args, path)


# ----------------------------------------------------------------- network config

@dataclass(frozen=True)
class NetConf:
    cni_version: str
    name: str
    type: str
    etcd_endpoints: tuple[str, ...]
    etcd_ca: str | None = None
    etcd_cert: str | None = None
    etcd_key: str | None = None
    etcd_timeout: float = DEFAULT_ETCD_TIMEOUT
    node_name: str = ""
    mtu: int = DEFAULT_MTU
    route_protocol: int = DEFAULT_ROUTE_PROTOCOL
    state_dir: str = DEFAULT_STATE_DIR
    workload_prefix: str = DEFAULT_WORKLOAD_PREFIX
    ipam_prefix: str | None = None
    ipam_pool: str | None = None
    log_file: str | None = None
    log_level: str = "info"
    prev_result: Mapping[str, Any] | None = None
    valid_attachments: tuple[tuple[str, str], ...] | None = None
    # Addresses the runtime asks for (runtimeConfig.ips, args.cni.ips), without prefix.
    requested_ips: tuple[str, ...] = ()
    # The root of every noderouter key (the daemon's etcd.prefix): the pod's
    # WorkloadEndpoint goes under <etcd_prefix>/policy/v1/ (``etcd_root``).
    etcd_prefix: str | None = None
    # The pod's labels and named ports for network policy (args.cni.labels / .ports).
    labels: tuple[tuple[str, str], ...] = ()
    named_ports: tuple[tuple[str, str, int], ...] = ()
    # Which families ADD assigns (issue 15), Calico's ``ipam: {"assign_ipv4": "true",
    # "assign_ipv6": "true"}``; the default is IPv4 only, as before.
    assign_ipv4: bool = True
    assign_ipv6: bool = False

    @property
    def etcd_root(self) -> str:
        """Where the policy records live: ``etcd_prefix``; without it, what precedes
        ``/ipam/v1/`` in ``ipam_prefix`` (the daemon puts IPAM at
        ``<etcd.prefix>/ipam/v1/``, so a conf written for one daemon keeps both under
        one root); else ``/noderouter``, the daemon's default."""
        if self.etcd_prefix:
            return self.etcd_prefix.rstrip("/") or "/"
        if self.ipam_prefix and self.ipam_prefix.rstrip("/").endswith("/ipam/v1"):
            return self.ipam_prefix.rstrip("/")[: -len("/ipam/v1")] or "/"
        return DEFAULT_ETCD_PREFIX


# Keys a runtime (or a chain) may put into any plugin's config; we accept and ignore them.
_RUNTIME_KEYS = {"cniVersion", "cniVersions", "name", "type", "args", "capabilities",
                 "runtimeConfig", "prevResult", "dns", "ipam", "disableCheck", "disableGC",
                 "cni.dev/valid-attachments", "cni.dev/attachments"}
_OUR_KEYS = {"etcd_endpoints", "etcd_ca", "etcd_cert", "etcd_key", "etcd_timeout",
             "node_name", "mtu", "route_protocol", "state_dir", "workload_prefix",
             "ipam_prefix", "ipam_pool", "log_file", "log_level", "daemon_socket",
             "etcd_prefix"}


def decode_json(raw: bytes | str, what: str = "network configuration") -> Any:
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CniError(Code.DECODE, f"the {what} on stdin is not valid JSON",
                       str(exc)) from None


def request_version(raw: bytes | str) -> str:
    """Best effort: the cniVersion of a request, to answer an error in its version."""
    try:
        doc = decode_json(raw)
    except CniError:
        return CURRENT_VERSION
    v = doc.get("cniVersion") if isinstance(doc, dict) else None
    return v if isinstance(v, str) and v in SUPPORTED_VERSIONS else CURRENT_VERSION


def _str(doc: Mapping[str, Any], key: str, default: str | None = None) -> str | None:
    v = doc.get(key, default)
    if v is None or isinstance(v, str):
        return v
    raise CniError(Code.INVALID_CONFIG, f"network config key {key!r} must be a string",
                   f"got {json.dumps(v)}")


def _int(doc: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    v = doc.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise CniError(Code.INVALID_CONFIG,
                       f"network config key {key!r} must be an integer in {lo}..{hi}",
                       f"got {json.dumps(v)}")
    return v


def _endpoints(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        items = [e.strip() for e in v.split(",")]
    elif isinstance(v, list) and all(isinstance(e, str) for e in v):
        items = [e.strip() for e in v]
    else:
        raise CniError(Code.INVALID_CONFIG, "etcd_endpoints must be a list of host:port "
                       "strings or one comma-separated string", f"got {json.dumps(v)}")
    items = [e for e in items if e]
    if not items:
        raise CniError(Code.INVALID_CONFIG, "etcd_endpoints is empty",
                       'e.g. "etcd_endpoints": ["198.18.0.10:2379"]')
    for e in items:
        hostport = e.split("://", 1)[-1]
        host, sep, port = hostport.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise CniError(Code.INVALID_CONFIG, f"etcd endpoint {e!r} is not host:port",
                           "e.g. 198.18.0.10:2379 or https://198.18.0.10:2379")
    return tuple(items)


def _attachments(doc: Mapping[str, Any]) -> tuple[tuple[str, str], ...] | None:
    # libcni sends both names (cni#1101: the spec once used the other one).
    raw = doc.get("cni.dev/valid-attachments", doc.get("cni.dev/attachments"))
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise CniError(Code.INVALID_CONFIG, "cni.dev/valid-attachments must be a list")
    out = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("containerID"), str):
            raise CniError(Code.INVALID_CONFIG,
                           "each cni.dev/valid-attachments item needs a containerID string",
                           f"got {json.dumps(item)}")
        out.append((item["containerID"], str(item.get("ifname", ""))))
    return tuple(out)


def _address_list(value: Any, where: str, code: int = Code.INVALID_CONFIG) -> list[str]:
    """``["198.19.0.5/24", "198.19.0.6"]`` -> the addresses (a prefix length is
    allowed, as the "ips" convention writes them, and ignored: pods get a /32)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CniError(code, f"{where} must be a list of address strings",
                       f"got {json.dumps(value)}")
    out = []
    for item in value:
        try:
            out.append(str(ipaddress.ip_interface(item.strip()).ip))
        except ValueError:
            raise CniError(code, f"{where}: {item!r} is not an IP address",
                           'e.g. "198.19.255.250" or "198.19.255.250/24"') from None
    return out


def _conf_requested_ips(doc: Mapping[str, Any]) -> tuple[str, ...]:
    """The "ips" capability (``runtimeConfig.ips``) and the ``args.cni.ips``
    convention (CNI conventions.md): addresses the runtime wants for the pod."""
    out: list[str] = []
    rc = doc.get("runtimeConfig")
    if rc is not None:
        if not isinstance(rc, dict):
            raise CniError(Code.INVALID_CONFIG, "runtimeConfig must be an object",
                           f"got {json.dumps(rc)}")
        if rc.get("ips") is not None:
            out += _address_list(rc["ips"], "runtimeConfig.ips")
    args = doc.get("args")
    if isinstance(args, dict) and isinstance(args.get("cni"), dict) \
            and args["cni"].get("ips") is not None:
        out += _address_list(args["cni"]["ips"], "args.cni.ips")
    return tuple(out)


def _cni_args_list(doc: Mapping[str, Any], key: str) -> list | None:
    """``args.cni.<key>`` (CNI conventions.md), None when absent; a list or code 7."""
    args = doc.get("args")
    if not isinstance(args, dict) or not isinstance(args.get("cni"), dict):
        return None
    value = args["cni"].get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise CniError(Code.INVALID_CONFIG, f"args.cni.{key} must be a list",
                       f"got {json.dumps(value)}")
    return value


def _fields(item: Any, where: str, required: tuple[str, ...],
            optional: tuple[str, ...] = ()) -> Mapping[str, Any]:
    if not isinstance(item, dict):
        raise CniError(Code.INVALID_CONFIG, f"{where} must be an object",
                       f"got {json.dumps(item)}")
    unknown = sorted(set(item) - set(required) - set(optional))
    if unknown:
        raise CniError(Code.INVALID_CONFIG, f"{where}: unknown field {unknown[0]!r}",
                       f"allowed: {', '.join(required + optional)}")
    missing = [k for k in required if k not in item]
    if missing:
        raise CniError(Code.INVALID_CONFIG, f"{where}.{missing[0]}: required",
                       f"got {json.dumps(item)}")
    return item


def conf_labels(doc: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The pod's labels from ``args.cni.labels`` (CNI conventions.md:
    ``[{"key": "app", "value": "web"}]``), checked as Kubernetes checks pod labels.
    Any problem is code 7 naming the item: nothing is allocated for a bad request."""
    raw = _cni_args_list(doc, "labels")
    out: dict[str, str] = {}
    for i, item in enumerate(raw or []):
        where = f"args.cni.labels[{i}]"
        m = _fields(item, where, ("key", "value"))
        problem = label_key_problem(m["key"])
        if problem:
            raise CniError(Code.INVALID_CONFIG, f"{where}.key: {problem}")
        problem = label_value_problem(m["value"])
        if problem:
            raise CniError(Code.INVALID_CONFIG, f"{where}.value: {problem}")
        if m["key"] in out:
            raise CniError(Code.INVALID_CONFIG, f"{where}.key: label {m['key']!r} given twice",
                           "a pod has one value per label key")
        out[m["key"]] = m["value"]
    return tuple(sorted(out.items()))


def conf_named_ports(doc: Mapping[str, Any]) -> tuple[tuple[str, str, int], ...]:
    """The pod's named ports from ``args.cni.ports``: a Kubernetes containerPort each,
    ``{"name": "http", "containerPort": 8080, "protocol": "TCP"}`` (``port`` is
    accepted for ``containerPort``, as the WorkloadEndpoint and the CLI spell it;
    protocol defaults to TCP). Names are unique per pod, as Kubernetes requires.
    Returns (name, protocol, port) tuples; any problem is code 7 naming the item."""
    raw = _cni_args_list(doc, "ports")
    out: list[tuple[str, str, int]] = []
    for i, item in enumerate(raw or []):
        where = f"args.cni.ports[{i}]"
        m = _fields(item, where, ("name",), ("containerPort", "port", "protocol"))
        problem = port_name_problem(m["name"])
        if problem:
            raise CniError(Code.INVALID_CONFIG, f"{where}.name: {problem}")
        if ("containerPort" in m) == ("port" in m):
            raise CniError(Code.INVALID_CONFIG, f"{where}.containerPort: give the port "
                           "number once (containerPort, or its alias port)",
                           f"got {json.dumps(m)}")
        field_name = "containerPort" if "containerPort" in m else "port"
        problem = port_number_problem(m[field_name])
        if problem:
            raise CniError(Code.INVALID_CONFIG, f"{where}.{field_name}: {problem}")
        proto = m.get("protocol", "TCP")
        if proto not in PROTOCOLS:
            raise CniError(Code.INVALID_CONFIG, f"{where}.protocol: {proto!r} is not one of "
                           f"{', '.join(PROTOCOLS)}")
        if any(name == m["name"] for name, _, _ in out):
            raise CniError(Code.INVALID_CONFIG, f"{where}.name: port name {m['name']!r} "
                           "given twice", "port names are unique per pod")
        out.append((m["name"], proto, m[field_name]))
    return tuple(out)


def _conf_bool(doc: Mapping[str, Any], key: str, default: bool) -> bool:
    """``ipam.<key>``: Calico writes these as the strings "true"/"false"; JSON
    booleans are accepted too. Anything else is code 7 naming the key."""
    ipam = doc.get("ipam")
    if ipam is None:
        return default
    if not isinstance(ipam, dict):
        raise CniError(Code.INVALID_CONFIG, "network config key 'ipam' must be an object",
                       f"got {json.dumps(ipam)}")
    v = ipam.get(key, default)
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    raise CniError(Code.INVALID_CONFIG, f"ipam.{key} must be \"true\" or \"false\"",
                   f"got {json.dumps(v)}")


def requested_addresses(conf_ips: tuple[str, ...], cni_args: Mapping[str, str],
                        assign_ipv4: bool = True,
                        assign_ipv6: bool = False) -> dict[int, str]:
    """The addresses ADD must assign, by family (4/6); a family without one is
    allocated. At most one per family, and only in a family the conf assigns
    (issue 15); IPv4-only confs keep ``requested_address``'s errors."""
    if assign_ipv4 and not assign_ipv6:
        one = requested_address(conf_ips, cni_args)
        return {4: one} if one is not None else {}
    asked = list(conf_ips)
    if cni_args.get("IP"):
        asked += _address_list([a for a in cni_args["IP"].split(",") if a.strip()],
                               "CNI_ARGS IP", Code.INVALID_ENV)
    out: dict[int, str] = {}
    for addr in dict.fromkeys(asked):
        family = 6 if ":" in addr else 4
        if not (assign_ipv4 if family == 4 else assign_ipv6):
            raise CniError(Code.INVALID_CONFIG, f"requested address {addr} is IPv{family}",
                           f"this network's ipam.assign_ipv{family} is \"false\"")
        if family in out:
            raise CniError(Code.INVALID_CONFIG, f"2 IPv{family} addresses requested "
                           f"({out[family]}, {addr})",
                           "this plugin assigns one address per family; ask for one")
        out[family] = addr
    return out


def requested_address(conf_ips: tuple[str, ...], cni_args: Mapping[str, str]) -> str | None:
    """The one IPv4 address ADD must assign, or None to allocate one. Sources, as the
    reference host-local IPAM reads them: ``CNI_ARGS`` ``IP=a[,b]``, ``args.cni.ips``,
    ``runtimeConfig.ips``. Issue 16: ``podman run --ip`` must get that address or an
    error, never another one silently."""
    asked = list(conf_ips)
    if cni_args.get("IP"):
        asked += _address_list([a for a in cni_args["IP"].split(",") if a.strip()],
                               "CNI_ARGS IP", Code.INVALID_ENV)
    distinct = list(dict.fromkeys(asked))
    v6 = [a for a in distinct if ":" in a]
    if v6:
        raise CniError(Code.INVALID_CONFIG, f"requested address {v6[0]} is IPv6",
                       "this plugin assigns one IPv4 address per attachment")
    if len(distinct) > 1:
        raise CniError(Code.INVALID_CONFIG,
                       f"{len(distinct)} addresses requested ({', '.join(distinct)})",
                       "this plugin assigns one IPv4 address per attachment; ask for one")
    return distinct[0] if distinct else None


def parse_conf(raw: bytes | str, command: str = "ADD",
               env: Mapping[str, str] | None = None,
               default_node: str = "") -> NetConf:
    """Decode and validate the network configuration (one plugin's, not a list).

    ``default_node`` is the hostname; ``NODEROUTER_NODE_NAME`` in ``env`` wins over
    both it and the conf's ``node_name`` (so one conf file serves every node).
    """
    env = env or {}
    doc = decode_json(raw)
    if not isinstance(doc, dict):
        raise CniError(Code.DECODE, "the network configuration must be a JSON object",
                       f"got {type(doc).__name__}")
    version = doc.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(Code.INVALID_CONFIG, "the network configuration has no cniVersion",
                       f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(Code.INCOMPATIBLE_VERSION,
                       f"cniVersion {version} is not supported by {PLUGIN_TYPE}",
                       f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    check_command_version(command, version)
    name = _str(doc, "name", "") or ""
    ptype = _str(doc, "type", "") or ""
    if ptype and ptype != PLUGIN_TYPE:
        raise CniError(Code.INVALID_CONFIG, f"network config type is {ptype!r}, "
                       f"not {PLUGIN_TYPE!r}", "the runtime picked the wrong plugin")
    # Unknown keys: accepted (the spec lets configs carry plugin-specific and
    # future keys), but a key that is ours with a typo is better caught: warn via
    # the caller's log, not an error (a runtime upgrade must not break pods).
    if command in ("VERSION",):
        return NetConf(version, name, ptype, ())
    endpoints = _endpoints(doc.get("etcd_endpoints", env.get("NODEROUTER_ETCD_ENDPOINTS")))
    tls = {k: _str(doc, k) for k in ("etcd_ca", "etcd_cert", "etcd_key")}
    if (tls["etcd_cert"] is None) != (tls["etcd_key"] is None):
        raise CniError(Code.INVALID_CONFIG, "etcd_cert and etcd_key go together",
                       "give both (client certificate and its key) or neither")
    if tls["etcd_cert"] is not None and tls["etcd_ca"] is None:
        raise CniError(Code.INVALID_CONFIG, "etcd_cert needs etcd_ca as well",
                       "the CA bundle that signed etcd's server certificate")
    timeout = doc.get("etcd_timeout", DEFAULT_ETCD_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
            or not 0.1 <= timeout <= 60:
        raise CniError(Code.INVALID_CONFIG, "etcd_timeout must be seconds in 0.1..60",
                       f"got {json.dumps(timeout)}")
    conf_node = _str(doc, "node_name")
    if conf_node is not None and not conf_node.strip():
        # Issue 12: absent means the host name; an empty value is a mistake (a template
        # that rendered nothing), and the host name may not be the registered node.
        raise CniError(Code.INVALID_CONFIG, "network config key 'node_name' is empty",
                       "give the node's name (the one the daemon registers), or leave "
                       "the key out to use the host name")
    node = env.get("NODEROUTER_NODE_NAME") or conf_node or default_node
    if not node or not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?", node):
        raise CniError(Code.INVALID_CONFIG, f"node name {node!r} is invalid",
                       "set node_name in the conf or NODEROUTER_NODE_NAME "
                       "(a DNS-like name, the one the daemon registers)")
    prefix = _str(doc, "workload_prefix", DEFAULT_WORKLOAD_PREFIX) or ""
    if not 1 <= len(prefix) <= 4 or not prefix.isalnum() or not prefix.isascii():
        raise CniError(Code.INVALID_CONFIG, f"workload_prefix {prefix!r} is invalid",
                       "1-4 ASCII letters/digits (the veth name is prefix + 11 hex digits)")
    state_dir = _str(doc, "state_dir", DEFAULT_STATE_DIR) or ""
    if not state_dir.startswith("/"):
        raise CniError(Code.INVALID_CONFIG, f"state_dir {state_dir!r} must be an absolute path")
    pool = _str(doc, "ipam_pool")
    if pool is not None:
        try:
            net = ipaddress.ip_network(pool)
        except ValueError:
            raise CniError(Code.INVALID_CONFIG, f"ipam_pool {pool!r} is not a CIDR") from None
        if net.version != 4:
            raise CniError(Code.INVALID_CONFIG, f"ipam_pool {pool} is not IPv4",
                           "this plugin hands out IPv4 addresses only")
    level = _str(doc, "log_level", "info") or "info"
    if level not in ("debug", "info", "warning", "error"):
        raise CniError(Code.INVALID_CONFIG, f"log_level {level!r} is invalid",
                       "debug, info, warning or error")
    prev = doc.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(Code.INVALID_CONFIG, "prevResult must be an object")
    return NetConf(
        cni_version=version, name=name, type=ptype, etcd_endpoints=endpoints,
        etcd_ca=tls["etcd_ca"], etcd_cert=tls["etcd_cert"], etcd_key=tls["etcd_key"],
        etcd_timeout=float(timeout), node_name=node,
        mtu=_int(doc, "mtu", DEFAULT_MTU, 576, 9000),
        route_protocol=_int(doc, "route_protocol", DEFAULT_ROUTE_PROTOCOL, 5, 254),
        state_dir=state_dir, workload_prefix=prefix,
        ipam_prefix=_str(doc, "ipam_prefix"), ipam_pool=pool,
        log_file=_str(doc, "log_file"), log_level=level,
        prev_result=prev, valid_attachments=_attachments(doc),
        requested_ips=_conf_requested_ips(doc) if command == "ADD" else (),
        etcd_prefix=_etcd_prefix(doc),
        labels=conf_labels(doc) if command == "ADD" else (),
        named_ports=conf_named_ports(doc) if command == "ADD" else (),
        **_families(doc))


def _families(doc: Mapping[str, Any]) -> dict[str, bool]:
    v4 = _conf_bool(doc, "assign_ipv4", True)
    v6 = _conf_bool(doc, "assign_ipv6", False)
    if not v4:
        # Every pod keeps its IPv4 address for now: IPv6-only pods are not built yet.
        raise CniError(Code.INVALID_CONFIG, "ipam.assign_ipv4 \"false\" is not supported",
                       "this plugin assigns IPv4, or IPv4 and IPv6 (ipam.assign_ipv6 "
                       "\"true\"); IPv6-only pods are not supported yet")
    return {"assign_ipv4": v4, "assign_ipv6": v6}


def _etcd_prefix(doc: Mapping[str, Any]) -> str | None:
    prefix = _str(doc, "etcd_prefix")
    if prefix is not None and not prefix.startswith("/"):
        raise CniError(Code.INVALID_CONFIG, f"etcd_prefix {prefix!r} must start with '/'",
                       "the daemon's etcd.prefix, e.g. /noderouter")
    return prefix


def unknown_keys(raw: bytes | str) -> list[str]:
    """Top-level keys that are neither the runtime's nor ours (for a warning)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return []
    if not isinstance(doc, dict):
        return []
    return sorted(k for k in doc if k not in _RUNTIME_KEYS | _OUR_KEYS)


def check_command_version(command: str, version: str) -> None:
    """CHECK exists from 0.4.0; STATUS and GC from 1.1.0 (older confs get code 1)."""
    v = version_key(version)
    if command == "CHECK" and v < (0, 4, 0):
        raise CniError(Code.INCOMPATIBLE_VERSION, f"CHECK is not defined for cniVersion {version}",
                       "CHECK needs cniVersion 0.4.0 or later")
    if command in ("STATUS", "GC") and v < (1, 1, 0):
        raise CniError(Code.INCOMPATIBLE_VERSION,
                       f"{command} is not defined for cniVersion {version}",
                       f"{command} needs cniVersion 1.1.0")


# ----------------------------------------------------------------- names

def pod_handle(container_id: str) -> str:
    """The IPAM handle of a pod's address (Calico's form)."""
    return HANDLE_PREFIX + container_id


def host_veth_name(prefix: str, container_id: str) -> str:
    """``<prefix><first 11 hex of sha1(containerID)>``: stable across retries (a
    repeated ADD or a DEL finds the same device) and at most 15 characters."""
    digest = hashlib.sha1(container_id.encode("utf-8")).hexdigest()[:11]
    name = prefix + digest
    assert len(name) <= 15, name
    return name


def k8s_attrs(args: Mapping[str, str]) -> dict[str, str]:
    """Pod identity from CNI_ARGS (kubelet passes K8S_POD_NAMESPACE / K8S_POD_NAME)."""
    out = {}
    if args.get("K8S_POD_NAMESPACE"):
        out["namespace"] = args["K8S_POD_NAMESPACE"]
    if args.get("K8S_POD_NAME"):
        out["pod"] = args["K8S_POD_NAME"]
    return out


@dataclass(frozen=True)
class PodIdentity:
    """Who the pod is for network policy: its namespace and name, the key of its
    WorkloadEndpoint (``<prefix>/policy/v1/workloadendpoints/<node>/<ns>/<pod>``)."""

    namespace: str
    pod: str


def _valid_pod_name(name: str) -> str:
    """A valid, stable pod name for a runtime's name Kubernetes would refuse."""
    readable = "".join(c if c.isascii() and (c.isalnum() or c in "-.") else "-"
                       for c in name.lower()).strip("-.")[:40].rstrip("-.")
    return f"{readable or 'pod'}-{hashlib.sha1(name.encode('utf-8')).hexdigest()[:10]}"


def pod_identity(args: Mapping[str, str], container_id: str) -> PodIdentity:
    """From ``CNI_ARGS`` as kubelet sends them (``K8S_POD_NAMESPACE``, ``K8S_POD_NAME``).
    Without a namespace the pod lives in ``default`` (issue 14). Without a name the
    container id stands for it, as the node always named such workloads (runtimes use
    lowercase hex ids); an id that is no valid pod name (capitals, ``_``, over 253
    characters) becomes ``cid-<sha1 of the id, 20 hex>``: stable, so DEL finds the same
    record, and never lowercased, which could make two containers one pod. A
    namespace or name that Kubernetes would refuse is code 4 naming the CNI_ARGS key
    (checked before anything is touched)."""
    namespace = args.get("K8S_POD_NAMESPACE") or DEFAULT_NAMESPACE
    problem = dns_label_problem(namespace)
    if problem:
        raise CniError(Code.INVALID_ENV, f"CNI_ARGS K8S_POD_NAMESPACE: {problem}")
    pod = args.get("K8S_POD_NAME")
    if pod:
        if dns_subdomain_problem(pod):
            # Not from kubelet (it sends only valid names): podman's CNI backend passes the
            # container's name, and its generated names have '_' ("vibrant_goldstine").
            # Refusing them failed every default `podman run`; a stable readable name with
            # a hash of the original keeps distinct names distinct and lets DEL find it.
            pod = _valid_pod_name(pod)
        return PodIdentity(namespace, pod)
    pod = container_id
    if dns_subdomain_problem(pod):
        pod = "cid-" + hashlib.sha1(container_id.encode("utf-8")).hexdigest()[:20]
    return PodIdentity(namespace, pod)


# ----------------------------------------------------------------- results

@dataclass(frozen=True)
class Attachment:
    """What ADD built (or CHECK found): enough to render the spec's result."""

    ip: str
    host_ifname: str
    host_mac: str
    ifname: str
    pod_mac: str
    netns: str
    mtu: int = DEFAULT_MTU
    ip6: str = ""                 # the pod's IPv6 address of a dual-stack attachment


def build_result(version: str, att: Attachment) -> dict[str, Any]:
    """The ADD result in ``version``'s shape. Interface 0 is the host veth (no
    sandbox), interface 1 the pod's; the address and routes belong to interface 1."""
    old = version_key(version) < (1, 0, 0)
    ips: list[dict[str, Any]] = []
    routes: list[dict[str, str]] = []
    if att.ip:
        ip = {"address": f"{att.ip}/32", "gateway": GATEWAY, "interface": 1}
        ips.append({"version": "4", **ip} if old else ip)
        routes.append({"dst": "0.0.0.0/0", "gw": GATEWAY})
    if att.ip6:
        ip6 = {"address": f"{att.ip6}/128", "gateway": GATEWAY6, "interface": 1}
        ips.append({"version": "6", **ip6} if old else ip6)
        routes.append({"dst": "::/0", "gw": GATEWAY6})
    pod_if: dict[str, Any] = {"name": att.ifname, "mac": att.pod_mac, "sandbox": att.netns}
    if version_key(version) >= (1, 1, 0):
        pod_if["mtu"] = att.mtu           # 1.1.0 added the interface MTU
    return {
        "cniVersion": version,
        "interfaces": [{"name": att.host_ifname, "mac": att.host_mac}, pod_if],
        "ips": ips,
        "routes": routes,
        "dns": {},
    }


def result_ips(prev: Mapping[str, Any]) -> list[str]:
    """The addresses (without prefix length) a prevResult lists, in its order."""
    out = []
    ips = prev.get("ips", [])
    if not isinstance(ips, list):
        raise CniError(Code.INVALID_CONFIG, "prevResult.ips must be a list")
    for item in ips:
        addr = item.get("address") if isinstance(item, dict) else None
        if not isinstance(addr, str):
            raise CniError(Code.INVALID_CONFIG, "prevResult.ips[].address must be a string")
        try:
            out.append(str(ipaddress.ip_interface(addr).ip))
        except ValueError:
            raise CniError(Code.INVALID_CONFIG,
                           f"prevResult address {addr!r} is not an address/prefix") from None
    return out


def dumps(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, sort_keys=False, separators=(",", ": "))
