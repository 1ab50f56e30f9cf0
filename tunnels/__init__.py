"""Tunnel devices and the encapsulation decision.

- ``tunnels.encap``: pure decision (Always / CrossSubnet / Never per pool) and the
  route form per peer block; MTU arithmetic.
- ``tunnels.devices``: ``probe_kind``, ``ensure_ipip``, ``ensure_vxlan``,
  ``sync_vxlan_peers`` on an open pyroute2 ``IPRoute`` (importable and usable on
  its own, e.g. inside a UML kernel for the IPIP tests).

Review notes: tunnels imports nothing from felix_like or bgpd; every kernel
function takes the IPRoute of the node's namespace and never opens one itself.
"""
