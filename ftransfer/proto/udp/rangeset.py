"""Sets of sequence numbers kept as sorted, disjoint half-open ranges.

Theory of operation: the UDP receiver records which chunks arrived above its
cumulative point, and the sender which chunks were acknowledged, as ranges
``[start, stop)``. Arrivals are mostly in order, so the set stays a handful of
ranges: ``add`` is O(log n) to find the place plus O(k) to merge the k ranges it
touches. Two parallel lists (starts, stops) keep bisect fast without tuples.
Invariant: ``starts[i] < stops[i] < starts[i + 1]`` (disjoint, not even adjacent).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator


class RangeSet:
    """A set of non-negative integers stored as disjoint ranges."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._stops: list[int] = []

    def __len__(self) -> int:
        """Number of ranges (not of integers)."""
        return len(self._starts)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self._starts, self._stops, strict=True)

    def __contains__(self, value: int) -> bool:
        i = bisect_right(self._starts, value) - 1
        return i >= 0 and value < self._stops[i]

    def add(self, start: int, stop: int | None = None) -> None:
        """Add ``[start, stop)`` (one value if ``stop`` is None)."""
        stop = start + 1 if stop is None else stop
        if stop <= start:
            return
        # Ranges that overlap or touch [start, stop) are merged into one.
        first = bisect_left(self._stops, start)
        last = bisect_right(self._starts, stop)
        if first < last:
            start = min(start, self._starts[first])
            stop = max(stop, self._stops[last - 1])
        self._starts[first:last] = [start]
        self._stops[first:last] = [stop]

    def add_new(self, start: int, stop: int) -> list[tuple[int, int]]:
        """Add ``[start, stop)``; returns the sub-ranges that were not already present."""
        fresh: list[tuple[int, int]] = []
        cursor = start
        i = bisect_right(self._stops, start)
        while cursor < stop:
            if i >= len(self._starts) or self._starts[i] >= stop:
                fresh.append((cursor, stop))
                break
            if self._starts[i] > cursor:
                fresh.append((cursor, self._starts[i]))
            cursor = max(cursor, self._stops[i])
            i += 1
        self.add(start, stop)
        return fresh

    def discard_below(self, bound: int) -> None:
        """Remove every value below ``bound``."""
        i = bisect_right(self._stops, bound)
        del self._starts[:i], self._stops[:i]
        if self._starts and self._starts[0] < bound:
            self._starts[0] = bound

    def containing(self, value: int) -> tuple[int, int] | None:
        """The range that holds ``value``, or None."""
        i = bisect_right(self._starts, value) - 1
        if i >= 0 and value < self._stops[i]:
            return self._starts[i], self._stops[i]
        return None

    def newest(self, limit: int) -> list[tuple[int, int]]:
        """The ``limit`` highest ranges, highest first (what a SACK reports)."""
        n = len(self._starts)
        return [(self._starts[i], self._stops[i]) for i in range(n - 1, max(n - limit, 0) - 1, -1)]
