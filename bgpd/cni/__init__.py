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
- This ``__init__`` imports nothing: the fast path must start light.
"""
