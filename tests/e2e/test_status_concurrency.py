"""The status API under load while the node changes (issue 13).

2,000 status / peers / routes requests straight to node-b1's status socket (the CLI's
status client), from four threads, while pods are added and deleted on node-b1 and
node-a1, and node-b1's ToR (FRR) announces and withdraws routes inside the pool
(learned-route churn). Every answer must be a complete, valid JSON reply: before the
views read published snapshots, they iterated the route table's desired map and the
learned routes while the loop changed them ("dictionary changed size during iteration").
"""

from __future__ import annotations

import threading
import time

import pytest

from bgpd.cli.status_client import query
from lab.procs import wait_for
from tests.e2e.conftest import build_lab

pytestmark = pytest.mark.e2e

REQUESTS = 2000
THREADS = 4
PACE = 0.04   # seconds between one client's requests
VIEWS = ("status", "peers", "routes")
# Routes the ToR announces and withdraws, a batch at a time: /32s inside the pool
# (198.19.248.0/22). Hundreds per batch, so the maps the views walk are big enough for
# a walk to overlap the loop's changes (with a few dozen routes the race stays hidden).
BATCH = 256
INJECTED = [f"198.19.{248 + i // 256}.{i % 256}/32" for i in range(3 * BATCH)]
INJECTED_SET = frozenset(INJECTED)


@pytest.fixture(scope="module")
def lab():
    the_lab = build_lab("tor", nodes_per_rack=1, pods_per_node=1)
    try:
        yield the_lab
    finally:
        errors = the_lab.down()
        assert not errors, errors


def test_status_answers_stay_valid_json_while_pods_and_routes_churn(lab):
    sock = lab.status_socket("node-b1")
    tor = lab.tors["b"]
    asn = tor.asn
    errors: list[str] = []
    answers = {v: 0 for v in VIEWS}
    seen_injected: set[str] = set()
    lock = threading.Lock()
    rounds = {"routes": 0, "pods": 0}
    churning = threading.Event()
    churning.set()

    def client(k: int) -> None:
        for i in range(REQUESTS // THREADS):
            # Paced (~100 requests/s in all), so the requests span many churn rounds.
            time.sleep(PACE)
            view = VIEWS[(i + k) % len(VIEWS)]
            try:
                data = query(sock, view, timeout=30)
            except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                with lock:
                    errors.append(f"{view}: {type(exc).__name__}: {exc}")
                continue
            ok = isinstance(data, dict if view == "status" else list)
            with lock:
                answers[view] += 1
                if not ok:
                    errors.append(f"{view}: unexpected shape {type(data).__name__}")
                if view == "routes":
                    seen_injected.update(r["prefix"] for r in data if r["prefix"] in INJECTED_SET)

    def route_churn() -> None:
        n = 0
        while churning.is_set():
            batch = INJECTED[(n % 3) * BATCH:(n % 3 + 1) * BATCH]
            try:
                tor.configure(f"router bgp {asn}", "address-family ipv4 unicast",
                              *(f"network {p}" for p in batch))
                time.sleep(0.3)
                tor.configure(f"router bgp {asn}", "address-family ipv4 unicast",
                              *(f"no network {p}" for p in batch))
            except Exception as exc:  # noqa: BLE001 - a broken churn must fail the test
                with lock:
                    errors.append(f"route churn: {type(exc).__name__}: {exc}")
                return
            n += 1
            rounds["routes"] = n

    def pod_churn() -> None:
        n = 0
        while churning.is_set():
            try:
                for node in ("node-b1", "node-a1"):
                    lab.add_pod(node, f"c{n}")
                for node in ("node-b1", "node-a1"):
                    lab.del_pod(node, f"c{n}")
            except Exception as exc:  # noqa: BLE001 - a broken churn must fail the test
                with lock:
                    errors.append(f"pod churn: {type(exc).__name__}: {exc}")
                return
            n += 1
            rounds["pods"] = n

    churners = [threading.Thread(target=route_churn, name="route-churn"),
                threading.Thread(target=pod_churn, name="pod-churn")]
    for t in churners:
        t.start()
    clients = [threading.Thread(target=client, args=(k,), name=f"client-{k}")
               for k in range(THREADS)]
    try:
        for t in clients:
            t.start()
        for t in clients:
            t.join(timeout=600)
    finally:
        churning.clear()
        for t in churners:
            t.join(timeout=120)
    print(f"churn rounds {rounds}, answers {answers}, injected seen {len(seen_injected)}")
    assert errors == [], errors[:20]
    assert sum(answers.values()) == REQUESTS, answers
    assert rounds["routes"] >= 10 and rounds["pods"] >= 3, rounds
    # The churn was visible: some injected routes were learned while we asked.
    assert seen_injected, "no injected route was ever seen in the routes view"
    # And the node is healthy afterwards: the injected routes are all gone again.
    wait_for(lambda: not any(r["prefix"] in INJECTED_SET
                             for r in query(sock, "routes", timeout=30)), 30,
             what="the withdrawn ToR routes to leave node-b1")
    assert lab.status("node-b1")["sync"]["ready"] is True
