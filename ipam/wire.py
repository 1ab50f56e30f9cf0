"""Hand-encoded etcd ``TxnRequest`` (protobuf wire format).

protobuf 3.20 (pinned for etcd3 0.12) has no compiled extension for Python
3.11 here, so building a transaction out of message objects costs more CPU
than the round trip to etcd. The request of a transaction is a handful of
bytes strings and integers; encoding it directly is a few lines. Field numbers
are etcd's rpc.proto (pinned by a unit test against the generated classes).
"""

from __future__ import annotations

from collections.abc import Sequence

# Compare.target MOD (VERSION is 0, the default)
_MOD = 2


_SMALL = [bytes((i,)) for i in range(128)]


def _varint(n: int) -> bytes:
    if 0 <= n < 128:
        return _SMALL[n]
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _vi(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def compare(key: bytes, mod_revision: int) -> bytes:
    """Compare: mod_revision == N, or version == 0 ("does not exist") when N == 0."""
    # proto3 leaves out fields at their default: result EQUAL (0) and target
    # VERSION (0) are not written; version 0 is, because it is a oneof member.
    if mod_revision == 0:
        return _ld(3, key) + _vi(4, 0)
    return _vi(2, _MOD) + _ld(3, key) + _vi(6, mod_revision)


def put_op(key: bytes, value: bytes) -> bytes:
    return _ld(2, _ld(1, key) + (_ld(2, value) if value else b""))


def delete_op(key: bytes) -> bytes:
    return _ld(3, _ld(1, key))


def range_op(key: bytes) -> bytes:
    return _ld(1, _ld(1, key))


def txn_request(compares: Sequence[bytes], success: Sequence[bytes],
                failure: Sequence[bytes]) -> bytes:
    return (b"".join(_ld(1, c) for c in compares) + b"".join(_ld(2, s) for s in success)
            + b"".join(_ld(3, f) for f in failure))
