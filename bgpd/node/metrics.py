"""Prometheus metrics and the /livez and /readyz health endpoints.

Metrics live in the daemon's own registry (not the process-global one), so
tests can run several daemons' worth of metrics in one process. Label values
never carry secrets: peers are labelled by address only.

Readiness follows Calico's rule: the datastore is in sync, the dataplane has
been applied, and at least one BGP peer has been established since start.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from config.logs import get_logger

log = get_logger("bgpd.node.metrics")


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.peers = Gauge("noderouter_bgp_peers", "BGP peers by session state",
                           ["state"], registry=r)
        self.prefixes_received = Counter("noderouter_bgp_prefixes_received_total",
                                         "Prefixes received from a peer", ["peer"], registry=r)
        self.prefixes_accepted = Gauge("noderouter_bgp_prefixes_accepted",
                                       "Prefixes currently accepted from a peer", ["peer"],
                                       registry=r)
        self.prefixes_rejected = Counter("noderouter_bgp_prefixes_rejected_total",
                                         "Prefixes rejected by the import policy",
                                         ["peer", "reason"], registry=r)
        self.prefixes_announced = Gauge("noderouter_bgp_prefixes_announced",
                                        "Prefixes we announce", registry=r)
        self.kernel_routes = Gauge("noderouter_kernel_routes", "Our kernel routes by class",
                                   ["route_class"], registry=r)
        self.reconcile_seconds = Histogram("noderouter_reconcile_seconds",
                                           "Duration of a dataplane apply", ["kind"],
                                           buckets=(.001, .005, .01, .05, .1, .5, 1, 5, 30),
                                           registry=r)
        self.reconcile_errors = Counter("noderouter_reconcile_errors_total",
                                        "Kernel operations that failed", registry=r)
        self.ipam_blocks = Gauge("noderouter_ipam_blocks", "IPAM blocks affine to this node",
                                 registry=r)
        self.ipam_addresses = Gauge("noderouter_ipam_addresses_in_use",
                                    "Addresses allocated in this node's blocks", registry=r)
        self.exabgp_restarts = Counter("noderouter_exabgp_restarts_total",
                                       "Times the ExaBGP child was (re)started after a crash",
                                       registry=r)
        self.loop_iterations = Counter("noderouter_loop_iterations_total",
                                       "Main loop iterations", registry=r)

        # Network policy (issue 14): denied traffic per policy and direction, read from
        # the counters of our nftables drop rules (felix_like.policy_counters). Policy
        # "<end-of-tier>": a policy selected the pod and none allowed the packet
        # (labelled with the pod's namespace); "<not-programmed>": the fail-closed drop
        # of a workload interface the node has not programmed yet.
        deny_labels = ["namespace", "policy", "direction"]
        self.policy_denied_packets = Counter(
            "noderouter_policy_denied_packets_total",
            "Packets dropped by network policy", deny_labels, registry=r)
        self.policy_denied_bytes = Counter(
            "noderouter_policy_denied_bytes_total",
            "Bytes dropped by network policy", deny_labels, registry=r)
        self.policy_rules = Gauge("noderouter_policy_rules",
                                  "Rules in the node's nftables policy table", registry=r)
        self.policy_sets = Gauge("noderouter_policy_sets",
                                 "Named sets in the node's nftables policy table", registry=r)
        self.policy_last_apply_seconds = Gauge(
            "noderouter_policy_last_apply_seconds",
            "Duration of the last nft apply of the policy table", registry=r)
        self.policy_applies = Counter("noderouter_policy_applies_total",
                                      "nft applies of the policy table", ["kind"], registry=r)

        # What the counters above last exported per label set: the speaker keeps the
        # monotonic totals (bgpd.bgp.peers.PeerCounters); we add only the difference.
        self._exported: dict[tuple, int] = {}

    def _advance(self, counter: Counter, labels: tuple[str, ...], total: int) -> None:
        key = (counter, labels)
        delta = total - self._exported.get(key, 0)
        if delta > 0:
            (counter.labels(*labels) if labels else counter).inc(delta)
            self._exported[key] = total

    def export_peer_counters(self, counts) -> None:
        """Prefixes received and rejected (by reason) per peer, from the speaker's
        monotonic totals (``Speaker.peer_counters()``; issue 18: these were declared and
        never counted)."""
        for peer, c in counts.items():
            self._advance(self.prefixes_received, (peer,), c.received)
            for reason, n in c.rejected.items():
                self._advance(self.prefixes_rejected, (peer, reason), n)

    def export_policy_stats(self, stats) -> None:
        """The policy dataplane's ``felix_like.policy.PolicyStats`` (monotonic totals
        kept by the policy manager; we add only the difference)."""
        for key, (packets, nbytes) in stats.denied.items():
            labels = (key.namespace, key.policy, key.direction)
            self._advance(self.policy_denied_packets, labels, packets)
            self._advance(self.policy_denied_bytes, labels, nbytes)
        for kind, count in stats.applies.items():
            self._advance(self.policy_applies, (kind,), count)
        self.policy_rules.set(stats.rules)
        self.policy_sets.set(stats.sets)
        self.policy_last_apply_seconds.set(stats.last_apply_seconds)

    def export_exabgp_starts(self, starts: int) -> None:
        """ExaBGP restarts after a crash: every start after the first."""
        self._advance(self.exabgp_restarts, (), max(starts - 1, 0))

    def serve(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        start_http_server(int(port), addr=host, registry=self.registry)
        log.info("metrics_listening", listen=listen)


@dataclass
class Health:
    """What /livez and /readyz report; the main loop updates it."""

    loop_heartbeat: float = 0.0          # monotonic time of the last loop iteration
    datastore_in_sync: bool = False
    dataplane_applied: bool = False
    peer_established_once: bool = False
    peers_configured: bool = True
    live_timeout: float = 30.0

    def live(self, now: float) -> tuple[bool, dict]:
        age = now - self.loop_heartbeat if self.loop_heartbeat else None
        ok = age is not None and age < self.live_timeout
        return ok, {"loop_age_seconds": None if age is None else round(age, 3)}

    def ready(self) -> tuple[bool, dict]:
        detail = {"datastore_in_sync": self.datastore_in_sync,
                  "dataplane_applied": self.dataplane_applied,
                  "peer_established_once": self.peer_established_once or
                  not self.peers_configured}
        return all(detail.values()), detail


class HealthServer:
    def __init__(self, health: Health, listen: str) -> None:
        self.health = health
        host, _, port = listen.rpartition(":")
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path == "/livez":
                    ok, detail = outer.health.live(time.monotonic())
                elif self.path == "/readyz":
                    ok, detail = outer.health.ready()
                else:
                    self.send_error(404, "try /livez or /readyz")
                    return
                body = json.dumps({"ok": ok, **detail}).encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # keep stderr for structlog
                pass

        self._server = ThreadingHTTPServer((host, int(port)), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="health",
                                        daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
