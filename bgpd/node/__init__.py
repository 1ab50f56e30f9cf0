"""The node daemon (``noderouter run``): IPAM, dataplane and BGP wired into one loop.

Modules
- ``daemon``: ``NodeDaemon``, the composition root: builds, starts, runs and stops
  everything; allocates tunnel addresses (IPAM) at start and on pool changes.
- ``state``: ``NodeState``, the etcd cache (nodes, pools, blocks, and the network
  policy resources) the loop fills.
- ``policy_store``: network policy resources in etcd (issue 14): the key layout under
  ``<prefix>/policy/v1/``, the verbatim JSON encoding, one-transaction writes (the CLI's).
- ``cycle``: ``Cycle.run(now)``, one loop iteration with its ports injected; publishes
  a ``NodeSnapshot`` (``snapshot``) at the end of every run.
- ``calculator``: pure: datastore snapshots in, desired state and typed dataplane
  updates (``felix_like.updates``) out.
- ``peering``: pure: the speaker's peers and import policy from the config and the mesh.
- ``registry`` / ``registry_store``: the node registry (who is in the cluster) and this
  node's lease-backed registration in etcd.
- ``syncer``: one etcd prefix kept in sync (snapshot at N, watch from N+1).
- ``workloads``: local workloads as the CNI plugin records them.
- ``status_server`` / ``views``: the local status API (JSON over a unix socket); views
  read only the latest ``NodeSnapshot``.
- ``metrics``: Prometheus metrics and /livez, /readyz.
- ``sdnotify``: systemd's notify protocol.

Review notes (invariants)
- Nothing is swept from the kernel before etcd is in sync and learned routes are back.
- Signal handlers only set flags; the main loop acts on them.
- Nothing here holds or writes a ``RouteTable``: the dataplane is reached only through
  ``Dataplane.on_update`` / ``apply`` / ``mark_in_sync`` / ``queue_resync``.
- No etcd or IPAM call inside ``Cycle.run``; other threads read only snapshots.
"""
