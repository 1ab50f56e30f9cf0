"""The upstream network-policy e2e model as real pods in the lab (issue 14), and the
harness that proves the product against the oracle pair by pair.

Namespaces x, y, z x pods a, b, c (kubernetes test/e2e/network/netpol/model.go), each
pod a real network namespace wired by the CNI plugin with ``K8S_POD_NAMESPACE`` /
``K8S_POD_NAME`` (``create_model_pod``: the one place a pod is made), placed
alternately on the two nodes, which sit in different racks: same-node and cross-rack
pairs are both in every matrix. Every pod runs ``tests/policy/probe.py agent``: TCP
and UDP servers on 80 and 81 and a prober that stays up between rounds.

Labels and named ports go through the CLI (``namespace label``, ``workload label``,
``policy apply -f``). ``PolicyMatrix.check`` probes every (source, destination, port,
protocol) for real -- 9 x 8 x 4 = 288 probes, all at once -- and compares with the
oracle (``tests.policy.oracle``, no product code); on a mismatch both tables are
printed as '.'/'X' grids.

Waiting for enforcement, bounded: after a change the harness waits until every node
has logged a policy apply (``policy_applied`` / ``policy_table_removed``) and then
nothing more for a short quiet spell, probes, and re-probes only the cells that
differ (with a longer timeout) until they agree or ``deadline`` passes. The log wait
keeps a cell that already had the expected value before the change from being
accepted before the nodes saw the change; the re-probe absorbs the rest (the other
node a few ms later, a slow handshake on a loaded machine).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import yaml

from lab.procs import LabError, wait_for
from lab.topology import Lab
from tests.policy.oracle import PORTS, PROTOCOLS, Oracle, Pod, explain_mismatch

NAMESPACES = ("x", "y", "z")
POD_NAMES = ("a", "b", "c")
# Named ports as upstream (serve-<port>-<proto>) plus ``web``: 80 on a, 81 on b,
# absent on c -- so a named port resolves differently per destination pod.
WEB_PORT = {"a": 80, "b": 81}
PROBE_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "policy", "probe.py")
POLICY_PREFIX = "/noderouter/policy/v1/networkpolicies/"
POLICY_EVENTS = ('"policy_applied"', '"policy_table_removed"')

DENIED_TIMEOUT = 0.4     # a denied TCP SYN / UDP ping waits this long for nothing
RETRY_TIMEOUT = 1.0      # a re-probe of a cell that disagreed: room for a slow handshake


def default_named_ports(name: str) -> dict[tuple[str, str], int]:
    ports = {(f"serve-{p}-{proto.lower()}", proto): p for p in PORTS for proto in PROTOCOLS}
    if name in WEB_PORT:
        ports[("web", "TCP")] = WEB_PORT[name]
    return ports


@dataclass
class ModelPod:
    namespace: str
    name: str
    node: str
    netns: str
    ip: str
    container_id: str
    host_ifname: str
    agent: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.name}"


def create_model_pod(lab: Lab, node: str, namespace: str, name: str,
                     agent: bool = True) -> ModelPod:
    """A pod in the model: a namespace wired by the real CNI plugin on ``node``, with the
    pod identity in ``CNI_ARGS`` as kubelet sends it. (The one place pods are made: when
    the CNI writes labels from ``args.cni.labels`` this is where they will go.)"""
    short = node.removeprefix("node-")
    netns = lab.netns_set.add(lab.ns(f"p{short}-{namespace}{name}"))
    cid = f"{lab.prefix}{short}{namespace}{name}".ljust(16, "0")
    res = lab.cni(node, "ADD", cid, netns, extra_env={
        "CNI_ARGS": f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}"})
    if res.returncode != 0:
        raise LabError(f"CNI ADD of {namespace}/{name} on {node} failed: "
                       f"{res.stdout} {res.stderr}")
    result = json.loads(res.stdout)
    host = [i["name"] for i in result.get("interfaces", []) if not i.get("sandbox")]
    pod = ModelPod(namespace, name, node, netns, result["ips"][0]["address"].split("/")[0],
                   cid, host[0] if host else "")
    if agent:
        start_agent(pod)
    return pod


def start_agent(pod: ModelPod, wait: bool = True) -> None:
    pod.agent = subprocess.Popen(
        ["ip", "netns", "exec", pod.netns, sys.executable, PROBE_SCRIPT, "agent"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    if wait:
        wait_agent(pod)


def wait_agent(pod: ModelPod, timeout: float = 30) -> None:
    ready, _, _ = select.select([pod.agent.stdout.fileno()], [], [], timeout)
    if not ready:
        raise LabError(f"probe agent in {pod.id} did not start within {timeout}s")
    line = pod.agent.stdout.readline()
    if line.strip() != "ready":
        raise LabError(f"probe agent in {pod.id} did not start: {line!r}")


def stop_agent(pod: ModelPod) -> None:
    if pod.agent is not None and pod.agent.poll() is None:
        pod.agent.kill()           # our own child, by PID
        pod.agent.wait(5)
    pod.agent = None


def remove_model_pod(lab: Lab, pod: ModelPod) -> None:
    stop_agent(pod)
    res = lab.cni(pod.node, "DEL", pod.container_id, pod.netns)
    if res.returncode != 0:
        raise LabError(f"CNI DEL of {pod.id} failed: {res.stdout} {res.stderr}")
    subprocess.run(["ip", "netns", "delete", pod.netns], check=True)
    lab.netns_set.names.remove(pod.netns)


Cell = tuple[str, str, int, str]      # (source id, destination id, port, protocol)


class PolicyMatrix:
    """The model in one lab, its desired state (labels, policies) and the checks."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.pods: list[ModelPod] = []
        self.ns_labels: dict[str, dict] = {ns: {"ns": ns} for ns in NAMESPACES}
        self.pod_labels: dict[str, dict] = {}
        self.named_ports: dict[str, dict] = {}
        self.policies: dict[tuple[str, str], dict] = {}
        self.tmp = tempfile.mkdtemp(prefix="nr-polmatrix-")
        self._offsets: dict[str, int] | None = None
        self._had_policies = False
        self._state_at_mark = ""
        self.stats: list[dict] = []
        self._cli_node = lab.nodes[0].name
        self._runners: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------------ set up
    def build(self) -> PolicyMatrix:
        nodes = [n.name for n in self.lab.nodes]
        t0 = time.monotonic()
        i = 0
        for ns in NAMESPACES:
            for name in POD_NAMES:
                self.add_pod(nodes[i % len(nodes)], ns, name, label_now=False, agent=False)
                i += 1
        self.lab.save_state()            # `noderouter-lab down` must find the pods too
        for pod in self.pods:            # nine Python starts at once, not one by one
            start_agent(pod, wait=False)
        for pod in self.pods:
            wait_agent(pod)
        t1 = time.monotonic()
        # Baseline labels and named ports: one `policy apply -f` (one transaction) of
        # the Namespace and WorkloadEndpoint documents; `namespace label` and `workload
        # label` are what the label-change cases use.
        self.apply(*[self.namespace_doc(ns, {"ns": ns}) for ns in NAMESPACES],
                   *[self.endpoint_doc(p, {"pod": p.name}) for p in self.pods])
        self._offsets = None
        t2 = time.monotonic()
        self.wait_all_reach()
        self.build_times = {"pods": t1 - t0, "labels": t2 - t1,
                            "reach": time.monotonic() - t2}
        return self

    def add_pod(self, node: str, namespace: str, name: str, label_now: bool = True,
                labels: dict | None = None, agent: bool = True) -> ModelPod:
        pod = create_model_pod(self.lab, node, namespace, name, agent)
        self.lab.save_state()
        self.pods.append(pod)
        self.pod_labels[pod.id] = dict(labels or {"pod": name})
        self.named_ports[pod.id] = default_named_ports(name)
        if label_now:
            self._label_pod_cli(pod, [f"{k}={v}" for k, v in self.pod_labels[pod.id].items()],
                                ports=True)
        return pod

    def remove_pod(self, pod_id: str) -> None:
        pod = self.pod(pod_id)
        self.mark()
        remove_model_pod(self.lab, pod)
        self.pods.remove(pod)
        del self.pod_labels[pod_id], self.named_ports[pod_id]
        # The CLI has no `workload delete` (a CNI DEL will remove the record once the CNI
        # writes it): the record goes by hand, as the CNI would drop it.
        self.etcdctl("del", f"/noderouter/policy/v1/workloadendpoints/{pod.node}/"
                     f"{pod.namespace}/{pod.name}")

    def close(self) -> None:
        for pod in self.pods:
            stop_agent(pod)
        for proc in self._runners.values():      # our own children, by PID
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)

    def pod(self, pod_id: str) -> ModelPod:
        for p in self.pods:
            if p.id == pod_id:
                return p
        raise KeyError(pod_id)

    def wait_all_reach(self, timeout: float = 30) -> None:
        """Before any policy every pair must connect (routes, ARP, servers up)."""
        cells = self.all_cells()
        def all_open():
            got = self.probe(cells, RETRY_TIMEOUT)
            return all(got.values())
        wait_for(all_open, timeout, interval=0.5, what="every pod pair to connect")

    # ------------------------------------------------------------------ the CLI
    def _runner(self, node: str) -> subprocess.Popen:
        """A warm `noderouter` CLI in ``node``'s namespace (tests/e2e/cli_runner.py)."""
        proc = self._runners.get(node)
        if proc is None or proc.poll() is not None:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.lab.node(node).netns, sys.executable, "-m",
                 "tests.e2e.cli_runner"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                text=True, bufsize=1)
            ready, _, _ = select.select([proc.stdout.fileno()], [], [], 60)
            line = proc.stdout.readline() if ready else ""
            if line.strip() != "ready":
                proc.kill()
                raise LabError(f"the CLI runner in {node} did not start: {line!r}")
            self._runners[node] = proc
        return proc

    def cli(self, *args: str, node: str | None = None, timeout: float = 60) -> str:
        """``noderouter ARGS --etcd-endpoints <lab etcd>`` inside a node; AssertionError
        with its output unless it exits 0."""
        proc = self._runner(node or self._cli_node)
        argv = [*args, "--etcd-endpoints", self.lab.etcd_endpoint]
        proc.stdin.write(json.dumps(argv) + "\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout.fileno()], [], [], timeout)
        if not ready:
            proc.kill()
            raise LabError(f"noderouter {' '.join(args)} did not answer in {timeout}s")
        res = json.loads(proc.stdout.readline())
        if res["code"] != 0:
            raise AssertionError(f"noderouter {' '.join(args)} failed ({res['code']}): "
                                 f"{res['stderr']}{res['stdout']}")
        return res["stdout"]

    def etcdctl(self, *args: str) -> str:
        res = subprocess.run(["ip", "netns", "exec", self.lab.ns("etcd"), "etcdctl",
                              "--endpoints", self.lab.etcd_endpoint, *args],
                             capture_output=True, text=True, timeout=20,
                             env={**os.environ, "ETCDCTL_API": "3"})
        if res.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)}: {res.stderr}")
        return res.stdout

    def _label_pod_cli(self, pod: ModelPod, changes: list[str], ports: bool = False) -> None:
        extra = []
        if ports:
            for (pname, proto), number in sorted(self.named_ports[pod.id].items()):
                extra += ["--port", f"{pname}={number}/{proto}"]
        self.cli("workload", "label", pod.name, *changes, "--node", pod.node,
                 "-n", pod.namespace, *extra)

    # ------------------------------------------------------------------ changes
    def mark(self) -> None:
        """Remember where every node's log ends (once per step, before its first change)."""
        if self._offsets is None:
            self._had_policies = bool(self.policies)
            self._state_at_mark = self._state()
            self._offsets = {n.name: self._log_size(n.name) for n in self.lab.nodes}

    def _state(self) -> str:
        return json.dumps([sorted([list(k), v] for k, v in self.policies.items()),
                           self.ns_labels, self.pod_labels], sort_keys=True)

    def _log_path(self, node: str) -> str:
        return os.path.join(self.lab.node_dir(node), "noderouter.log")

    def _log_size(self, node: str) -> int:
        try:
            return os.path.getsize(self._log_path(node))
        except OSError:
            return 0

    def apply(self, *docs: dict) -> None:
        """``noderouter policy apply -f`` of these documents (one transaction)."""
        self.mark()
        path = os.path.join(self.tmp, "apply.yaml")
        with open(path, "w") as f:
            yaml.safe_dump_all(list(docs), f, sort_keys=False)
        out = self.cli("policy", "apply", "-f", path)
        assert out.count("configured") == len(docs), out
        for doc in docs:
            meta = doc["metadata"]
            if doc["kind"] == "NetworkPolicy":
                self.policies[(meta.get("namespace", "default"), meta["name"])] = doc
            elif doc["kind"] == "Namespace":
                self.ns_labels[meta["name"]] = dict(meta.get("labels") or {})
            elif doc["kind"] == "WorkloadEndpoint":
                pid = f"{meta['namespace']}/{meta['name']}"
                self.pod_labels[pid] = dict(meta.get("labels") or {})

    def delete(self, namespace: str, name: str) -> None:
        self.mark()
        out = self.cli("policy", "delete", name, "-n", namespace)
        assert f"networkpolicy {namespace}/{name} deleted" in out, out
        del self.policies[(namespace, name)]

    def label_pod(self, pod_id: str, *changes: str) -> None:
        """``noderouter workload label`` (k=v sets, k- removes)."""
        self.mark()
        pod = self.pod(pod_id)
        self._label_pod_cli(pod, list(changes))
        labels = self.pod_labels[pod_id]
        for c in changes:
            if "=" in c:
                k, _, v = c.partition("=")
                labels[k] = v
            else:
                labels.pop(c[:-1], None)

    def label_namespace(self, ns: str, *changes: str) -> None:
        """``noderouter namespace label`` (k=v sets, k- removes)."""
        self.mark()
        self.cli("namespace", "label", ns, *changes)
        labels = self.ns_labels.setdefault(ns, {})
        for c in changes:
            if "=" in c:
                k, _, v = c.partition("=")
                labels[k] = v
            else:
                labels.pop(c[:-1], None)

    def endpoint_doc(self, pod: ModelPod, labels: dict) -> dict:
        return {"apiVersion": "noderouter.io/v1", "kind": "WorkloadEndpoint",
                "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": labels},
                "spec": {"node": pod.node,
                         "ports": [{"name": n, "protocol": proto, "port": port}
                                   for (n, proto), port in sorted(
                                       self.named_ports[pod.id].items())]}}

    @staticmethod
    def namespace_doc(ns: str, labels: dict) -> dict:
        return {"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": labels}}

    def reset(self) -> None:
        """Back to the model's baseline: no policy, labels ns=<ns> and pod=<name>.
        Policies go with one etcd delete (the CLI's delete is proven by its own case);
        labels that differ come back with one ``policy apply -f``."""
        if self.policies:
            self.mark()
            self.etcdctl("del", "--prefix", POLICY_PREFIX)
            self.policies.clear()
        docs = [self.namespace_doc(ns, {"ns": ns}) for ns in NAMESPACES
                if self.ns_labels.get(ns) != {"ns": ns}]
        docs += [self.endpoint_doc(p, {"pod": p.name}) for p in self.pods
                 if self.pod_labels[p.id] != {"pod": p.name}]
        if docs:
            self.apply(*docs)

    # ------------------------------------------------------------------ truth
    def oracle_pods(self) -> list[Pod]:
        return [Pod(p.namespace, p.name, p.ip, dict(self.pod_labels[p.id]),
                    dict(self.named_ports[p.id])) for p in self.pods]

    def expected(self) -> dict[Cell, bool]:
        return Oracle(self.ns_labels, self.oracle_pods(), list(self.policies.values())).table()

    def all_cells(self) -> list[Cell]:
        return [(s.id, d.id, port, proto) for s in self.pods for d in self.pods if s is not d
                for port in PORTS for proto in PROTOCOLS]

    # ------------------------------------------------------------------ probing
    def probe(self, cells: list[Cell], timeout: float) -> dict[Cell, bool]:
        """Every cell for real, all at once: one request per source pod's agent, each
        agent tries its targets in parallel."""
        by_src: dict[str, list[Cell]] = {}
        for c in cells:
            by_src.setdefault(c[0], []).append(c)
        ip = {p.id: p.ip for p in self.pods}
        agents = {}
        for src, mine in by_src.items():
            agent = self.pod(src).agent
            agent.stdin.write(json.dumps({"targets": [[ip[d], port, proto]
                                                      for _, d, port, proto in mine],
                                          "timeout": timeout}) + "\n")
            agent.stdin.flush()
            agents[agent.stdout.fileno()] = (src, agent)
        out: dict[Cell, bool] = {}
        pending = dict(agents)
        deadline = time.monotonic() + timeout + 20
        while pending:
            ready, _, _ = select.select(list(pending), [], [], max(0.0, deadline -
                                                                   time.monotonic()))
            if not ready:
                raise LabError(f"probe agents of {[s for s, _ in pending.values()]} "
                               "did not answer")
            for fd in ready:
                src, agent = pending.pop(fd)
                line = agent.stdout.readline()
                if not line:
                    raise LabError(f"probe agent of {src} exited")
                out.update(zip(by_src[src], json.loads(line), strict=True))
        return out

    # ------------------------------------------------------------------ waiting
    def settle(self, timeout: float = 10.0, quiet: float = 0.25) -> float:
        """Wait until every node has logged a policy apply since ``mark()`` and then
        stayed quiet for ``quiet`` s; returns the time waited. No wait when the step
        changed nothing or left the cluster without any policy before and after (no
        table then: the nodes log nothing)."""
        offsets, self._offsets = self._offsets, None
        if offsets is None or (not self._had_policies and not self.policies):
            return 0.0
        if self._state() == self._state_at_mark:
            # Changed and changed back (a reset, then the same policies again): a node
            # that saw both at once has nothing new to apply and logs nothing. The
            # probes' retries absorb one that applied the intermediate state.
            return 0.0
        t0 = time.monotonic()
        seen = {n: offsets[n] for n in offsets}
        last_event = {n: None for n in offsets}
        while True:
            now = time.monotonic()
            for node in offsets:
                size = self._log_size(node)
                if size > seen[node]:
                    with open(self._log_path(node), "rb") as f:
                        f.seek(seen[node])
                        chunk = f.read(size - seen[node])
                    complete = chunk.rfind(b"\n") + 1
                    text = chunk[:complete].decode(errors="replace")
                    seen[node] += complete
                    if any(e in text for e in POLICY_EVENTS):
                        last_event[node] = now
            if all(t is not None for t in last_event.values()) and \
                    now - max(last_event.values()) >= quiet:
                return now - t0
            if now - t0 > timeout:
                # Not fatal: the probes below still must agree (and say what differs).
                return now - t0
            time.sleep(0.03)

    def check(self, what: str, expected: dict[Cell, bool] | None = None,
              deadline: float = 15.0, settle: bool = True) -> dict[Cell, bool]:
        """Probe every pair; must equal the oracle's table (or ``expected``)."""
        t0 = time.monotonic()
        waited = self.settle() if settle else 0.0
        expected = self.expected() if expected is None else expected
        cells = self.all_cells()
        assert set(cells) == set(expected), "the oracle's table covers other pods"
        actual = self.probe(cells, DENIED_TIMEOUT)
        rounds = 1
        end = time.monotonic() + deadline
        while True:
            wrong = [c for c in cells if actual[c] != expected[c]]
            if not wrong or time.monotonic() > end:
                break
            time.sleep(0.05)
            actual.update(self.probe(wrong, RETRY_TIMEOUT))
            rounds += 1
        self.stats.append({"case": what, "seconds": round(time.monotonic() - t0, 2),
                           "settle": round(waited, 2), "rounds": rounds,
                           "allowed": sum(expected.values()), "cells": len(cells)})
        if wrong:
            raise AssertionError(
                f"{what}: the probes disagree with the oracle after {rounds} rounds "
                f"({len(wrong)} of {len(cells)} cells)\n"
                + explain_mismatch(self.oracle_pods(), expected, actual))
        return actual
