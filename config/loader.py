"""YAML (plus environment overrides) → a frozen, validated ``Config``.

Everything wrong is collected and reported at once, each problem as
``file:line: key: problem (expected ...)``. Unknown keys are errors: a typo must
not silently fall back to a default. Nothing is changed anywhere by loading.

Environment overrides: ``NODEROUTER_<SECTION>_<KEY>`` for the scalar keys of
the top-level sections, e.g. ``NODEROUTER_NODE_NAME=node-a1``,
``NODEROUTER_ETCD_ENDPOINTS=198.18.0.10:2379,198.18.0.11:2379``,
``NODEROUTER_LOGGING_LEVEL=debug``. They win over the file.
"""

from __future__ import annotations

import dataclasses
import grp
import ipaddress
import os
import pwd
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from config import schema
from config.schema import Config, Secret
from config.yamlsource import LinedDict, LinedList, YamlSyntaxError, parse

ENV_PREFIX = "NODEROUTER_"


@dataclass(frozen=True)
class Problem:
    key: str
    message: str
    line: int | None = None
    source: str | None = None

    def __str__(self) -> str:
        where = self.source or "<config>"
        if self.line is not None:
            where += f":{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(ValueError):
    """The configuration was refused; ``problems`` lists every reason."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))


_ADDRESS_TYPES = frozenset({ipaddress.IPv4Address, ipaddress.IPv6Address})
_NETWORK_TYPES = frozenset({ipaddress.IPv4Network, ipaddress.IPv6Network})


def _either_family(tp):
    """``ipaddress.ip_address`` / ``ip_network`` when ``tp`` is "an address (network) of
    either IP version" (optionally ``| None``), else None."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return None
    args = frozenset(a for a in typing.get_args(tp) if a is not type(None))
    if args == _ADDRESS_TYPES:
        return ipaddress.ip_address
    if args == _NETWORK_TYPES:
        return lambda v: ipaddress.ip_network(v, strict=True)
    return None


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if _either_family(tp) is ipaddress.ip_address:
        return "an IPv4 or IPv6 address such as 198.18.1.10 or 2001:2:0:1::10"
    if _either_family(tp) is not None:
        return "an IPv4 or IPv6 CIDR such as 198.19.0.0/16 or 2001:2:0:19::/64 (no host bits set)"
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_describe(a) for a in inner) + " (or null)"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {
        bool: "true or false", int: "an integer", float: "a number", str: "a string",
        Secret: "a string", ipaddress.IPv4Address: "an IPv4 address such as 198.18.1.10",
        ipaddress.IPv4Network: "an IPv4 CIDR such as 198.19.0.0/16 (no host bits set)",
        ipaddress.IPv6Address: "an IPv6 address such as 2001:2:0:1::11",
        ipaddress.IPv6Network: "an IPv6 CIDR such as 2001:2:0:1::/64 (no host bits set)",
    }.get(tp, getattr(tp, "__name__", str(tp)))


