"""The node daemon (``noderouter run``): IPAM, dataplane and BGP wired into one loop.

Modules
- ``daemon``: ``NodeDaemon``, builds, starts, runs and stops everything.
- ``calculator``: pure: datastore + RIB snapshots in, the node's desired state out.
- ``learned_routes``: learned BGP routes classified into dataplane targets.
- ``registry`` / ``registry_store``: the node registry (who is in the cluster) and this
  node's lease-backed registration in etcd.
- ``syncer``: one etcd prefix kept in sync (snapshot at N, watch from N+1).
- ``workloads``: local workloads as the CNI plugin records them.
- ``status_server`` / ``views``: the local status API (JSON over a unix socket).
- ``metrics``: Prometheus metrics and /livez, /readyz.
- ``sdnotify``: systemd's notify protocol.

Review notes (invariants)
- Nothing is swept from the kernel before etcd is in sync and learned routes are back.
- Signal handlers only set flags; the main loop acts on them.
"""
