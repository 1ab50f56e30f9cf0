"""Shared fixtures and the root-namespace guard.

The guard snapshots the root network namespace (links, addresses, routes of all
tables, rules, permanent neighbours, the nft ruleset, the sysctls noderouter
touches) when the session starts and fails the session if any of it differs at
the end. NODEROUTER_GUARD_NETNS points it at another namespace: the guard's own
test uses that to prove a leak is caught without leaking into the root.
"""

from __future__ import annotations

import os

import pytest

from lab import rootguard
from lab.netns import NetnsSet, run_prefix

_GUARD_KEY = pytest.StashKey[dict]()


def _guard_target() -> str | None:
    return os.environ.get("NODEROUTER_GUARD_NETNS") or None


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.geteuid() == 0:
        session.stash[_GUARD_KEY] = rootguard.snapshot(_guard_target())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.stash.get(_GUARD_KEY, None)
    if before is None:
        return
    changed = rootguard.diff(before, rootguard.snapshot(_guard_target()))
    if changed:
        where = _guard_target() or "the root network namespace"
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = f"ROOT-NAMESPACE GUARD: the test session changed {where}:\n{changed}\n"
        if reporter:
            reporter.write_line(msg, red=True, bold=True)
        else:
            print(msg)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests without a tier marker are unit tests.
    tiers = {"unit", "kernel", "integration", "e2e"}
    for item in items:
        if not tiers & {m.name for m in item.iter_markers()}:
            item.add_marker(pytest.mark.unit)


@pytest.fixture
def netns_set():
    """Throwaway namespaces, deleted by exact name even when the test fails."""
    if os.geteuid() != 0:
        pytest.fail("kernel tests need root (they create network namespaces); run scripts/test")
    owned = NetnsSet()
    try:
        yield owned
    finally:
        errors = owned.delete_all()
        assert not errors, f"namespace teardown failed: {errors}"


@pytest.fixture
def netns(netns_set):
    """One fresh network namespace, loopback up."""
    return netns_set.add(f"{run_prefix('nrt')}-t")


@pytest.fixture
def etcd_server():
    """A throwaway real etcd on 127.0.0.1 (temp data dir, stopped by PID)."""
    from lab.etcd import EtcdServer

    server = EtcdServer().start()
    try:
        yield server
    finally:
        server.stop()
