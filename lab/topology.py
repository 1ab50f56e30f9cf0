"""The multi-rack lab: two racks on different subnets joined by a spine, in namespaces.

```
                 spine (bridge br0, 198.18.0.0/24)
        ┌──────────────┬──────────────┬──────────────┐
   tor-a .2 (BIRD)   tor-b .3 (FRR)  etcd .10
   AS 64701          AS 64702
   rack0 198.18.1.1  rack0 198.18.2.1
   │ bridge          │ bridge
   node-a1 .11       node-b1 .11      (N nodes per rack, AS 64601 / 64602)
   node-a2 .12       node-b2 .12
```

The ToRs run eBGP with each other across the spine, announce their rack subnet
and install what they learn in their kernels, so the underlay is routed by
real BIRD and FRR. In the ``tor`` peering design each ToR also has a BGP
neighbour per node of its rack (the nodes' noderouter dials it): the fabric
learns pod blocks and routes them with no encapsulation. In the ``mesh`` design
the ToRs know only the underlay and nodes full-mesh among themselves.

``second_tor=True`` adds a second ToR to rack A (``tora2``, FRR, the rack A AS
64701 like the first): on the rack A bridge at 198.18.1.2 and on the spine at
198.18.0.21, eBGP with rack B's ToR like the first. In the ``tor`` design the
rack A nodes then peer with both ToRs, so they learn every remote route twice
with equal paths (ECMP), and rack B's ToR reaches rack A via both.

Everything is created inside namespaces named ``<prefix>-<role>``; the prefix is
unique per run. ``Lab.down()`` stops every daemon by PID and deletes every
namespace by name, and is safe to call at any point of a failed ``up()``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Literal

from config.logs import get_logger
from lab.addressing import ETCD_ADDRESS, POD_POOL, SPINE_SUBNET, RackPlan, assert_lab_address
from lab.etcd import EtcdServer
from lab.netns import NetnsSet, netns_exists, run_prefix, sh, sysctl, veth_pair
from lab.procs import Daemon, LabError, wait_for
from lab.routers import BgpNeighbor, BirdRouter, FrrRouter

STATE_DIR = "/run/noderouter-lab"
Design = Literal["tor", "mesh"]


@dataclass
class LabNode:
    name: str
    netns: str
    rack: RackPlan
    address: str
    subnet: str
    gateway: str
    as_number: int


@dataclass
class Lab:
    racks: int = 2
    nodes_per_rack: int = 2
    design: Design = "tor"
    prefix: str = field(default_factory=run_prefix)
    workdir: str = ""
    bgp_password: str | None = None
    etcd_tls: bool = False  # etcd over TLS with client certificates (--client-cert-auth)
    netns_set: NetnsSet = field(default_factory=NetnsSet, repr=False)
    nodes: list[LabNode] = field(default_factory=list)
    tors: dict[str, BirdRouter | FrrRouter] = field(default_factory=dict, repr=False)
    etcd: EtcdServer | None = field(default=None, repr=False)
    daemons: dict[str, Daemon] = field(default_factory=dict, repr=False)
    pool_cidr: str = str(POD_POOL)
    encap: str = "vxlan"    # mesh design: "vxlan" or "ipip" across racks (CrossSubnet)
    tor_gr_time: int = 120  # graceful-restart time the ToRs announce
    pods: dict[str, dict] = field(default_factory=dict)
    second_tor: bool = False  # a second ToR (FRR) in rack A: lab.tors["a2"]
    # Where the nodes' `noderouter` and `noderouter-cni` come from (default: beside this
    # Python, i.e. the dev venv); exec_wrapper runs before them inside the node's netns,
    # e.g. nsenter into a mount namespace where a Debian package is installed (issue 16).
    bin_dir: str = ""
    exec_wrapper: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.racks <= 2:
            raise LabError("the lab has one or two racks (rack A: BIRD ToR, rack B: FRR ToR)")
        if not 1 <= self.nodes_per_rack <= 50:
            raise LabError("nodes_per_rack must be 1..50")
        self.log = get_logger("lab", lab=self.prefix)
        self.rack_plans = [RackPlan(i + 1, "ab"[i]) for i in range(self.racks)]

    # ------------------------------------------------------------------ names

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    @staticmethod
    def second_tor_address(rack: RackPlan) -> str:
        return str(rack.subnet.network_address + 2)

    @staticmethod
    def second_tor_spine_address(rack: RackPlan) -> str:
        # .2/.3 are the first ToRs, .10 etcd: .2x is free for second ToRs.
        return str(SPINE_SUBNET.network_address + 20 + rack.index)

    def _second_tor_racks(self) -> list[RackPlan]:
        return [r for r in self.rack_plans if self.second_tor and r.letter == "a"]

    def tor_peers(self, rack: RackPlan) -> list[tuple[str, str, int]]:
        """(role, address on the rack, AS) of the rack's ToRs, first ToR first."""
        peers = [(f"tor{rack.letter}", str(rack.tor_address), rack.tor_as)]
        if rack in self._second_tor_racks():
            peers.append((f"tor{rack.letter}2", self.second_tor_address(rack), rack.tor_as))
        return peers

    @property
    def etcd_endpoint(self) -> str:
        return f"{ETCD_ADDRESS}:2379"

    def node(self, name: str) -> LabNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise LabError(f"no lab node named {name!r}; nodes: {[n.name for n in self.nodes]}")

    # ------------------------------------------------------------------ lifecycle

    def up(self) -> Lab:
        wanted = [self.ns(r) for r in ["spine", "etcd"] + [f"tor{r.letter}" for r in self.rack_plans]
                  + [f"tor{r.letter}2" for r in self._second_tor_racks()]]
        clash = [n for n in wanted if netns_exists(n)]
        if clash:
            raise LabError(f"namespaces {clash} already exist: another lab run uses prefix "
                           f"{self.prefix!r}; choose another prefix or tear that one down")
        self.workdir = self.workdir or tempfile.mkdtemp(prefix=f"noderouter-lab-{self.prefix}-")
        self.log.info("lab_up_start", workdir=self.workdir, design=self.design,
                      racks=self.racks, nodes_per_rack=self.nodes_per_rack)
        try:
            self._build_spine()
            for rack in self.rack_plans:
                self._build_rack(rack)
            self._start_etcd()
            self._start_tors()
            self._wait_underlay()
        except BaseException:
            self.down()
            raise
        self.save_state()
        self.log.info("lab_up_done", nodes=[n.name for n in self.nodes])
        return self

    def down(self) -> list[str]:
        """Stop daemons by PID, delete namespaces by name, remove files; return errors."""
        errors: list[str] = []
        for name in list(self.daemons):
            try:
                self.stop_noderouter(name)
            except Exception as exc:  # noqa: BLE001 - keep tearing down
                errors.append(f"stop noderouter on {name}: {exc}")
        for tor in self.tors.values():
            try:
                tor.stop()
            except Exception as exc:  # noqa: BLE001 - keep tearing down
                errors.append(f"stop {tor.netns}: {exc}")
        self.tors.clear()
        if self.etcd is not None:
            try:
                self.etcd.stop()
            except Exception as exc:  # noqa: BLE001
                errors.append(f"stop etcd: {exc}")
            self.etcd = None
        errors += self.netns_set.delete_all()
        if self.workdir and os.path.isdir(self.workdir):
            shutil.rmtree(self.workdir, ignore_errors=True)
        state = self.state_path()
        if os.path.exists(state):
            os.unlink(state)
        self.log.info("lab_down", errors=errors)
        return errors

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    # ------------------------------------------------------------------ building

    def _build_spine(self) -> None:
        spine = self.netns_set.add(self.ns("spine"))
        sh(["ip", "link", "add", "br0", "type", "bridge"], netns=spine)
        sh(["ip", "link", "set", "br0", "up"], netns=spine)
        etcd_ns = self.netns_set.add(self.ns("etcd"))
        self._attach(spine, "br0", "sp-etcd", etcd_ns, "eth0", f"{ETCD_ADDRESS}/24")
        for rack in self.rack_plans:
            sh(["ip", "route", "add", str(rack.subnet), "via", str(rack.tor_spine_address)],
               netns=etcd_ns)

    def _attach(self, bridge_ns: str, bridge: str, port: str, ns: str, ifname: str,
                cidr: str) -> None:
        assert_lab_address(cidr)
        veth_pair(port, bridge_ns, ifname, ns)
        sh(["ip", "link", "set", port, "master", bridge], netns=bridge_ns)
        sh(["ip", "addr", "add", cidr, "dev", ifname], netns=ns)

    def _build_rack(self, rack: RackPlan) -> None:
        tor = self.netns_set.add(self.ns(f"tor{rack.letter}"))
        sysctl(tor, "net.ipv4.ip_forward", "1")
        self._attach(self.ns("spine"), "br0", f"sp-tor{rack.letter}", tor, "spine0",
                     f"{rack.tor_spine_address}/{SPINE_SUBNET.prefixlen}")
        sh(["ip", "link", "add", "rack0", "type", "bridge"], netns=tor)
        sh(["ip", "link", "set", "rack0", "up"], netns=tor)
        sh(["ip", "addr", "add", f"{rack.tor_address}/{rack.subnet.prefixlen}", "dev", "rack0"],
           netns=tor)
        for n in range(1, self.nodes_per_rack + 1):
            name = rack.node_name(n)
            node_ns = self.netns_set.add(self.ns(name.removeprefix("node-")))
            addr = rack.node_address(n)
            self._attach(tor, "rack0", f"p-{rack.letter}{n}", node_ns, "eth0",
                         f"{addr}/{rack.subnet.prefixlen}")
            sh(["ip", "route", "add", "default", "via", str(rack.tor_address)], netns=node_ns)
            sysctl(node_ns, "net.ipv4.ip_forward", "1")
            self.nodes.append(LabNode(name, node_ns, rack, str(addr), str(rack.subnet),
                                      str(rack.tor_address), rack.node_as))
        if rack in self._second_tor_racks():
            tor2 = self.netns_set.add(self.ns(f"tor{rack.letter}2"))
            sysctl(tor2, "net.ipv4.ip_forward", "1")
            self._attach(self.ns("spine"), "br0", f"sp-tor{rack.letter}2", tor2, "spine0",
                         f"{self.second_tor_spine_address(rack)}/{SPINE_SUBNET.prefixlen}")
            self._attach(tor, "rack0", f"p-tor{rack.letter}2", tor2, "rack0",
                         f"{self.second_tor_address(rack)}/{rack.subnet.prefixlen}")

    def _start_etcd(self) -> None:
        os.makedirs(os.path.join(self.workdir, "etcd"), exist_ok=True)
        self.etcd = EtcdServer(host=str(ETCD_ADDRESS), netns=self.ns("etcd"),
                               data_dir=os.path.join(self.workdir, "etcd"), name="lab-etcd",
                               tls=self.etcd_tls)
        self.etcd.start()

    def _spine_peers(self, rack: RackPlan) -> list[tuple[str, int]]:
        """(spine address, AS) of every ToR of ``rack``."""
        out = [(str(rack.tor_spine_address), rack.tor_as)]
        if rack in self._second_tor_racks():
            out.append((self.second_tor_spine_address(rack), rack.tor_as))
        return out

    def _start_tors(self) -> None:
        roles = [(rack, rack.letter, BirdRouter if rack.letter == "a" else FrrRouter,
                  str(rack.tor_spine_address)) for rack in self.rack_plans]
        roles += [(rack, f"{rack.letter}2", FrrRouter, self.second_tor_spine_address(rack))
                  for rack in self._second_tor_racks()]
        for rack, role, cls, spine_address in roles:
            # eBGP to every ToR of the other racks (ToRs of one rack share its AS:
            # they do not peer with each other, and AS-loop detection keeps them
            # from learning their own rack back through another rack).
            neighbors = [BgpNeighbor(addr, asn, password=self.bgp_password)
                         for other in self.rack_plans if other != rack
                         for addr, asn in self._spine_peers(other)]
            if self.design == "tor":
                neighbors += [BgpNeighbor(n.address, n.as_number, password=self.bgp_password,
                                          passive=True)
                              for n in self.nodes if n.rack == rack]
            workdir = os.path.join(self.workdir, f"tor{role}")
            os.makedirs(workdir, exist_ok=True)
            router = cls(netns=self.ns(f"tor{role}"), workdir=workdir,
                         router_id=spine_address, asn=rack.tor_as,
                         neighbors=neighbors, static_routes=[str(rack.subnet)],
                         export_static=True, export_learned=True, kernel_export=True,
                         gr_restart_time=self.tor_gr_time)
            self.tors[role] = router.start()

    def _wait_underlay(self, timeout: float = 60) -> None:
        if len(self.rack_plans) < 2:
            return
        a, b = self.rack_plans
        self.tors["a"].wait_established(str(b.tor_spine_address), timeout)
        self.tors["b"].wait_established(str(a.tor_spine_address), timeout)
        if "a2" in self.tors:
            self.tors["a2"].wait_established(str(b.tor_spine_address), timeout)
            self.tors["b"].wait_established(self.second_tor_spine_address(a), timeout)
        # The underlay is routed once each ToR's kernel has the other rack's subnet.
        for rack, other in ((a, b), (b, a)):
            tor_ns = self.ns(f"tor{rack.letter}")
            wait_for(lambda ns=tor_ns, o=other: str(o.subnet) in sh(
                ["ip", "route", "show", str(o.subnet)], netns=ns).stdout,
                timeout, what=f"route {other.subnet} in {tor_ns}")

    # ------------------------------------------------------------------ noderouter

    def command(self, name: str) -> list[str]:
        """argv that runs our executable ``name`` (noderouter, noderouter-cni) in a node."""
        import sys

        return [*self.exec_wrapper,
                os.path.join(self.bin_dir or os.path.dirname(sys.executable), name)]

    def node_dir(self, name: str) -> str:
        path = os.path.join(self.workdir, name)
        os.makedirs(path, exist_ok=True)
        return path

    def status_socket(self, name: str) -> str:
        return os.path.join(self.node_dir(name), "status.sock")

    def cni_socket(self, name: str) -> str:
        """The daemon's CNI fast-path socket (status.cni_socket = daemon_socket)."""
        return os.path.join(self.node_dir(name), "cni.sock")

    def cni_state_dir(self, name: str) -> str:
        return os.path.join(self.node_dir(name), "cni")

    def node_config(self, name: str, **overrides) -> str:
        """The node's noderouter config (YAML) for this lab's peering design."""
        import yaml

        n = self.node(name)
        rack = n.rack
        mode = "CrossSubnet" if self.design == "mesh" else "Never"
        cfg = {
            "node": {"name": n.name, "as_number": n.as_number if self.design == "tor" else 64512},
            "underlay": {"interface": "eth0", "address": n.address, "subnet": n.subnet},
            "etcd": {"endpoints": [self.etcd_endpoint], "timeout": 3},
            "bgp": {"mesh": self.design == "mesh", "hold_time": 9, "restart_time": 30},
            "pools": [{"cidr": self.pool_cidr, "block_size": 26,
                       "vxlan_mode": mode if self.encap == "vxlan" else "Never",
                       "ipip_mode": mode if self.encap == "ipip" else "Never"}],
            "dataplane": {"resync_interval": 30},
            "status": {"socket": self.status_socket(name), "cni_socket": self.cni_socket(name)},
            "logging": {"level": "info", "format": "json"},
        }
        if self.etcd_tls:
            cfg["etcd"].update(ca_file=self.etcd.ca_file, cert_file=self.etcd.cert_file,
                               key_file=self.etcd.key_file)
        if self.bgp_password:
            cfg["bgp"]["mesh_password"] = self.bgp_password
        if self.design == "tor":
            cfg["bgp"]["peers"] = []
            for role, address, asn in self.tor_peers(rack):
                peer = {"address": address, "as_number": asn,
                        "description": role.replace("tor", "tor-", 1), "hold_time": 9,
                        "import_allow": ["0.0.0.0/0"]}
                if self.bgp_password:
                    peer["password"] = self.bgp_password
                cfg["bgp"]["peers"].append(peer)
        for dotted, value in overrides.items():
            section, key = dotted.split(".", 1)
            cfg.setdefault(section, {})[key] = value
        return yaml.safe_dump(cfg, sort_keys=False)

    def start_noderouter(self, name: str, env: dict[str, str] | None = None,
                         **overrides) -> Daemon:
        d = self.node_dir(name)
        conf = os.path.join(d, "node.yaml")
        with open(conf, "w") as f:
            f.write(self.node_config(name, **overrides))
        argv = [*self.command("noderouter"), "run", "--config", conf,
                "--run-dir", os.path.join(d, "run"), "--state-dir", self.cni_state_dir(name)]
        daemon = Daemon(f"noderouter-{name}", argv,
                        netns=self.node(name).netns, log_path=os.path.join(d, "noderouter.log"),
                        env={**os.environ, **env} if env else None)
        self.daemons[name] = daemon.start()
        return daemon

    def stop_noderouter(self, name: str, timeout: float = 20.0) -> int | None:
        daemon = self.daemons.pop(name, None)
        return daemon.stop(timeout) if daemon else None

    def nr(self, name: str, *args: str, check: bool = False):
        """Run the noderouter CLI inside a node's namespace against its daemon."""
        argv = [*self.command("noderouter"), *args]
        if args and args[0] in ("status", "peers", "routes"):
            argv += ["--socket", self.status_socket(name)]
        return sh(argv, netns=self.node(name).netns, check=check, timeout=60)

    def status(self, name: str) -> dict:
        res = self.nr(name, "status", "-o", "json")
        if not res.stdout.strip():
            raise LabError(f"noderouter status on {name} failed: {res.stderr.strip()}")
        return json.loads(res.stdout)

    def start_all(self, wait: bool = True, timeout: float = 90) -> None:
        for n in self.nodes:
            self.start_noderouter(n.name)
        if wait:
            for n in self.nodes:
                self.wait_ready(n.name, timeout)
        self.save_state()

    def wait_ready(self, name: str, timeout: float = 90) -> dict:
        def ready():
            d = self.daemons.get(name)
            if d is not None and not d.alive():
                raise LabError(f"noderouter on {name} exited: {d.log_tail()}")
            st = self.status(name)
            return st if st["sync"]["ready"] else None
        return wait_for(ready, timeout, interval=0.5, what=f"noderouter on {name} to be ready")

    # ------------------------------------------------------------------ pods (CNI)

    def cni_conf(self, name: str) -> dict:
        mtu = 1450 if self.design == "mesh" and self.encap == "vxlan" else \
            1480 if self.design == "mesh" else 1500
        return {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "noderouter-cni",
                "etcd_endpoints": [self.etcd_endpoint], "node_name": name, "mtu": mtu,
                "route_protocol": 73, "state_dir": self.cni_state_dir(name),
                "log_file": os.path.join(self.node_dir(name), "cni.log"),
                "daemon_socket": self.cni_socket(name),
                **({"etcd_ca": self.etcd.ca_file, "etcd_cert": self.etcd.cert_file,
                    "etcd_key": self.etcd.key_file} if self.etcd_tls else {})}

    def cni(self, node: str, command: str, container_id: str, pod_netns: str | None,
            ifname: str = "eth0", conf: dict | None = None, extra_env: dict | None = None):
        """Run the real ``noderouter-cni`` inside the node's namespace; returns the result."""
        import subprocess

        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
               "CNI_IFNAME": ifname, "CNI_PATH": "/opt/cni/bin"}
        if "PYTHONPATH" in os.environ:
            # The plugin runs the code under test (a worktree's), as the daemon does.
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        if pod_netns:
            env["CNI_NETNS"] = f"/run/netns/{pod_netns}"
        env.update(extra_env or {})
        return subprocess.run(["ip", "netns", "exec", self.node(node).netns,
                               *self.command("noderouter-cni")],
                              input=json.dumps(conf or self.cni_conf(node)), env=env,
                              capture_output=True, text=True, timeout=60)

    def add_pod(self, node: str, pod: str, labels: dict[str, str] | None = None) -> dict:
        """A pod namespace on ``node`` wired by the CNI plugin; returns the pod's facts.
        ``labels`` go to the plugin as the network config's ``args.cni.labels`` (CNI
        conventions), which ADD writes into the pod's WorkloadEndpoint (issue 14)."""
        short = node.removeprefix("node-")
        ns = self.netns_set.add(self.ns(f"p{short}-{pod}"))
        cid = f"{self.prefix}{short}{pod}".ljust(16, "0")
        conf = self.cni_conf(node)
        if labels:
            conf["args"] = {"cni": {"labels": [{"key": k, "value": v}
                                               for k, v in sorted(labels.items())]}}
        res = self.cni(node, "ADD", cid, ns, conf=conf,
                       extra_env={"CNI_ARGS": f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"})
        if res.returncode != 0:
            raise LabError(f"CNI ADD for pod {pod} on {node} failed: {res.stdout} {res.stderr}")
        result = json.loads(res.stdout)
        ip = result["ips"][0]["address"].split("/")[0]
        info = {"node": node, "pod": pod, "netns": ns, "container_id": cid, "ip": ip}
        self.pods[f"{node}/{pod}"] = info
        return info

    def del_pod(self, node: str, pod: str) -> None:
        info = self.pods.pop(f"{node}/{pod}")
        res = self.cni(node, "DEL", info["container_id"], info["netns"],
                       extra_env={"CNI_ARGS": f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"})
        if res.returncode != 0:
            raise LabError(f"CNI DEL for pod {pod} on {node} failed: {res.stdout} {res.stderr}")
        sh(["ip", "netns", "delete", info["netns"]])
        self.netns_set.names.remove(info["netns"])

    # ------------------------------------------------------------------ helpers

    def exec(self, node: str, argv: list[str], check: bool = True, timeout: float = 30):
        return sh(argv, netns=self.node(node).netns, check=check, timeout=timeout)

    def ping(self, src_ns: str, dst: str, count: int = 1, timeout: float = 2) -> bool:
        res = sh(["ping", "-c", str(count), "-W", str(timeout), "-q", dst], netns=src_ns,
                 check=False, timeout=timeout * count + 5)
        return res.returncode == 0

    def state_path(self) -> str:
        return os.path.join(STATE_DIR, f"{self.prefix}.json")

    def save_state(self) -> None:
        """What `noderouter-lab down` needs to tear this lab down from another process."""
        os.makedirs(STATE_DIR, exist_ok=True)
        daemons = []
        for role, tor in self.tors.items():
            daemons += [{"role": f"tor{role}", "pid": pid, "start": proc_start_time(pid)}
                        for pid in tor.pids()]
        for name, d in self.daemons.items():
            if d.pid:
                daemons.append({"role": f"noderouter-{name}", "pid": d.pid,
                                "start": proc_start_time(d.pid)})
        if self.etcd and self.etcd.daemon and self.etcd.daemon.pid:
            pid = self.etcd.daemon.pid
            daemons.append({"role": "etcd", "pid": pid, "start": proc_start_time(pid)})
        state = {"prefix": self.prefix, "design": self.design, "workdir": self.workdir,
                 "namespaces": list(self.netns_set.names), "daemons": daemons,
                 "nodes": [n.__dict__ | {"rack": n.rack.letter} for n in self.nodes],
                 "etcd": self.etcd_endpoint,
                 "extra_dirs": [getattr(t, "rundir", None) for t in self.tors.values()
                                if getattr(t, "rundir", None)]}
        with open(self.state_path(), "w") as f:
            json.dump(state, f, indent=2)


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: tells a live PID from a reused one."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def down_from_state(path: str) -> list[str]:
    """Tear down a lab recorded by ``save_state`` (used by `noderouter-lab down`)."""
    import signal
    import time

    with open(path) as f:
        state = json.load(f)
    errors = []
    pids = [d for d in state.get("daemons", []) if d.get("pid")]
    for d in pids:
        if proc_start_time(d["pid"]) == d.get("start"):  # still the process we started
            try:
                os.kill(d["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5
    for d in pids:
        while proc_start_time(d["pid"]) == d.get("start") and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc_start_time(d["pid"]) == d.get("start"):
            os.kill(d["pid"], signal.SIGKILL)
    for name in reversed(state.get("namespaces", [])):
        if netns_exists(name):
            res = sh(["ip", "netns", "delete", name], check=False)
            if res.returncode:
                errors.append(f"{name}: {res.stderr.strip()}")
    for d in [state.get("workdir"), *state.get("extra_dirs", [])]:
        if d and os.path.isdir(d):
            shutil.rmtree(d, ignore_errors=True)
    os.unlink(path)
    return errors
