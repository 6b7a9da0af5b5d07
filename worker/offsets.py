"""Per-partition record of which consumed offsets are done, and the safe commit point.

Messages finish out of order; the commit point only moves past an offset once it and every
earlier offset consumed from that partition are done. Offsets are added in the order the
consumer returns them (increasing within a partition); gaps (compaction, transaction
markers) are fine because only offsets that were actually consumed are tracked.
"""

from __future__ import annotations

from collections import deque


class PartitionOffsets:
    """Tracks one partition: offsets in flight, in consumption order."""

    __slots__ = ("_done", "_in_flight", "_next", "committed")

    def __init__(self, committed: int | None = None) -> None:
        self._in_flight: deque[int] = deque()
        self._done: set[int] = set()
        self._next: int | None = committed
        self.committed: int | None = committed

    def __len__(self) -> int:
        """Offsets consumed whose output is not yet part of the commit point."""
        return len(self._in_flight)

    def accepts(self, offset: int) -> bool:
        """False if ``offset`` is not after every offset seen (the consumer went back)."""
        if self._in_flight:
            return offset > self._in_flight[-1]
        return self._next is None or offset >= self._next

    def add(self, offset: int) -> None:
        """Record that ``offset`` was consumed and its work started."""
        if self._in_flight and offset <= self._in_flight[-1]:
            raise ValueError(f"offset {offset} added after {self._in_flight[-1]}")
        self._in_flight.append(offset)

    def done(self, offset: int) -> None:
        """Record that the output of ``offset`` is acknowledged by the broker."""
        if not self._in_flight or offset < self._in_flight[0]:
            return  # already part of the commit point (a repeat after a retry)
        self._done.add(offset)
        while self._in_flight and self._in_flight[0] in self._done:
            first = self._in_flight.popleft()
            self._done.discard(first)
            self._next = first + 1

    @property
    def commit_point(self) -> int | None:
        """The offset to commit (next to read), or None if nothing was finished yet."""
        return self._next

    def needs_commit(self) -> bool:
        """True when the commit point moved since the last commit."""
        return self._next is not None and self._next != self.committed

    @property
    def oldest_pending(self) -> int | None:
        """The earliest offset not yet done (what the commit point waits for)."""
        return self._in_flight[0] if self._in_flight else None
