"""The hand-encoded TxnRequest is byte-identical to protobuf's own encoding."""

from __future__ import annotations

from etcd3 import etcdrpc as rpc

from ipam import wire


def _reference(expect, puts, deletes, reads) -> bytes:
    cmp = []
    for key, mod in expect:
        if mod == 0:
            cmp.append(rpc.Compare(key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.VERSION,
                                   version=0))
        else:
            cmp.append(rpc.Compare(key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.MOD,
                                   mod_revision=mod))
    success = [rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=v)) for k, v in puts]
    success += [rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k)) for k in deletes]
    failure = [rpc.RequestOp(request_range=rpc.RangeRequest(key=k)) for k in reads]
    return rpc.TxnRequest(compare=cmp, success=success, failure=failure).SerializeToString()


def test_txn_request_matches_protobuf():
    expect = [(b"/a/block", 123456789), (b"/a/handle", 0), (b"/a/pool", 1), (b"/a/r" * 40, 2**40)]
    puts = [(b"/a/block", b"x" * 300), (b"/a/handle", b"")]
    deletes = [b"/a/gone"]
    reads = [b"/a/block", b"/a/handle"]
    mine = wire.txn_request([wire.compare(k, m) for k, m in expect],
                            [wire.put_op(k, v) for k, v in puts] + [wire.delete_op(k) for k in deletes],
                            [wire.range_op(k) for k in reads])
    assert mine == _reference(expect, puts, deletes, reads)
    parsed = rpc.TxnRequest.FromString(mine)
    assert parsed.compare[1].target == rpc.Compare.VERSION and parsed.compare[1].version == 0
    assert parsed.compare[1].WhichOneof("target_union") == "version"
    assert parsed.compare[3].mod_revision == 2**40


def test_empty_txn():
    assert wire.txn_request([], [], []) == rpc.TxnRequest().SerializeToString()
