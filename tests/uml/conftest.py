"""One User-Mode Linux kernel per test session, for the IPIP data path.

This machine's kernel has no ``ipip`` module, so tunl0 is tested inside UML
(see lab/uml.py). If UML cannot boot, every test that asks for the kernel
fails with the reason: these tests never skip, because a skipped IPIP test
would read as a green data path that was never exercised.
"""

from __future__ import annotations

import itertools
import shlex
from collections.abc import Iterator

import pytest

from lab.uml import UmlError, UmlKernel


@pytest.fixture(scope="session")
def uml_kernel() -> Iterator[UmlKernel]:
    kernel = UmlKernel(mem="512M")
    try:
        kernel.boot()
    except UmlError as exc:
        pytest.fail(
            "UML KERNEL COULD NOT BOOT -- the IPIP data-path tests cannot run on this "
            f"machine and are failing on purpose (never skipped):\n{exc}",
            pytrace=False,
        )
    try:
        yield kernel
    finally:
        kernel.shutdown()


class GuestNetns:
    """Namespaces a test creates inside the guest, deleted by exact name afterwards."""

    def __init__(self, kernel: UmlKernel, prefix: str) -> None:
        self.kernel = kernel
        self.prefix = prefix
        self.names: list[str] = []

    def add(self, suffix: str) -> str:
        return self.add_many(suffix)[0]

    def add_many(self, *suffixes: str) -> list[str]:
        """Create namespaces (loopback up) in one guest round trip."""
        names = [f"{self.prefix}-{s}" for s in suffixes]
        script = []
        for name in names:
            q = shlex.quote(name)
            script.append(f"ip netns add {q} && ip -n {q} link set lo up")
        res = self.kernel.run(" && ".join(script))
        # Register before checking: a half-made set is still torn down.
        self.names.extend(n for n in names if n not in self.names)
        res.check()
        return names

    def delete_all(self) -> list[str]:
        if not self.names:
            return []
        script = "; ".join(
            f"ip netns delete {shlex.quote(n)} 2>&1 | sed 's/^/{n}: /'" for n in reversed(self.names)
        )
        res = self.kernel.run(script)
        self.names.clear()
        return [line for line in res.stdout.splitlines() if line.strip()]


_test_numbers = itertools.count(1)


@pytest.fixture
def guest_netns(uml_kernel: UmlKernel) -> Iterator[GuestNetns]:
    # Tests share one guest kernel; a short per-test prefix keeps their
    # namespaces apart and makes the teardown exact.
    owned = GuestNetns(uml_kernel, f"t{next(_test_numbers)}")
    try:
        yield owned
    finally:
        if uml_kernel.alive():
            errors = owned.delete_all()
            assert not errors, f"guest namespace teardown failed: {errors}"
