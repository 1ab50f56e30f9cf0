"""``noderouter-cni``: the CNI plugin executable (ADD, DEL, CHECK, VERSION, STATUS, GC).

Two paths, one set of commands (``bgpd.cni.commands``):

* fast: the local daemon serves the call over its CNI socket (``bgpd.cni.fast``,
  ``bgpd.cni.server``). This module imports only the standard library until it
  knows the daemon is not there, so a pod ADD costs a Python start and one
  round trip, not ~400 ms of imports (structlog, etcd3/grpc, pyroute2);
* direct: no daemon (restarting, stopped, ``daemon_socket: null``): this process
  does the whole command itself, as Calico's plugin does (see ``bgpd.cni.protocol``).

``from bgpd.cni.main import run`` (and the other command names) still works: they
are looked up in ``bgpd.cni.commands`` on first use.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    raw = sys.stdin.buffer.read() if not sys.stdin.isatty() else b""
    from bgpd.cni.fast import try_daemon

    code = try_daemon(raw)
    if code is not None:
        return code
    from bgpd.cni.commands import main_direct

    return main_direct(raw)


def __getattr__(name: str):
    # Lazy re-export: importing this module must stay cheap (the fast path). Dunder
    # lookups (the import system asks for __path__ on `from bgpd.cni.main import
    # main`) must not pull the commands in.
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from bgpd.cni import commands as cni_commands

    try:
        return getattr(cni_commands, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


if __name__ == "__main__":
    sys.exit(main())
