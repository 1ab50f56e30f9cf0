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
        name = f"{self.prefix}-{suffix}"
        self.kernel.run(["ip", "netns", "add", name], check=True)
        self.names.append(name)
        self.kernel.run(f"ip -n {shlex.quote(name)} link set lo up", check=True)
        return name

    def delete_all(self) -> list[str]:
        errors = []
        for name in reversed(self.names):
            res = self.kernel.run(["ip", "netns", "delete", name])
            if not res.ok:
                errors.append(f"{name}: {res.stderr.strip()}")
        self.names.clear()
        return errors


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
