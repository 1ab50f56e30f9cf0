"""What `noderouter doctor` checks before a node's first start (issue 16).

Each check is a pure judgement (``judge_*``: facts in, a ``Check`` out, unit-tested) fed
by a probe (``probe_*``/``read_*``: the only code here that touches the host). The
probes look at the network namespace the doctor runs in: run it where the daemon will
run (``ip netns exec NODE noderouter doctor`` in a lab).
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

PLUGIN_TYPE = "noderouter-cni"
# File names libcni (and so containerd, CRI-O, podman) reads from the conf dir; the
# runtime uses the first valid one in lexical order.
CNI_CONF_EXTENSIONS = (".conf", ".conflist", ".json")

# Kernel modules the dataplane may need, with the kernel config symbol that builds them.
MODULE_CONFIG = {"vxlan": "CONFIG_VXLAN", "ipip": "CONFIG_NET_IPIP",
                 "nf_tables": "CONFIG_NF_TABLES"}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: not needed on this node (skipped), never a failure
    detail: str
    fix: str = ""

    @property
    def status(self) -> str:
        return "skip" if self.ok is None else "ok" if self.ok else "FAIL"

    def to_dict(self) -> dict:
        return {"status": self.status, **asdict(self)}


# ------------------------------------------------------------------ kernel modules

def modules_needed(pools: Iterable) -> dict[str, str | None]:
    """Module name -> why this node's pools need it (None: no pool does)."""
    pools = [p for p in pools if not getattr(p, "disabled", False)]

    def who(pred, what: str) -> str | None:
        names = [str(p.cidr) for p in pools if pred(p)]
        return f"{what} in pool {', '.join(names)}" if names else None

    return {"vxlan": who(lambda p: p.vxlan_mode != "Never", "VXLAN"),
            "ipip": who(lambda p: p.ipip_mode != "Never", "IPIP"),
            "nf_tables": who(lambda p: p.nat_outgoing, "nat_outgoing")}


@dataclass(frozen=True)
class ModuleEvidence:
    loaded: bool             # listed in /proc/modules
    in_sysfs: bool           # /sys/module/NAME exists (loaded, or built in with parameters)
    kconfig: str | None      # "y", "m", "n"/None from the kernel's config, if readable
    modprobe_ok: bool | None  # `modprobe -n NAME` found it (None: could not ask)


def judge_module(name: str, needed_for: str | None, ev: ModuleEvidence) -> Check:
    symbol = MODULE_CONFIG.get(name, name)
    if ev.loaded or ev.in_sysfs:
        present, how = True, "loaded" if ev.loaded else "in the kernel (/sys/module)"
    elif ev.kconfig == "y":
        present, how = True, f"built in ({symbol}=y)"
    elif ev.modprobe_ok:
        present, how = True, "loadable (modprobe finds it; the kernel loads it on first use)"
    else:
        present = False
        how = ("not in this kernel" if ev.kconfig in ("n", None) and ev.modprobe_ok is False
               else f"not loaded, not built in{'' if ev.kconfig is None else f' ({symbol}={ev.kconfig})'}"
               ", and modprobe cannot find it")
    check = f"kernel module {name}"
    if needed_for is None:
        return Check(check, None, f"{how}; needed only when a pool uses it (none here)")
    if present:
        return Check(check, True, f"{how}; needed for {needed_for}")
    return Check(check, False, f"{how}; needed for {needed_for}",
                 f"install a kernel with {name} ({symbol}) or `modprobe {name}` and list it in "
                 f"/etc/modules-load.d/noderouter.conf; or change the pool's mode")


