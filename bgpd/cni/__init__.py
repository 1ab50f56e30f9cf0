"""The CNI plugin (``noderouter-cni``) and the daemon's fast-path server.

Modules
- ``main``: the executable: VERSION answered at once, else the fast path, else direct.
- ``fast``: hand the whole call to the local daemon over its unix socket.
- ``server``: the daemon's side of the fast path (runs inside ``noderouter run``).
- ``protocol``: pure: request parsing and validation, results, CNI error objects.
- ``commands``: ADD, DEL, CHECK, VERSION, STATUS, GC, shared by both callers.
- ``netns``: the pod interface plumbing (veth, addresses, host route) with pyroute2.
- ``records``: node-local workload records in the state directory.

Review notes (invariants)
- Imports ``ipam`` and ``config`` only, never ``bgpd.node``/``bgpd.bgp`` (import-linter).
- stdout carries exactly one JSON document or nothing; every error has a spec code.
- Validation happens before anything is touched: a bad request leaves nothing behind.
- One call per container at a time (issue 12): ADD, DEL and GC hold the container's
  flock in the state dir (``records.acquire_lock``) from reading its record to writing
  or removing it, whether the plugin or the daemon's worker threads run them; a
  rollback undoes only what its own call created.
- A pod netns is never the node's own, nor one holding another container's interface.
- On the fast path the daemon uses the plugin's fd of CNI_NETNS (SCM_RIGHTS), not the
  path: the runtime's mount namespace may not be the daemon's (issue 16).
- A requested address (the "ips" capability) is assigned exactly or ADD fails.
- This ``__init__`` imports nothing: the fast path must start light.
"""
