"""The drift check in a real kernel (issue 14): it lists our table only when the
nftables ruleset generation moved since the table was last known intact, and still
repairs a hand-flushed chain and a deleted table."""

from __future__ import annotations

import struct

import pytest

from felix_like.policy import NftCli, PolicyManager, parse_generation
from felix_like.policy_model import load_documents
from lab.netns import NetnsSet, run_prefix, sh
from tests.policy import model
from tests.policy.test_policy_truth import CASES

pytestmark = pytest.mark.kernel


class CountingNft(NftCli):
    """The real nft; counts the table listings the drift check pays for."""

    def __init__(self, netns: str) -> None:
        super().__init__(netns)
        self.listings = 0

    def list_table_terse(self):
        self.listings += 1
        return super().list_table_terse()


@pytest.fixture
def node_ns():
    owned = NetnsSet()
    try:
        yield owned.add(f"{run_prefix('nrq')}-drift")
    finally:
        assert not owned.delete_all()


def _resources(case: str):
    return load_documents(model.resource_docs(model.pods(), model.namespace_labels())
                          + CASES[case], "case")


def _nft(netns: str, *args: str) -> str:
    return sh(["nft", *args], netns=netns).stdout


def test_drift_check_lists_only_after_a_foreign_commit_and_still_repairs(node_ns):
    nft = CountingNft(node_ns)
    mgr = PolicyManager("n1", nft=nft, resync_interval=1000, drift_check_interval=5,
                        cut_denied_flows=False, counter_read_interval=1000)
    try:
        mgr.replace_all(_resources("allow-from-namespace"))
        assert mgr.complete_deferred_work(0.0) == "full"
        # Nobody committed since our apply: nothing can have drifted, nothing listed.
        assert mgr.complete_deferred_work(10.0) is None
        assert nft.listings == 0
        # Someone else's table: the generation moves, one listing finds ours intact ...
        sh(["nft", "-f", "-"], netns=node_ns, input="table ip nrforeign {\n  chain c {\n  }\n}\n")
        assert mgr.complete_deferred_work(20.0) is None
        assert nft.listings == 1
        # ... and is not repeated while nothing moves again.
        assert mgr.complete_deferred_work(30.0) is None
        assert nft.listings == 1
        # Our own incremental apply does not make the next check list either.
        mgr.replace_all(_resources("allow-from-pod-in-other-namespace-AND"))
        assert mgr.complete_deferred_work(31.0) == "incremental"
        assert mgr.complete_deferred_work(40.0) is None
        assert nft.listings == 1
        # A hand-flushed chain is found and repaired ...
        _nft(node_ns, "flush", "chain", "inet", "noderouter", "tw-nrwxa")
        assert mgr.complete_deferred_work(50.0) == "full"
        assert nft.listings == 2
        assert "jump pi-" in _nft(node_ns, "list", "chain", "inet", "noderouter", "tw-nrwxa")
        # ... and so is a deleted table.
        _nft(node_ns, "delete", "table", "inet", "noderouter")
        assert mgr.complete_deferred_work(60.0) == "full"
        assert "chain tw-nrwxa" in _nft(node_ns, "list", "table", "inet", "noderouter")
        assert mgr.complete_deferred_work(70.0) is None
        assert nft.listings == 3
    finally:
        mgr.remove()
        nft.close()


def test_generation_reply_parsing_names_the_problem():
    header = struct.Struct("=IHHII")
    attr = struct.pack("=HH", 8, 1) + struct.pack(">I", 4242)
    ok = header.pack(16 + 4 + 8, (10 << 8) | 15, 0, 0, 0) + b"\0" * 4 + attr
    assert parse_generation(ok) == 4242
    with pytest.raises(ValueError, match="too short"):
        parse_generation(ok[:10])
    with pytest.raises(ValueError, match="no NFTA_GEN_ID"):
        parse_generation(header.pack(20, (10 << 8) | 15, 0, 0, 0) + b"\0" * 4)
    error = header.pack(36, 2, 0, 0, 0) + struct.pack("=i", -1) + b"\0" * 16
    with pytest.raises(ValueError, match="errno 1"):
        parse_generation(error)
