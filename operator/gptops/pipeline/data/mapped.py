"""Resident memory of the memory-mapped Arrow files prepare reads.

`datasets` reads its Arrow files through read-only memory maps. Every page a pass touches stays mapped into the process,
and counts in its resident set (RSS), until the kernel reclaims it or the file is unmapped: one pass over a 2 GB dataset
shows as 2 GB of RSS although the process holds none of it, and a container's memory limit or a scheduler that reads
RSS sees a stage several times larger than it is. `ReleasedMappings` reclaims those pages every fraction of a second
(`madvise(MADV_PAGEOUT)` on the read-only file mappings under the stage's own directories): the next read of a
reclaimed page reads it in again, so nothing changes but the count. Linux 5.4 or later; elsewhere it does nothing.

Why MADV_PAGEOUT and not MADV_DONTNEED: the ranges come from /proc/self/maps, and between reading the list and advising
a range, another thread (datasets closing a file, Arrow's or torch's allocators) can unmap it and map something new at
the same address. MADV_DONTNEED on a private anonymous mapping throws its pages away (they read back as zeros): a
corrupted heap and a crash long after. MADV_PAGEOUT never loses data: clean file pages are dropped, anything else is
written back or swapped first, or left where it is when it cannot be.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 0.2
"""How often the pages are dropped: at a few hundred MB/s of reading, tens of MB stay resident in between."""

MADV_PAGEOUT = getattr(mmap, "MADV_PAGEOUT", 21)
"""Linux's value (include/uapi/asm-generic/mman-common.h); Python 3.11's mmap module does not name it."""


def read_only_file_mappings(roots: tuple[Path, ...], maps: str = "/proc/self/maps") -> list[tuple[int, int]]:
    """[start, end) of the read-only file mappings of this process whose file lies under one of `roots`."""
    prefixes = tuple(str(root.resolve()).rstrip("/") + "/" for root in roots)
    ranges = []
    with open(maps) as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or "w" in fields[1] or not fields[5].rstrip("\n").startswith(prefixes):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def _pageout_supported(madvise) -> bool:
    """Whether this kernel knows MADV_PAGEOUT (5.4 and later): asked once, on a page of our own."""
    page = mmap.mmap(-1, mmap.PAGESIZE)
    try:
        buffer = ctypes.c_char.from_buffer(page)
        try:
            return madvise(ctypes.addressof(buffer), mmap.PAGESIZE, MADV_PAGEOUT) == 0
        finally:
            del buffer
    finally:
        page.close()


class ReleasedMappings:
    """A context manager: while it is open, a thread drops the resident pages of the read-only mappings of files under
    `roots` every `interval` seconds, and once more on exit."""

    def __init__(self, *roots: Path, interval: float = INTERVAL_SECONDS):
        self.roots = roots
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._madvise = None
        if sys.platform == "linux":
            libc = ctypes.CDLL(None, use_errno=True)
            libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            if _pageout_supported(libc.madvise):
                self._madvise = libc.madvise
        self.released = 0  # passes that dropped at least one mapping (for tests and logs)

    def release(self) -> int:
        """Drop the pages now; returns how many mappings were advised."""
        if self._madvise is None:
            return 0
        try:
            ranges = read_only_file_mappings(self.roots)
        except OSError:
            return 0
        self.advise(ranges)
        if ranges:
            self.released += 1
        return len(ranges)

    def advise(self, ranges: list[tuple[int, int]]) -> None:
        """Reclaim the pages of `ranges`. A range can be unmapped, or something else mapped there, after the list was
        read: the advice is then void (ENOMEM) or reclaims the other mapping's pages without losing them."""
        for start, end in ranges:
            self._madvise(start, end - start, MADV_PAGEOUT)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.release()

    def __enter__(self) -> ReleasedMappings:
        if self._madvise is not None and os.path.exists("/proc/self/maps"):
            self._thread = threading.Thread(target=self._loop, name="released-mappings", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.release()
