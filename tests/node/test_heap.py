"""bgpd/node/heap.py: freed C-heap memory goes back to the kernel after a large change
(issue 17). Unit tests in this process (glibc)."""

from __future__ import annotations

from bgpd.node.heap import TRIM_AFTER_ROUTES, release_free_heap, should_trim


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_only_large_changes_trim():
    assert not should_trim(0)
    assert not should_trim(TRIM_AFTER_ROUTES - 1)
    assert should_trim(TRIM_AFTER_ROUTES)


def test_freed_heap_blocks_leave_the_rss():
    # 40 MB of 2 KB blocks (malloc, not pymalloc, not mmap), every 64th kept alive so the
    # heap cannot shrink from its top by itself: what a 100k-route cycle leaves behind.
    blocks = [bytes(2048) for _ in range(20_000)]
    keep = blocks[::64]
    before_free = _rss_kb()
    del blocks
    freed = _rss_kb()
    assert release_free_heap()
    trimmed = _rss_kb()
    assert before_free - freed < 8_000, "glibc gave the holes back by itself: test is moot"
    assert freed - trimmed > 20_000, (before_free, freed, trimmed)
    assert len(keep) == 313
