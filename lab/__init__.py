"""The noderouter lab: a multi-rack cluster in network namespaces on one machine.

Review notes (invariants):
- Everything the lab creates lives in network namespaces it created itself, named
  with a per-run unique prefix; it never touches the root namespace.
- Every lab address lies in 198.18.0.0/15 (see ``lab.addressing``).
- Every daemon is started by the lab and stopped by its PID; teardown deletes
  namespaces by their exact names, on success, failure or Ctrl-C.
"""
