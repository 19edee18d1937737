import sys

import pytest

from fedfm import memory

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")


@linux
def test_rss_and_peak_are_read_and_ordered():
    rss, peak = memory.rss_bytes(), memory.peak_rss_bytes()
    assert 10 * 2**20 < rss <= peak


@linux
@pytest.mark.skipif(memory._glibc() is None, reason="glibc only")
def test_trim_gives_freed_heap_blocks_back(monkeypatch):
    # Prepare: 1 MiB blocks (under the 2 MiB threshold: heap) pinned apart by small ones
    monkeypatch.delenv(memory.ALLOCATOR_ENV, raising=False)
    assert memory.tune_allocator()
    blocks, pins = [], []
    for _ in range(64):
        blocks.append(bytearray(1 << 20))
        blocks[-1][::4096] = b"x" * len(blocks[-1][::4096])  # touch every page
        pins.append(bytearray(64))
    del blocks
    before = memory.rss_bytes()
    # Execute
    memory.trim()
    # Assert
    assert before - memory.rss_bytes() > 32 << 20
    assert all(len(p) == 64 for p in pins)


def test_glibc_mode_changes_nothing(monkeypatch):
    monkeypatch.setenv(memory.ALLOCATOR_ENV, "glibc")
    assert not memory.tuned()
    assert memory.tune_allocator() is False
    memory.trim()  # a no-op, never an error
