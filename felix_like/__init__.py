"""The dataplane: managers that turn desired state into kernel objects (Felix pattern).

Modules
- ``updates``: the vocabulary (values only, no I/O): route targets, workload endpoints,
  remote nodes/blocks, the learned-route context, and the update messages the
  daemon hands to ``Dataplane.on_update``.
- ``classify``: pure: what a learned BGP route becomes (remote block, plain route, why not).
- ``learned_routes``: ``LearnedRoutes``, the learned-routes manager (100k-route path).
- ``routetable``: ``RouteTable`` - desired routes per route class vs the kernel's
  routes of our protocol number; ``set_routes`` / ``route_update`` /
  ``route_remove`` / ``queue_resync`` / ``mark_in_sync`` / ``apply``.
  ``KernelRouteDriver(netns=None, ipr=None)`` is its real-netlink driver.
- ``nlwire``: struct-packed rtnetlink for bulk routes (batched sends, errors by
  sequence number, raw filtered dumps with NLM_F_DUMP_INTR retry).
- ``managers``: ``Dataplane`` (one way in: ``on_update(msg)`` to every manager; one loop
  step: ``apply()``) with ``LearnedRoutes``, ``RemoteBlockManager``,
  ``TunnelDeviceManager``, ``WorkloadManager``, ``BlackholeManager``, NAT, policy;
  ``compute_remote_routes`` is the pure part.
- ``sysctls``: idempotent sysctl writes inside the node's namespace.
- ``nat``: NAT outgoing through one nftables table of ours.
- ``policy_model``: network policy resources (Kubernetes ``networking.k8s.io/v1`` verbatim,
  ``noderouter.io/v1`` with order and Deny), validated with ``file:line: field:`` errors.
- ``policy_calc``: pure: policies + namespaces + endpoints -> per-endpoint rule chains and
  set contents (Kubernetes semantics).
- ``policy_nft``: the ``table inet noderouter`` ruleset as one ``nft -f`` transaction, and
  incremental set/map updates.
- ``policy``: ``PolicyManager``: applies it in the node's namespace, resync and drift repair;
  ``managers.PolicyDataplaneManager`` feeds it ``updates.PolicyInputsUpdate`` inside
  ``Dataplane.apply`` (no table while no policy exists).
- ``errors``: ``DataplaneError``, the one exception root.

Review notes (invariants)
- Ownership = route protocol number (a parameter, never a literal in logic).
  We never replace, delete or even read routes of another protocol or of a
  table we do not manage; deletes carry our protocol so the kernel enforces it.
- Routes of ours read back at start that nobody desires survive until
  ``mark_in_sync()``; a route desired in this run and then given up goes at once.
- Failed routes stay dirty, do not block others, and trigger a full resync.
- ``on_*`` methods only record; kernel I/O happens in
  ``complete_deferred_work()`` / ``apply()``.
- Nothing here imports ``bgpd``; nothing outside ``felix_like`` writes a ``RouteTable``.
- IPv4 only for now.
"""