def _kconfig_value(text: str, symbol: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(symbol + "="):
            return line.split("=", 1)[1].strip()
        if line == f"# {symbol} is not set":
            return "n"
    return None


def read_module_evidence(name: str) -> ModuleEvidence:
    loaded = False
    try:
        with open("/proc/modules") as f:
            loaded = any(line.split(" ", 1)[0] == name for line in f)
    except OSError:
        pass  # a kernel without module support has no /proc/modules
    kconfig = None
    for path in ("/proc/config.gz", f"/boot/config-{platform.release()}"):
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as f:
                kconfig = _kconfig_value(f.read(), MODULE_CONFIG.get(name, name))
            break
        except OSError:
            continue
    try:
        res = subprocess.run(["modprobe", "-n", "-q", name], capture_output=True, timeout=10)
        modprobe_ok: bool | None = res.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        modprobe_ok = None
    return ModuleEvidence(loaded, os.path.isdir(f"/sys/module/{name}"), kconfig, modprobe_ok)


# ------------------------------------------------------------------ sysctls

def judge_forwarding(value: str | None, writable: bool) -> Check:
    name = "sysctl net.ipv4.ip_forward"
    if value == "1":
        return Check(name, True, "1 in this network namespace")
    if value is None:
        return Check(name, False, "cannot read /proc/sys/net/ipv4/ip_forward",
                     "run the doctor where the daemon runs, with /proc mounted")
    if writable:
        # felix_like/sysctls.py node_sysctls: the daemon sets it to 1 at start.
        return Check(name, True, f"{value} now; the daemon sets it to 1 when it starts")
    return Check(name, False, f"{value}, and /proc/sys is read-only here: the daemon cannot "
                 "turn forwarding on", "set net.ipv4.ip_forward=1 in /etc/sysctl.d/ "
                 "(or give the daemon a writable /proc/sys)")


def read_forwarding() -> tuple[str | None, bool]:
    path = "/proc/sys/net/ipv4/ip_forward"
    try:
        with open(path) as f:
            value = f.read().strip()
    except OSError:
        return None, False
    return value, os.access(path, os.W_OK)


# ------------------------------------------------------------------ CNI config

def _plugin_types(doc) -> list[str]:
    if not isinstance(doc, dict):
        return []
    if isinstance(doc.get("plugins"), list):
        return [str(p.get("type")) for p in doc["plugins"] if isinstance(p, dict)]
    return [str(doc["type"])] if "type" in doc else []


def judge_cni_conf(conf_dir: str, files: Mapping[str, str | None] | None,
                   plugin_type: str = PLUGIN_TYPE) -> Check:
    """``files``: file name -> text (None: unreadable) of the conf dir; None: no dir."""
    name = "cni config"
    example = "/etc/cni/net.d/10-noderouter.conflist.example"
    fix = (f"copy {example} to {os.path.join(conf_dir, '10-noderouter.conflist')} and set "
           "etcd_endpoints, node_name and the TLS files")
    if files is None:
        return Check(name, False, f"{conf_dir} does not exist", fix)
    confs = sorted(f for f in files if f.endswith(CNI_CONF_EXTENSIONS))
    if not confs:
        return Check(name, False, f"no network config (*.conf, *.conflist, *.json) in "
                     f"{conf_dir}", fix)
    ours, first_valid, problems = None, None, []
    for fname in confs:
        text = files[fname]
        try:
            doc = json.loads(text) if text is not None else None
        except ValueError as exc:
            problems.append(f"{fname}: not JSON ({exc})")
            continue
        if doc is None:
            problems.append(f"{fname}: unreadable")
            continue
        types = _plugin_types(doc)
        if not types:
            problems.append(f"{fname}: no plugin type")
            continue
        first_valid = first_valid or fname
        if plugin_type in types and ours is None:
            ours = (fname, types)
    if ours is None:
        detail = f"no config in {conf_dir} names type {plugin_type}"
        return Check(name, False, detail + (f" ({'; '.join(problems)})" if problems else ""), fix)
    fname, types = ours
    if fname != first_valid:
        return Check(name, False, f"{os.path.join(conf_dir, fname)} names {plugin_type}, but "
                     f"{first_valid} sorts first and the runtime uses only that one",
                     f"rename ours to sort first (e.g. 10-noderouter.conflist) or remove "
                     f"{first_valid}")
    chain = [t for t in types if t != plugin_type]
    return Check(name, True, f"{os.path.join(conf_dir, fname)}: {plugin_type}"
                 + (f" chained with {', '.join(chain)}" if chain else ""))


def read_conf_dir(conf_dir: str) -> dict[str, str | None] | None:
    if not os.path.isdir(conf_dir):
        return None
    out: dict[str, str | None] = {}
    for fname in os.listdir(conf_dir):
        try:
            with open(os.path.join(conf_dir, fname)) as f:
                out[fname] = f.read(1 << 20)
        except (OSError, UnicodeDecodeError):
            out[fname] = None
    return out


def judge_cni_plugin(path: str, executable: bool) -> Check:
    if executable:
        return Check("cni plugin", True, f"{path} is executable")
    return Check("cni plugin", False, f"{path} is missing or not executable",
                 f"install the noderouter package (it ships {path}), or point "
                 "--cni-bin-dir at the runtime's plugin directory")


# ------------------------------------------------------------------ etcd

def judge_etcd(endpoints: Sequence[str], tls_files: Mapping[str, str | None],
               missing_files: Sequence[str], error: str | None) -> Check:
    where = ",".join(endpoints)
    tls = "TLS" if tls_files.get("ca_file") else "plain"
    if tls_files.get("cert_file"):
        tls += " + client certificate"
    if missing_files:
        return Check("etcd", False, f"{where} ({tls}): cannot read {', '.join(missing_files)}",
                     "fix etcd.ca_file / cert_file / key_file in node.yaml")
    if error:
        return Check("etcd", False, f"{where} ({tls}): {error}",
                     "start etcd or fix etcd.endpoints, and check routes and TLS settings")
    return Check("etcd", True, f"{where} ({tls}) answers")


def probe_etcd(etcd_cfg) -> Check:
    files = {"ca_file": etcd_cfg.ca_file, "cert_file": etcd_cfg.cert_file,
             "key_file": etcd_cfg.key_file}
    missing = [f"{k} {v}" for k, v in files.items() if v and not os.access(v, os.R_OK)]
    error = None
    if not missing:
        from ipam.store import EtcdStore

        store = None
        try:
            store = EtcdStore(list(etcd_cfg.endpoints), ca=etcd_cfg.ca_file,
                              cert=etcd_cfg.cert_file, key=etcd_cfg.key_file,
                              timeout=min(etcd_cfg.timeout, 5.0))
            store.get(etcd_cfg.prefix.rstrip("/") + "/doctor")
        except Exception as exc:  # noqa: BLE001 - every failure is the answer here
            error = str(exc) or type(exc).__name__
        finally:
            if store is not None:
                store.close()
    return judge_etcd(list(etcd_cfg.endpoints), files, missing, error)


# ------------------------------------------------------------------ ExaBGP

def judge_exabgp(path: str, returncode: int | None, output: str, error: str | None) -> Check:
    if error is not None or returncode != 0:
        why = error or f"`{path} version` exited {returncode}: {output.strip()[-200:]}"
        return Check("exabgp", False, why,
                     "install the noderouter package (ExaBGP ships in its venv) or set "
                     "bgp.exabgp_path")
    facts = dict(line.split(":", 1) for line in output.splitlines() if ":" in line)
    version = facts.get("ExaBGP ", facts.get("ExaBGP", "?")).strip()
    python = facts.get("Python ", facts.get("Python", "")).strip()
    under = "PyPy" if "PyPy" in python else "CPython" if python else "?"
    return Check("exabgp", True, f"{path}: ExaBGP {version} under {under}")


def probe_exabgp(path: str) -> Check:
    try:
        # ExaBGP 5.0 prints its version with the `version` command (`--version` is a
        # usage error there).
        res = subprocess.run([path, "version"], capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return judge_exabgp(path, None, "", f"cannot run {path}: {exc}")
    return judge_exabgp(path, res.returncode, res.stdout + res.stderr, None)


# ------------------------------------------------------------------ peers

UNICAST_TYPES = {1, 2}  # RTN_UNICAST, RTN_LOCAL


@dataclass(frozen=True)
class RouteAnswer:
    error: str | None = None   # the kernel's refusal (ENETUNREACH, EHOSTUNREACH...)
    rtype: int = 1
    gateway: str | None = None
    dev: str | None = None


def judge_peer(address: str, description: str, route: RouteAnswer) -> Check:
    name = f"route to peer {address}" + (f" ({description})" if description else "")
    fix = "add a route to the peer (or fix bgp.peers[].address in node.yaml)"
    if route.error:
        return Check(name, False, f"no route: {route.error}", fix)
    if route.rtype not in UNICAST_TYPES:
        return Check(name, False, f"the route is of type {route.rtype} (unreachable, "
                     "blackhole or prohibit)", fix)
    via = f"via {route.gateway} " if route.gateway else "directly connected, "
    return Check(name, True, f"{via}dev {route.dev or '?'}")


def probe_route(address: str) -> RouteAnswer:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        try:
            # A FIB lookup (RTM_GETROUTE for one destination), as `ip route get` does.
            msgs = ipr.route("get", dst=address)
        except NetlinkError as exc:
            return RouteAnswer(error=f"{os.strerror(exc.code)} (errno {exc.code})")
        if not msgs:
            return RouteAnswer(error="the kernel returned no route")
        msg = msgs[0]
        oif = msg.get_attr("RTA_OIF")
        dev = None
        if oif:
            links = ipr.get_links(oif)
            dev = links[0].get_attr("IFLA_IFNAME") if links else str(oif)
        return RouteAnswer(rtype=msg["type"], gateway=msg.get_attr("RTA_GATEWAY"), dev=dev)


def peer_checks(bgp_cfg, lookup=probe_route) -> list[Check]:
    if not bgp_cfg.peers:
        if bgp_cfg.mesh:
            return [Check("bgp peers", None, "mesh: the peers are the nodes registered in "
                          "etcd (none configured here)")]
        return [Check("bgp peers", False, "mesh is off and no peers are configured: the "
                      "node would announce its blocks to nobody",
                      "add bgp.peers (the ToR) or set bgp.mesh: true")]
    return [judge_peer(str(p.address), p.description or "", lookup(str(p.address)))
            for p in bgp_cfg.peers]


def exit_code(checks: Iterable[Check]) -> int:
    return 1 if any(c.ok is False for c in checks) else 0


def render(checks: Sequence[Check]) -> list[str]:
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for c in checks:
        line = f"{c.status:<4}  {c.name:<{width}}  {c.detail}"
        if c.ok is False and c.fix:
            line += f" -- {c.fix}"
        lines.append(line)
    return lines
