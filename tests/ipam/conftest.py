from __future__ import annotations

import pytest


@pytest.fixture
def store(etcd_server):
    from ipam.store import EtcdStore

    s = EtcdStore(etcd_server.endpoint, timeout=5.0)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def make_ipam(store):
    from ipam.allocator import Ipam

    def make(node: str = "node-a", **kw) -> Ipam:
        kw.setdefault("cooldown", 0.0)
        return Ipam(store, node, **kw)
    return make
