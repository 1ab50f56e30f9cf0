"""Everything that runs on a node beyond the dataplane, in four rooms.

Rooms
- ``bgpd.bgp``: the BGP speaker (ExaBGP supervised as a child, its wire codec, RIB,
  import policy, the pure core). Imports nothing of node, cni or cli.
- ``bgpd.node``: the node daemon (``noderouter run``): composition root, etcd state,
  the cycle, the calculator, registry, status API, metrics, sd_notify.
- ``bgpd.cni``: the CNI plugin (``noderouter-cni``) and the daemon's fast-path server.
  Imports ``ipam`` and ``config`` only.
- ``bgpd.cli``: the operator CLI (``noderouter``): click commands, output, status client.

Dependencies point one way: cli -> node -> bgp | cni -> felix_like -> tunnels -> config.
The import-linter contracts in ``setup.cfg`` hold this; the test command runs them.

This package's ``__init__`` (and every room's) imports nothing: the CNI plugin's fast
path must start without loading the daemon's modules.
"""
