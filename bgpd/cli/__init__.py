"""The operator CLI (``noderouter``): one click group.

Modules
- ``main``: the group; registers each command family explicitly.
- ``node_commands``: ``run``, ``status``, ``peers``, ``routes``.
- ``ipam_commands``: ``ipam show|check|gc|release``, ``pool add|list|delete``.
- ``policy_commands``: ``policy apply|list|get|delete|explain``, ``namespace label|list``,
  ``workload label|list`` (network policy resources in etcd, issue 14).
- ``config_commands``: ``check-config``, ``config-reference``.
- ``output``: aligned tables (colored on a TTY) or JSON with ``-o json``.
- ``status_client``: one request to the daemon's status socket, clear errors.

Review notes (invariants)
- Exit codes: 0 ok, 1 failure (one clear line on stderr), 2 usage.
- Never imports ``lab``, ``bench`` or ``tests``; the lab has its own ``noderouter-lab``.
"""
