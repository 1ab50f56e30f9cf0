"""BIRD 2 and FRR as top-of-rack (or spine) BGP routers inside a lab namespace.

Each router runs in one network namespace, from one private work directory: its
config file, control socket(s), pid files and logs all live there, so nothing
clashes with a system instance (none runs here; keep it that way) or with
another router. Daemons are started in the foreground as our children and
stopped by PID (``lab.procs.Daemon``) -- never by name.

API::

    from lab.routers import BgpNeighbor, BirdRouter, FrrRouter

    n = BgpNeighbor(address="198.18.1.10", asn=64512, password="s3cret",
                    passive=False, multihop=None, route_reflector_client=False)
    tor = BirdRouter(netns="nrab12-tora", workdir="/tmp/x/tora",
                     router_id="198.18.1.1", asn=65001, neighbors=[n],
                     static_routes=["198.19.200.0/24"],  # announced (blackhole locally)
                     export_static=True,                 # announce static_routes
                     export_learned=False,               # re-advertise BGP-learned routes
                     kernel_export=True)                 # install BGP-learned routes in the kernel
    tor.start()                      # writes config, starts the daemon(s), waits for the socket
    tor.established("198.18.1.10")  # True once that session is Established
    tor.wait_established("198.18.1.10", timeout=30)
    tor.routes()                     # {prefix: RouterRoute(prefix, nexthops, peer_or_proto)}
    tor.show_protocols()             # raw text, for logs and debugging
    tor.cli("show route")            # any birdc / vtysh command
    tor.stop()                       # by PID; idempotent

``FrrRouter`` has the same constructor and methods. It runs ``zebra`` (the
kernel interface; with ``kernel_export=False`` bgpd runs with ``-n`` so nothing
is installed) and ``bgpd`` as the ``frr`` user (FRR requires its vty group),
with config, pid files and vty sockets in a fresh run dir ``/tmp/nr-frr-*``
(``router.rundir``, removed on stop) and logs in ``workdir``;
``vtysh --vty_socket <rundir>`` talks to them.

Semantics shared by both:

- ``static_routes`` are announced to every neighbour when ``export_static`` is
  true. BIRD holds them as blackhole static routes (not exported to the
  kernel); FRR originates them with ``network`` statements (import-check off).
- Every neighbour's routes are imported. ``kernel_export`` puts BGP-learned
  routes into the router's main table (ECMP merged), so the router forwards
  pod traffic.
- ``export_learned`` re-advertises routes learned from one neighbour to the
  others (what a ToR does towards the spine). Route-reflector clients get
  reflected routes regardless of it in FRR (iBGP) -- set it for BIRD too.
- eBGP vs iBGP follows from ``asn`` vs ``neighbor.asn``. eBGP next hop is self.
- Graceful restart is on in both (the speaker's restart tests rely on it).
- ``password`` enables TCP MD5 for that neighbour.

Review notes: the routers are test fixtures, not production config; they pick
fast timers (hold 9 s, connect retry 1-2 s) so tests converge quickly.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

from lab.procs import Daemon, LabError, netns_argv, wait_for

BIRD = "/usr/sbin/bird"
BIRDC = "/usr/sbin/birdc"
FRR_DIR = "/usr/lib/frr"
VTYSH = "/usr/bin/vtysh"


@dataclass(frozen=True)
class BgpNeighbor:
    address: str
    asn: int
    password: str | None = None
    passive: bool = False
    multihop: int | None = None  # TTL for eBGP multihop; None = directly connected
    route_reflector_client: bool = False
    hold_time: int = 9

    def __post_init__(self) -> None:
        ipaddress.IPv4Address(self.address)
        if self.password is not None and not re.fullmatch(r"[A-Za-z0-9._+=@%-]{1,80}", self.password):
            raise LabError(f"neighbor {self.address}: password must be 1-80 chars of [A-Za-z0-9._+=@%-]")


@dataclass(frozen=True)
class RouterRoute:
    prefix: str
    nexthops: tuple[str, ...]
    source: str  # BGP peer address, or "static"/"kernel"/... for other origins


def _check_prefixes(prefixes: Sequence[str]) -> list[str]:
    return [str(ipaddress.IPv4Network(p)) for p in prefixes]


@dataclass
class _RouterBase:
    netns: str
    workdir: str
    router_id: str
    asn: int
    neighbors: Sequence[BgpNeighbor] = ()
    static_routes: Sequence[str] = ()
    export_static: bool = True
    export_learned: bool = False
    kernel_export: bool = False
    gr_restart_time: int = 120   # graceful-restart time we announce (and keep peers' routes)
    # BIRD packs prefixes that share attributes into one UPDATE. With this set every
    # static route gets its own MED, so each goes out in an UPDATE of its own -- the feed
    # of implementations that inject routes one at a time (issue 18's benchmark). BIRD only.
    one_prefix_per_update: bool = False
    daemons: list[Daemon] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        ipaddress.IPv4Address(self.router_id)
        self.static_routes = _check_prefixes(self.static_routes)
        self.neighbors = list(self.neighbors)
        for n in self.neighbors:
            if n.route_reflector_client and n.asn != self.asn:
                raise LabError(f"neighbor {n.address}: route_reflector_client needs an iBGP "
                               f"neighbour (AS {n.asn} != our AS {self.asn})")
        os.makedirs(self.workdir, exist_ok=True)

    # -- shared helpers -------------------------------------------------
    def _run(self, argv: list[str], timeout: float = 10) -> str:
        res = subprocess.run(netns_argv(self.netns, argv), capture_output=True, text=True,
                             timeout=timeout)
        if res.returncode != 0:
            raise LabError(f"{' '.join(argv)} in {self.netns} failed ({res.returncode}): "
                           f"{(res.stderr or res.stdout).strip()}")
        return res.stdout

    def stop(self) -> None:
        for d in reversed(self.daemons):
            d.stop()
        self.daemons.clear()

    def alive(self) -> bool:
        return bool(self.daemons) and all(d.alive() for d in self.daemons)

    def pids(self) -> list[int]:
        return [d.pid for d in self.daemons if d.pid is not None]

    def wait_established(self, peer: str, timeout: float = 30.0) -> None:
        wait_for(lambda: self.established(peer), timeout, interval=0.2,
                 what=f"{type(self).__name__} {self.netns}: session to {peer} Established")

    def wait_route(self, prefix: str, present: bool = True, timeout: float = 30.0) -> None:
        prefix = str(ipaddress.IPv4Network(prefix))
        wait_for(lambda: (prefix in self.routes()) == present, timeout, interval=0.2,
                 what=f"{self.netns}: route {prefix} {'present' if present else 'gone'}")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(f"[{d.name}]\n{d.log_tail(lines)}" for d in self.daemons)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # interface for subclasses
    def start(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def established(self, peer: str) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def routes(self) -> dict[str, RouterRoute]:  # pragma: no cover - abstract
        raise NotImplementedError


class BirdRouter(_RouterBase):
    """BIRD 2 in ``netns``; control socket ``<workdir>/bird.ctl``."""

    @property
    def socket(self) -> str:
        return os.path.join(self.workdir, "bird.ctl")

    @staticmethod
    def proto_name(peer: str) -> str:
        return "n_" + peer.replace(".", "_")

    def config_text(self) -> str:
        out = [f"router id {self.router_id};", "log stderr all;",
               "protocol device { scan time 2; }",
               # Connected routes make next hops of multihop sessions resolvable.
               "protocol direct { ipv4; }"]
        kexport = "where source = RTS_BGP" if self.kernel_export else "none"
        out.append("protocol kernel { scan time 5; merge paths on; learn off; "
                   f"ipv4 {{ import none; export {kexport}; }}; }}")
        if self.static_routes:
            # Preference above direct (240): a ToR announces its own connected rack
            # subnet, and BIRD exports only the best route of a prefix.
            out.append("protocol static s_announce {\n  ipv4 { preference 250; };")
            if self.one_prefix_per_update:
                out += [f"  route {p} blackhole {{ bgp_med = {i}; }};"
                        for i, p in enumerate(self.static_routes, 1)]
            else:
                out += [f"  route {p} blackhole;" for p in self.static_routes]
            out.append("}")
        sources = []
        if self.export_static:
            sources.append("RTS_STATIC")
        if self.export_learned:
            sources.append("RTS_BGP")
        export = f"where source ~ [{', '.join(sources)}]" if sources else "none"
        for n in self.neighbors:
            lines = [f"protocol bgp {self.proto_name(n.address)} {{",
                     f"  local as {self.asn};",
                     f"  neighbor {n.address} as {n.asn};",
                     f"  hold time {n.hold_time};", "  keepalive time 3;",
                     "  connect retry time 2;", "  connect delay time 1;",
                     "  error wait time 1, 10;",
                     "  graceful restart on;",
                     f"  graceful restart time {self.gr_restart_time};"]
            if n.password:
                lines.append(f'  password "{n.password}";')
            if n.passive:
                lines.append("  passive on;")
            if n.multihop:
                lines.append(f"  multihop {n.multihop};")
            if n.route_reflector_client:
                lines.append("  rr client;")
            nh = "  next hop self;" if n.asn != self.asn else ""
            gw = " gateway recursive;" if n.multihop or n.asn == self.asn else ""
            lines.append(f"  ipv4 {{ import all; export {export};{gw}{nh} }};")
            lines.append("}")
            out.append("\n".join(lines))
        return "\n".join(out) + "\n"

    def start(self) -> BirdRouter:
        conf = os.path.join(self.workdir, "bird.conf")
        with open(conf, "w") as f:
            f.write(self.config_text())
        self._run([BIRD, "-p", "-c", conf])  # parse check: a config error names the line
        d = Daemon("bird", [BIRD, "-f", "-c", conf, "-s", self.socket,
                            "-P", os.path.join(self.workdir, "bird.pid")],
                   netns=self.netns, log_path=os.path.join(self.workdir, "bird.log")).start()
        self.daemons.append(d)
        try:
            wait_for(lambda: d.alive() and self._birdc_ok(), 10, what=f"bird in {self.netns}")
        except LabError as exc:
            self.stop()
            raise LabError(f"{exc}\n{d.log_tail()}") from None
        return self

    def _birdc_ok(self) -> bool:
        try:
            self.cli("show status")
            return True
        except LabError:
            return False

    def cli(self, command: str) -> str:
        return self._run([BIRDC, "-r", "-s", self.socket, *command.split()])

    def configure(self) -> None:
        """Rewrite the config from the current fields and reload it (``birdc configure``)."""
        conf = os.path.join(self.workdir, "bird.conf")
        with open(conf, "w") as f:
            f.write(self.config_text())
        self._run([BIRDC, "-s", self.socket, "configure"])

    def show_protocols(self) -> str:
        return self.cli("show protocols all")

    def established(self, peer: str) -> bool:
        out = self.cli(f"show protocols {self.proto_name(peer)}")
        return any(line.split()[0] == self.proto_name(peer) and "Established" in line
                   for line in out.splitlines() if line.strip())

    def routes(self) -> dict[str, RouterRoute]:
        """Best routes in master4 (BGP-learned and static), with their next hops."""
        out = self.cli("show route all")
        routes: dict[str, RouterRoute] = {}
        prefix = source = None
        nexthops: list[str] = []

        def flush() -> None:
            if prefix and prefix not in routes:
                routes[prefix] = RouterRoute(prefix, tuple(nexthops), source or "")

        for line in out.splitlines():
            m = re.match(r"^(\d+\.\d+\.\d+\.\d+/\d+)\s+(\S+)\s+\[(\S+)", line)
            m2 = re.match(r"^\s{10,}(\S+)\s+\[(\S+)", line) if not m else None
            if m or m2:
                flush()
                if m:
                    prefix = m.group(1)
                nexthops, proto = [], (m.group(3) if m else m2.group(2))
                source = "static" if proto == "s_announce" else proto
                if proto.startswith("n_"):
                    source = proto[2:].replace("_", ".")
                continue  # a non-best alternative (m2) is skipped by flush(): first wins
            mv = re.match(r"^\s+via (\S+) on", line)
            if mv:
                nexthops.append(mv.group(1))
        flush()
        return {p: r for p, r in routes.items() if r.source not in ("direct1",)}


class FrrRouter(_RouterBase):
    """FRR zebra + bgpd in ``netns``; vty sockets in ``workdir``."""

    def _frr_conf(self) -> str:
        out = ["frr defaults traditional", f"hostname {os.path.basename(self.workdir)}",
               "log stdout informational", "!", f"router bgp {self.asn}",
               f" bgp router-id {self.router_id}", " no bgp ebgp-requires-policy",
               " no bgp network import-check", " bgp graceful-restart",
               f" bgp graceful-restart restart-time {self.gr_restart_time}",
               " bgp bestpath as-path multipath-relax"]
        for n in self.neighbors:
            a = n.address
            out.append(f" neighbor {a} remote-as {n.asn}")
            out.append(f" neighbor {a} timers {max(1, n.hold_time // 3)} {n.hold_time}")
            out.append(f" neighbor {a} timers connect 1")
            if n.password:
                out.append(f" neighbor {a} password {n.password}")
            if n.passive:
                out.append(f" neighbor {a} passive")
            if n.multihop:
                out.append(f" neighbor {a} ebgp-multihop {n.multihop}")
        out.append(" address-family ipv4 unicast")
        out.append("  maximum-paths 16")
        out.append("  maximum-paths ibgp 16")
        if self.export_static:
            out += [f"  network {p}" for p in self.static_routes]
        for n in self.neighbors:
            out.append(f"  neighbor {n.address} activate")
            out.append(f"  neighbor {n.address} soft-reconfiguration inbound")
            if n.route_reflector_client:
                out.append(f"  neighbor {n.address} route-reflector-client")
            if not self.export_learned:
                out.append(f"  neighbor {n.address} route-map only-local out")
        out.append(" exit-address-family")
        out.append("!")
        if not self.export_learned:
            # Only originated routes (empty AS path) leave this router.
            out += ["bgp as-path access-list local seq 5 permit ^$",
                    "route-map only-local permit 10", " match as-path local", "!"]
        return "\n".join(out) + "\n"

    def config_text(self) -> str:
        return self._frr_conf()

    def start(self) -> FrrRouter:
        # FRR insists on dropping to a user in its vty group (root is not in frrvty and we do
        # not edit /etc/group), so config files and sockets live in a run dir the frr user can
        # reach: a fresh 0755 dir under /tmp owned by frr. Logs stay in ``workdir``.
        import pwd
        import tempfile

        ent = pwd.getpwnam("frr")
        rd = self.rundir = tempfile.mkdtemp(prefix="nr-frr-", dir="/tmp")
        os.chmod(rd, 0o755)
        zconf = os.path.join(rd, "zebra.conf")
        bconf = os.path.join(rd, "bgpd.conf")
        with open(zconf, "w") as f:
            f.write(f"hostname {os.path.basename(self.workdir)}\nlog stdout informational\n")
        with open(bconf, "w") as f:
            f.write(self._frr_conf())
        for path in (rd, zconf, bconf):
            os.chown(path, ent.pw_uid, ent.pw_gid)
        zsock = os.path.join(rd, "zserv.api")
        common = ["--vty_socket", rd, "-z", zsock, "-A", "127.0.0.1", "-P", "0"]
        # Dry run first: FRR starts even with bad lines (it only logs them), and a ToR
        # silently missing a neighbour option makes for a long debugging session.
        dry = subprocess.run([f"{FRR_DIR}/bgpd", "-C", "-f", bconf, *common, "-n", "-Z"],
                             capture_output=True, text=True, timeout=30)
        bad = [line for line in (dry.stdout + dry.stderr).splitlines()
               if "No such command" in line or line.startswith("%")]
        if dry.returncode != 0 or bad:
            shutil.rmtree(rd, ignore_errors=True)
            raise LabError(f"FRR rejects the generated bgpd.conf ({bconf}):\n" + "\n".join(bad))
        wd = self.workdir
        z = Daemon("zebra", [f"{FRR_DIR}/zebra", *common, "-f", zconf,
                             "-i", os.path.join(rd, "zebra.pid")],
                   netns=self.netns, log_path=os.path.join(wd, "zebra.log")).start()
        self.daemons.append(z)
        try:
            wait_for(lambda: z.alive() and os.path.exists(zsock), 10, what=f"zebra in {self.netns}")
            bargv = [f"{FRR_DIR}/bgpd", *common, "-f", bconf, "-i", os.path.join(rd, "bgpd.pid")]
            if not self.kernel_export:
                bargv.append("-n")
            b = Daemon("bgpd", bargv, netns=self.netns,
                       log_path=os.path.join(wd, "bgpd.log")).start()
            self.daemons.append(b)
            wait_for(lambda: b.alive() and self._vtysh_ok(), 15, what=f"bgpd in {self.netns}")
        except LabError as exc:
            tail = self.log_tail()
            self.stop()
            raise LabError(f"{exc}\n{tail}") from None
        return self

    def stop(self) -> None:
        super().stop()
        if getattr(self, "rundir", None):
            shutil.rmtree(self.rundir, ignore_errors=True)
            self.rundir = None

    def _vtysh_ok(self) -> bool:
        try:
            self.cli("show bgp summary json")
            return True
        except LabError:
            return False

    def cli(self, *commands: str) -> str:
        argv = [VTYSH, "--vty_socket", self.rundir]
        for c in commands:
            argv += ["-c", c]
        return self._run(argv)

    def configure(self, *lines: str) -> None:
        """Apply config lines (``conf t`` context) to the running bgpd."""
        self.cli("configure terminal", *lines)

    def show_protocols(self) -> str:
        return self.cli("show bgp summary")

    def established(self, peer: str) -> bool:
        data = json.loads(self.cli("show bgp summary json") or "{}")
        peers = data.get("ipv4Unicast", {}).get("peers", {})
        return peers.get(peer, {}).get("state") == "Established"

    def routes(self) -> dict[str, RouterRoute]:
        """Best routes in the BGP table with their next hops (peer address as source)."""
        data = json.loads(self.cli("show bgp ipv4 unicast json") or "{}")
        routes = {}
        for prefix, paths in data.get("routes", {}).items():
            chosen = [p for p in paths if p.get("bestpath") or p.get("multipath")] or paths[:1]
            if not chosen:
                continue
            hops = tuple(sorted({h.get("ip", "") for p in chosen for h in p.get("nexthops", [])}))
            src = chosen[0].get("peerId", "")
            routes[prefix] = RouterRoute(prefix, hops, "static" if src == "(unspec)" else src)
        return routes

    def kill(self, sig: int = signal.SIGKILL) -> None:
        for d in self.daemons:
            d.signal(sig)


def kernel_routes(netns: str) -> dict[str, tuple[str, ...]]:
    """IPv4 routes in ``netns``'s main table: prefix -> next hops (for assertions)."""
    res = subprocess.run(netns_argv(netns, ["ip", "-j", "-4", "route", "show", "table", "main"]),
                         capture_output=True, text=True, check=True)
    out: dict[str, tuple[str, ...]] = {}
    for r in json.loads(res.stdout or "[]"):
        dst = r.get("dst", "")
        if dst == "default":
            dst = "0.0.0.0/0"
        elif "/" not in dst:
            dst += "/32"
        hops = [r["gateway"]] if "gateway" in r else [h.get("gateway", "") for h in r.get("nexthops", [])]
        out[dst] = tuple(h for h in hops if h)
    return out
