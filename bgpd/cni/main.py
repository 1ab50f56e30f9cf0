"""``noderouter-cni``: the CNI plugin executable (ADD, DEL, CHECK, VERSION, STATUS, GC).

Two paths, one set of commands (``bgpd.cni.commands``):

* fast: the local daemon serves the call over its CNI socket (``bgpd.cni.fast``,
  ``bgpd.cni.server``). This module imports only the standard library until it
  knows the daemon is not there, so a pod ADD costs a Python start and one
  round trip, not ~400 ms of imports (structlog, etcd3/grpc, pyroute2);
* direct: no daemon (restarting, stopped, ``daemon_socket: null``): this process
  does the whole command itself, as Calico's plugin does (see ``bgpd.cni.protocol``).

VERSION never takes either path (issue 16): libcni calls it for every plugin of
every conflist on each container start, and its answer needs no daemon, etcd or
kernel. ``version_answer_text`` answers it here with ``_json`` only, the same
document ``bgpd.cni.commands.run`` would print (tests/cni/test_cni_fast.py compares
the two).

``from bgpd.cni.main import run`` (and the other command names) still works: they
are looked up in ``bgpd.cni.commands`` on first use.
"""

from __future__ import annotations

import os
import sys

from bgpd.cni import litejson

# == bgpd.cni.protocol.SUPPORTED_VERSIONS / CURRENT_VERSION (not imported: the
# protocol module pulls in re, ipaddress, hashlib, dataclasses); a unit test pins
# them equal.
SUPPORTED_VERSIONS: tuple[str, ...] = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION = "1.1.0"


def version_answer_text(stdin: bytes) -> str:
    """The VERSION answer, stdlib only: in the request's cniVersion when we speak it,
    else in ours. Like the reference plugins (skel), VERSION does not fail on its
    stdin: empty, undecodable or an unknown version still gets the list, which is
    what the runtime needs to pick a version (libcni sends ``{"cniVersion": ...}``)."""
    version = CURRENT_VERSION
    try:
        # UTF-8 first: json.loads on bytes would also accept UTF-16/32, which the
        # full path (bgpd.cni.protocol.decode_json) rejects.
        doc = litejson.loads(stdin.decode("utf-8")) if stdin.strip() else None
    except (UnicodeDecodeError, ValueError):
        doc = None
    if isinstance(doc, dict):
        asked = doc.get("cniVersion")
        if isinstance(asked, str) and asked in SUPPORTED_VERSIONS:
            version = asked
    return litejson.dumps({"cniVersion": version,
                           "supportedVersions": list(SUPPORTED_VERSIONS)},
                          item_sep=",", key_sep=": ")


def main(argv: list[str] | None = None) -> int:
    raw = sys.stdin.buffer.read() if not sys.stdin.isatty() else b""
    if os.environ.get("CNI_COMMAND", "").strip().upper() == "VERSION":
        sys.stdout.write(version_answer_text(raw) + "\n")
        sys.stdout.flush()
        return 0
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
