"""Program IPIP block routes with felix_like's RouteTable, inside a guest namespace.

Run inside the node's namespace (``ip netns exec <node> python this.py ...``):
    guest_ipip_routes.py PROTOCOL PEER_BLOCK=PEER_UNDERLAY_IP [...]
Adds `PEER_BLOCK via PEER_UNDERLAY_IP dev tunl0 onlink proto PROTOCOL`, then
runs a second, full resync to show the routes read back as already correct.
Prints one JSON object: the two apply summaries.
"""

from __future__ import annotations

import json
import sys

from felix_like.routetable import KernelRouteDriver, RouteTable, Target


def main(argv: list[str]) -> int:
    protocol = int(argv[1])
    targets = []
    for spec in argv[2:]:
        block, _, via = spec.partition("=")
        targets.append(Target(dst=block, gateway=via, ifname="tunl0", onlink=True))
    driver = KernelRouteDriver()
    try:
        table = RouteTable(driver=driver, protocol=protocol, class_order=("ipip",))
        table.set_routes("ipip", targets)
        table.mark_in_sync()
        first = table.apply()
        table.queue_resync()
        second = table.apply()
    finally:
        driver.close()
    print(json.dumps({
        "first": first.summary(),
        "first_failed": {str(k): v for k, v in first.failed.items()},
        "second": second.summary(),
    }))
    return 0 if not first.failed and not second.failed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
