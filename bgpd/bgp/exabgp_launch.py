"""Start ExaBGP in its own interpreter, optionally without its per-prefix decoding of UPDATEs.

    <ExaBGP's python> exabgp_launch.py [exabgp arguments...]

The speaker runs this instead of the ``exabgp`` script (same interpreter: the one named by
the script's ``#!`` line, whose site-packages hold ExaBGP). With ``NODEROUTER_EXABGP_NLRI=
validate`` in the environment it replaces ``Update.unpack_message`` for received UPDATEs:

The daemon configures ``receive { packets; }`` and ``adj-rib-in false``: it decodes every
UPDATE from the raw hex itself (``bgpd.bgp.wire``). ExaBGP 5.0.15 still decodes each
received UPDATE into one NLRI object per prefix (``Protocol.read_message``: the shortcut
that skips decoding needs ``receive { update; }`` off, which also stops the packet lines),
then throws them away: under CPython that was ~60 % of its CPU while 100k routes arrive
(cProfile of bench/bench_bgp.py: ``NLRI.unpack_nlri`` 4.0 s of 7.8 s busy). Nobody reads
those objects in this configuration: the adj-rib-in is off, ``parsed`` is not asked for,
``exabgp.log.routes`` is off (the only other readers, ``Peer._main``'s cache and log).

What is kept, so a peer sees the same behaviour: the message framing checks
(``Update.split``), the path attributes (``Attributes.unpack``, with its NOTIFICATIONs and
RFC 7606 handling) and the NLRI bytes are still checked -- every prefix length <= 32 and
within the message -- and anything this fast path does not cover (End-of-RIB, ADD-PATH,
MP_REACH/MP_UNREACH, a bad prefix) goes to ExaBGP's own decoder, which raises exactly the
NOTIFICATION it always did. The result is an ``Update`` with the attributes and no NLRI.

Stdlib and ExaBGP only (it runs in ExaBGP's interpreter, maybe PyPy, never ours).
Pinned to ExaBGP 5.0.15: with any other version the launcher runs ExaBGP unchanged.
"""

from __future__ import annotations

import os
import sys

NLRI_ENV = "NODEROUTER_EXABGP_NLRI"
PATCHED_RELEASE = "5.0.15"


def ipv4_nlri_ok(data: bytes) -> bool:
    """Whether ``data`` is a well-formed run of IPv4 NLRI (RFC 4271 4.3: a length octet
    <= 32, then ceil(length / 8) prefix octets), as ExaBGP's decoder would accept it."""
    i, n = 0, len(data)
    while i < n:
        mask = data[i]
        if mask > 32:
            return False
        i += 1 + (mask + 7) // 8
    return i == n


def install_validate_only() -> bool:
    """Replace ``Update.unpack_message`` (see module doc). Returns whether it did."""
    from exabgp.version import release

    if release != PATCHED_RELEASE:
        return False
    from exabgp.bgp.message.direction import Direction
    from exabgp.bgp.message.update import Update
    from exabgp.bgp.message.update.attribute import MPRNLRI, MPURNLRI, Attributes
    from exabgp.protocol.family import AFI, SAFI

    full = Update.unpack_message  # bound classmethod: ExaBGP's decoder

    def unpack_message(cls, data, direction, negotiated):
        if direction != Direction.IN:
            return full(data, direction, negotiated)
        withdrawn, attributes, announced = Update.split(data)  # raises ExaBGP's Notify
        if (not withdrawn and not announced) \
                or negotiated.addpath.receive(AFI.ipv4, SAFI.unicast) \
                or not ipv4_nlri_ok(withdrawn) or not ipv4_nlri_ok(announced):
            return full(data, direction, negotiated)
        attrs = Attributes.unpack(attributes, direction, negotiated)
        if MPRNLRI.ID in attrs or MPURNLRI.ID in attrs:
            return full(data, direction, negotiated)
        return Update([], attrs)

    Update.unpack_message = classmethod(unpack_message)
    return True


def main() -> int:
    if os.environ.get(NLRI_ENV) == "validate":
        install_validate_only()
    from exabgp.application.main import main as exabgp_main

    sys.argv = ["exabgp", *sys.argv[1:]]
    return exabgp_main()


if __name__ == "__main__":
    sys.exit(main())
