"""One exception root per room (issue 13): every exception class a room defines derives
from its root, so a caller can catch "anything from the BGP speaker" in one clause."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

pytestmark = pytest.mark.unit

ROOTS = {
    "bgpd.bgp": ("bgpd.bgp.errors", "BgpError"),
    "bgpd.node": ("bgpd.node.errors", "NodeError"),
    "bgpd.cni": ("bgpd.cni.protocol", "CniError"),
    "felix_like": ("felix_like.errors", "DataplaneError"),
    "ipam": ("ipam.errors", "IpamError"),
    "tunnels": ("tunnels.errors", "TunnelError"),
}


def strays(package: str, root: type) -> tuple[list[str], int]:
    pkg = importlib.import_module(package)
    seen, out = 0, []
    for info in pkgutil.iter_modules(pkg.__path__, f"{package}."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        seen += 1
        for attr, obj in vars(module).items():
            # Exception, not BaseException: a signal unwinding a command (like
            # KeyboardInterrupt) is deliberately outside every root.
            if (inspect.isclass(obj) and issubclass(obj, Exception)
                    and obj.__module__ == info.name and not issubclass(obj, root)):
                out.append(f"{info.name}.{attr}")
    return out, seen


@pytest.mark.parametrize("package", sorted(ROOTS))
def test_every_exception_of_a_room_derives_from_its_root(package):
    module, name = ROOTS[package]
    root = getattr(importlib.import_module(module), name)
    found, seen = strays(package, root)
    assert seen >= 2, f"the walk saw {seen} modules of {package}"
    assert found == [], f"exception classes in {package} not derived from {name}: {found}"

