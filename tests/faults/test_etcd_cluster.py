"""A 3-member etcd cluster loses one member in the middle of allocations: none fails."""

import threading

import pytest

from ipam.allocator import Ipam
from ipam.store import EtcdStore
from lab.etcd import EtcdCluster

pytestmark = pytest.mark.integration


def test_one_member_killed_mid_run_fails_no_allocation():
    with EtcdCluster(3) as cluster:
        # The killed member is listed first: every client starts on it and must move on.
        store = EtcdStore(cluster.endpoints, timeout=10)
        ipam = Ipam(store, "node-a1", cooldown=0)
        ipam.add_pool("198.19.0.0/16", 26)
        allocated, failed = [], []
        total, kill_at = 1000, 300
        killer = None
        for n in range(total):
            if n == kill_at:
                # Killed from another thread while allocations keep going.
                killer = threading.Thread(target=cluster.members[0].pause)
                killer.start()
            try:
                allocated.append(ipam.allocate(f"k8s-pod-network.c{n:06d}", {"pod": f"p{n}"}))
            except Exception as exc:  # noqa: BLE001 - counted, that is the test
                failed.append(repr(exc))
        killer.join()
        assert not cluster.members[0].daemon.alive()
        print(f"3-member etcd, one member killed after {kill_at} allocations: "
              f"{len(allocated)} allocations, {len(failed)} failed")
        assert failed == []
        assert len(set(allocated)) == len(allocated) == total
        store.close()