class _Converter:
    def __init__(self, source: str | None) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def fail(self, key: str, line: int | None, message: str) -> None:
        self.problems.append(Problem(key, message, line, self.source))

    def convert(self, value, tp, key: str, line: int | None):  # noqa: C901 - one dispatch
        origin = typing.get_origin(tp)
        either = _either_family(tp)
        if either is not None and value is not None:
            try:
                return either(value) if isinstance(value, str) else _bad()
            except ValueError as exc:
                hint = f" ({exc})" if isinstance(value, str) and "host bits" in str(exc) else ""
                self.fail(key, line, f"{value!r} is not {_describe(tp)}{hint}")
                return None
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if value is None:
                return None
            return self.convert(value, args[0], key, line)
        if value is None:
            self.fail(key, line, f"is empty; expected {_describe(tp)}")
            return None
        if origin is Literal:
            choices = typing.get_args(tp)
            if value not in choices:
                self.fail(key, line, f"{value!r} is not allowed; expected {_describe(tp)}")
            return value
        if origin is tuple:
            if not isinstance(value, list):
                self.fail(key, line, f"expected {_describe(tp)}, got {type(value).__name__}")
                return ()
            item_tp = typing.get_args(tp)[0]
            item_lines = getattr(value, "item_lines", [])
            out = []
            for i, item in enumerate(value):
                item_line = item_lines[i] if i < len(item_lines) else line
                out.append(self.convert(item, item_tp, f"{key}[{i}]", item_line))
            return tuple(out)
        if dataclasses.is_dataclass(tp):
            return self.build(tp, value, key, line)
        if tp is bool:
            if not isinstance(value, bool):
                self.fail(key, line, f"expected true or false, got {value!r}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(key, line, f"expected an integer, got {value!r}")
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.fail(key, line, f"expected a number, got {value!r}")
                return value
            return float(value)
        if tp in (str, Secret):
            if not isinstance(value, str):
                # A secret is never echoed, even when it has the wrong type (an unquoted
                # numeric password is a YAML int, and this message goes to the journal).
                shown = repr(value) if tp is not Secret else (
                    "true/false" if isinstance(value, bool) else
                    "a number" if isinstance(value, (int, float)) else
                    "a list" if isinstance(value, list) else
                    "a mapping" if isinstance(value, dict) else "another type") + " (not shown)"
                self.fail(key, line, f"expected a string, got {shown} (quote it)")
                return value
            return Secret(value) if tp is Secret else value
        if tp in (ipaddress.IPv4Address, ipaddress.IPv6Address):
            try:
                return tp(value) if isinstance(value, str) else _bad()
            except ValueError:
                self.fail(key, line, f"{value!r} is not {_describe(tp)}")
                return None
        if tp in (ipaddress.IPv4Network, ipaddress.IPv6Network):
            try:
                return tp(value) if isinstance(value, str) else _bad()
            except ValueError as exc:
                hint = f" ({exc})" if isinstance(value, str) and "host bits" in str(exc) else ""
                self.fail(key, line, f"{value!r} is not {_describe(tp)}{hint}")
                return None
        raise TypeError(f"config schema uses unsupported type {tp!r} at {key}")

    def build(self, cls, raw, key: str, line: int | None):
        if not isinstance(raw, Mapping):
            self.fail(key, line, f"expected a mapping of {cls.__name__} keys, got {raw!r}")
            return None
        hints = _hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        key_lines = getattr(raw, "key_lines", {})
        for name in raw:
            if name not in fields:
                where = f"{key}.{name}" if key else str(name)
                known = ", ".join(sorted(fields))
                self.fail(where, key_lines.get(name, line), f"unknown key; known keys: {known}")
        kwargs = {}
        for name, f in fields.items():
            where = f"{key}.{name}" if key else name
            if name not in raw:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    self.fail(where, line, f"is required: {f.metadata.get('help', '')}".rstrip())
                continue
            fline = key_lines.get(name, line)
            before = len(self.problems)
            value = self.convert(raw[name], hints[name], where, fline)
            item_check = f.metadata.get("item_check")
            if item_check and len(self.problems) == before and isinstance(value, tuple):
                item_lines = getattr(raw[name], "item_lines", [])
                for i, item in enumerate(value):
                    expected = item_check(item)
                    if expected:
                        iline = item_lines[i] if i < len(item_lines) else fline
                        self.fail(f"{where}[{i}]", iline, f"{_show(item)} is wrong; "
                                                          f"expected {expected}")
            check = f.metadata.get("check")
            if check and len(self.problems) == before and value is not None:
                expected = check(value)
                if expected:
                    self.fail(where, fline, f"{_show(value)} is wrong; expected {expected}")
            kwargs[name] = value
        if any(p.key.startswith(key) for p in self.problems) if key else self.problems:
            return None
        return cls(**kwargs)


def _unwrap_optional(tp):
    """``X | None`` → ``X``; anything else unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _bad():
    raise ValueError("not a string")


def _show(value) -> str:
    if isinstance(value, Secret):
        return "'***'"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return repr(str(value)) if not isinstance(value, tuple) else repr(value)


# ---------------------------------------------------------------- environment


def _env_fields() -> dict[str, tuple[str, str, Any]]:
    """``NODEROUTER_SECTION_KEY`` → (section, key, type) for every overridable scalar."""
    out = {}
    for sf in dataclasses.fields(Config):
        stype = _hints(Config)[sf.name]
        if not dataclasses.is_dataclass(stype):
            continue
        for f in dataclasses.fields(stype):
            ftype = _hints(stype)[f.name]
            if not f.metadata.get("env", True):
                continue
            base = _unwrap_optional(ftype)
            if typing.get_origin(base) is tuple and dataclasses.is_dataclass(
                    typing.get_args(base)[0]):
                continue  # lists of mappings (peers) come from the file only
            out[f"{ENV_PREFIX}{sf.name}_{f.name}".upper()] = (sf.name, f.name, ftype)
    return out


def _env_value(text: str, tp):
    base = _unwrap_optional(tp)
    if typing.get_origin(base) is tuple:
        return LinedList([s.strip() for s in text.split(",") if s.strip()])
    if base in (str, Secret, ipaddress.IPv4Address, ipaddress.IPv4Network,
                ipaddress.IPv6Address, ipaddress.IPv6Network) or \
            typing.get_origin(base) is Literal:
        return text
    try:
        return yaml.safe_load(text)  # ints, floats, true/false, null
    except yaml.YAMLError:
        return text


def apply_env(raw: dict, environ: Mapping[str, str]) -> tuple[dict, dict[tuple[str, str], str]]:
    """Overlay environment overrides on the raw mapping; return it and the var per key."""
    fields = _env_fields()
    origin: dict[tuple[str, str], str] = {}
    for var, text in environ.items():
        if not var.startswith(ENV_PREFIX) or var not in fields:
            continue
        section, key, tp = fields[var]
        sect = raw.get(section)
        if not isinstance(sect, dict):
            sect = LinedDict()
            raw[section] = sect
        sect[key] = _env_value(text, tp)
        origin[(section, key)] = var
    return raw, origin


# ---------------------------------------------------------------- cross-field checks


def _cross_checks(cfg: Config) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    u = cfg.underlay
    if u.address not in u.subnet:
        out.append(("underlay.address", f"{u.address} is not inside underlay.subnet {u.subnet}"))
    if cfg.node.router_id is None and int(u.address) == 0:
        out.append(("underlay.address", f"{u.address} would be the BGP router id, which must "
                                        "be non-zero (RFC 6286); set node.router_id"))
    out += _ipv6_underlay_checks(u)
    seen: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, int] = {}
    for i, p in enumerate(cfg.bgp.peers):
        if p.address in (u.address, u.ipv6_address):
            out.append((f"bgp.peers[{i}].address", f"{p.address} is this node's own address"))
        elif p.address.version == 6 and u.ipv6_address is None:
            out.append((f"bgp.peers[{i}].address",
                        f"IPv6 peer {p.address} needs underlay.ipv6_address (the local end of "
                        f"the session); set it or peer over IPv4"))
        elif p.address.version == 6 and p.address.is_link_local:
            out.append((f"bgp.peers[{i}].address",
                        f"{p.address} is link-local; peer with the router's global IPv6 address"))
        if p.address in seen:
            out.append((f"bgp.peers[{i}].address",
                        f"{p.address} is listed twice (also bgp.peers[{seen[p.address]}])"))
        seen.setdefault(p.address, i)
    for i, pool in enumerate(cfg.pools):
        sizes = schema.BLOCK_SIZES[pool.cidr.version]
        if pool.block_size not in sizes:
            out.append((f"pools[{i}].block_size",
                        f"{pool.block_size} is wrong; expected a number from {sizes[0]} to "
                        f"{sizes[-1]}" + (" (IPv6 blocks)" if pool.cidr.version == 6 else "")))
        elif pool.block_size < pool.cidr.prefixlen:
            out.append((f"pools[{i}].block_size",
                        f"/{pool.block_size} blocks are larger than the pool {pool.cidr}; "
                        f"expected {pool.cidr.prefixlen}..{pool.cidr.max_prefixlen}"))
        if pool.ipip_mode != "Never" and pool.vxlan_mode != "Never":
            out.append((f"pools[{i}]", "ipip_mode and vxlan_mode are both enabled; "
                                       "choose one encapsulation per pool"))
        elif pool.cidr.version == 6 and pool.ipip_mode != "Never":
            out.append((f"pools[{i}].ipip_mode",
                        f"{pool.ipip_mode} is not possible for the IPv6 pool {pool.cidr} (IPIP "
                        f"carries IPv4 only); use vxlan_mode or plain routing (ipip_mode: Never)"))
        underlay = u.subnet if pool.cidr.version == 4 else u.ipv6_subnet
        if underlay is not None and pool.cidr.overlaps(underlay):
            out.append((f"pools[{i}].cidr", f"{pool.cidr} overlaps the underlay {underlay}"))
        for j in range(i):
            if pool.cidr.overlaps(cfg.pools[j].cidr):
                out.append((f"pools[{i}].cidr",
                            f"{pool.cidr} overlaps pools[{j}] {cfg.pools[j].cidr}"))
    e = cfg.etcd
    if bool(e.cert_file) != bool(e.key_file):
        out.append(("etcd.cert_file", "cert_file and key_file go together; set both or neither"))
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(e, name)
        if path and not os.path.isfile(path):
            out.append((f"etcd.{name}", f"file {path!r} does not exist"))
    # Checked here, like the etcd files: an unknown name used to surface only as a KeyError
    # traceback from the status server, after the node had registered in etcd.
    st = cfg.status
    for key, lookup, kind in (("socket_owner", pwd.getpwnam, "user"),
                              ("socket_group", grp.getgrnam, "group")):
        try:
            lookup(getattr(st, key))
        except KeyError:
            out.append((f"status.{key}", f"no {kind} named {getattr(st, key)!r} on this host"))
    m = cfg.metrics
    if m.listen and m.listen == m.health_listen:
        out.append(("metrics.health_listen", f"{m.health_listen} is also metrics.listen"))
    return out


def _ipv6_underlay_checks(u: schema.UnderlaySection) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if (u.ipv6_address is None) != (u.ipv6_subnet is None):
        missing = "ipv6_subnet" if u.ipv6_subnet is None else "ipv6_address"
        out.append((f"underlay.{missing}", "ipv6_address and ipv6_subnet go together; set both "
                                           "or neither"))
        return out
    if u.ipv6_address is None:
        return out
    a = u.ipv6_address
    # The address is a next hop other nodes install and the source of BGP sessions: it must
    # be a routable unicast address, not one the kernel scopes to a link or a host.
    if a.is_link_local or a.is_multicast or a.is_loopback or a.is_unspecified:
        out.append(("underlay.ipv6_address", f"{a} is not a global unicast address; use the "
                                             f"node's global IPv6 address on the uplink"))
    elif a not in u.ipv6_subnet:
        out.append(("underlay.ipv6_address", f"{a} is not inside underlay.ipv6_subnet "
                                             f"{u.ipv6_subnet}"))
    return out


def _line_of(raw, dotted: str) -> int | None:
    """Best-effort line of a dotted key path such as ``bgp.peers[1].address``."""
    node, line = raw, getattr(raw, "line", None)
    for part in dotted.replace("]", "").replace("[", ".").split("."):
        if isinstance(node, LinedDict) and part in node:
            line = node.key_lines.get(part, line)
            node = node[part]
        elif isinstance(node, LinedList) and part.isdigit() and int(part) < len(node):
            line = node.item_lines[int(part)]
            node = node[int(part)]
        else:
            break
    return line


# ---------------------------------------------------------------- entry points


def load_text(text: str, source: str | None = None,
              environ: Mapping[str, str] | None = None) -> Config:
    """Parse and validate; raise ConfigError listing every problem."""
    try:
        raw = parse(text)
    except YamlSyntaxError as exc:
        raise ConfigError([Problem("", str(exc), exc.line, source)]) from None
    if raw is None:
        raw = LinedDict()
    if not isinstance(raw, dict):
        raise ConfigError([Problem("", "the top level must be a mapping of sections "
                                       "(underlay, etcd, node, bgp, pools, ...)", 1, source)])
    raw, env_origin = apply_env(raw, os.environ if environ is None else environ)
    conv = _Converter(source)
    cfg = conv.build(Config, raw, "", getattr(raw, "line", 1))
    problems = conv.problems
    # Problems caused by an environment variable name it instead of a file line.
    problems = [_env_located(p, env_origin) for p in problems]
    if cfg is not None and not problems:
        problems = [Problem(k, msg, _line_of(raw, k), source) for k, msg in _cross_checks(cfg)]
    if problems:
        raise ConfigError(problems)
    return cfg


def _env_located(p: Problem, env_origin: dict[tuple[str, str], str]) -> Problem:
    parts = p.key.split(".")
    if len(parts) >= 2 and (parts[0], parts[1].split("[")[0]) in env_origin:
        var = env_origin[(parts[0], parts[1].split("[")[0])]
        return Problem(p.key, p.message, None, f"environment {var}")
    return p


# Where the Debian package's unit and the CLI look when no --config is given (issue 16).
DEFAULT_PATH = "/etc/noderouter/node.yaml"


def load_file(path: str, environ: Mapping[str, str] | None = None) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem("", f"cannot read config: {exc}", None, path)]) from None
    return load_text(text, source=path, environ=environ)


def reference() -> list[dict[str, str]]:
    """Every parameter with its type, default and help (for docs and `config-reference`)."""
    rows = []

    def walk(cls, prefix: str) -> None:
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            key = f"{prefix}{f.name}"
            base = _unwrap_optional(tp)
            item = typing.get_args(base)[0] if typing.get_origin(base) is tuple else None
            if dataclasses.is_dataclass(tp):
                walk(tp, key + ".")
                continue
            if item is not None and dataclasses.is_dataclass(item):
                rows.append({"key": key, "type": "list", "default": "[]",
                             "help": f.metadata.get("help", "")})
                walk(item, key + "[].")
                continue
            if f.default is not dataclasses.MISSING:
                default = "null" if f.default is None else str(f.default)
            elif f.default_factory is not dataclasses.MISSING:
                default = "(computed)" if f.default_factory is not tuple else "[]"
            else:
                default = "(required)"
            rows.append({"key": key, "type": _describe(tp), "default": default,
                         "help": f.metadata.get("help", "")})

    walk(Config, "")
    return rows


__all__ = ["Config", "ConfigError", "Problem", "load_file", "load_text", "reference", "schema"]
