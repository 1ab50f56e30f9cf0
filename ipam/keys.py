"""The etcd key layout of IPAM (the table in ipam/README.md).

Every key the package reads or writes is built here, so the layout is one
place; turning a pool or block key back into its CIDR is
:func:`ipam.model.cidr_from_key`.
"""

from __future__ import annotations

from ipam.model import IPNetwork, cidr_key

DEFAULT_PREFIX = "/noderouter/ipam/v1/"
# The gc state of a cluster-wide run (``gc`` without ``node``) lives under this scope.
CLUSTER_SCOPE = "_cluster"


class Keys:
    """The etcd key layout (see ipam/README.md)."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"

    def pools(self) -> str:
        return self.prefix + "pools/"

    def pool(self, cidr: IPNetwork | str) -> str:
        return self.pools() + cidr_key(cidr)

    def poolsrev(self) -> str:
        return self.prefix + "poolsrev"

    def blocks(self, pool: IPNetwork | str | None = None) -> str:
        base = self.prefix + "blocks/"
        return base if pool is None else base + cidr_key(pool) + "/"

    def block(self, pool: IPNetwork | str, block: IPNetwork | str) -> str:
        return self.blocks(pool) + cidr_key(block)

    def affinities(self) -> str:
        return self.prefix + "affinities/"

    def affinity(self, node: str) -> str:
        return self.affinities() + node

    def handles(self) -> str:
        return self.prefix + "handles/"

    def handle(self, handle: str) -> str:
        return self.handles() + handle

    def reservations(self) -> str:
        return self.prefix + "reservations"

    def gc(self, scope: str) -> str:
        return self.prefix + "gc/" + scope
