"""Per-partition record of which consumed offsets are done, and the safe commit point.

Messages finish out of order; the commit point only moves past an offset once it and every
earlier offset consumed from that partition are done. Offsets are added in the order the
consumer returns them (increasing within a partition); gaps (compaction, transaction
markers) are fine because only offsets that were actually consumed are tracked.

Offsets done beyond the commit point travel in the commit's metadata (``encode_done``), so
that after a restart or a rebalance the next owner skips them instead of repeating them.
"""

from __future__ import annotations

from collections import deque

METADATA_MAX_BYTES = 3_000
"""Under Kafka's default offset.metadata.max.bytes (4096), with room to spare."""
_PREFIX = "done1:"


class PartitionOffsets:
    """Tracks one partition: offsets in flight, in consumption order."""

    __slots__ = (
        "_committed_changes",
        "_done",
        "_in_flight",
        "_next",
        "changes",
        "committed",
        "last_progress",
        "skip",
    )

    def __init__(self, committed: int | None = None, skip: frozenset[int] = frozenset()) -> None:
        self._in_flight: deque[int] = deque()
        self._done: set[int] = set()
        self._next: int | None = committed
        self.changes = 0
        """Counts ``done`` calls, so a commit knows whether its metadata is still current."""
        self._committed_changes = 0
        self.committed: int | None = committed
        self.skip = skip
        """Offsets a previous owner finished beyond its commit point (from the metadata)."""
        self.last_progress = 0.0
        """Monotonic time of the last ``done``, for stuck detection."""

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
        self.changes += 1
        while self._in_flight and self._in_flight[0] in self._done:
            first = self._in_flight.popleft()
            self._done.discard(first)
            self._next = first + 1

    @property
    def commit_point(self) -> int | None:
        """The offset to commit (the next one to read), or None before any was consumed."""
        if self._next is not None:
            return self._next
        # Nothing contiguous is done yet, but some later offsets are: committing the oldest
        # pending one (where reading resumes anyway) carries them in the metadata.
        return self._in_flight[0] if self._done else None

    def needs_commit(self) -> bool:
        """True when the commit point or the record of done offsets changed since."""
        return self.commit_point is not None and (
            self.commit_point != self.committed or self.changes != self._committed_changes
        )

    def committed_at(self, offset: int, changes: int | None = None) -> None:
        """Record a commit of ``offset`` whose metadata was taken at ``changes``."""
        self.committed = offset
        self._committed_changes = self.changes if changes is None else changes

    def metadata(self, max_bytes: int = METADATA_MAX_BYTES) -> str:
        """The commit metadata: offsets done beyond the commit point, compactly.

        Offsets a previous owner finished (``skip``) that this one has not reached yet are
        still done: they are carried on, or the next owner would repeat them.
        """
        base = self.commit_point
        if base is None:
            return ""
        done = self._done.union(o for o in self.skip if o >= base)
        return encode_done(base, done, max_bytes=max_bytes) if done else ""

    @property
    def oldest_pending(self) -> int | None:
        """The earliest offset not yet done (what the commit point waits for)."""
        return self._in_flight[0] if self._in_flight else None


def encode_done(base: int, done: set[int], *, max_bytes: int = METADATA_MAX_BYTES) -> str:
    """Runs of done offsets above ``base``, as ``done1:<start-base>+<length>,...`` in hex.

    When the runs do not fit in ``max_bytes`` the later ones are left out: that only means
    those messages are processed again after a restart, never that one is skipped.
    """
    parts: list[str] = []
    size = len(_PREFIX)
    for start, length in _runs(sorted(o for o in done if o >= base)):
        part = f"{start - base:x}+{length:x}"
        if size + len(part) + 1 > max_bytes:
            break
        parts.append(part)
        size += len(part) + 1
    return _PREFIX + ",".join(parts) if parts else ""


def decode_done(base: int, metadata: str | None) -> frozenset[int]:
    """The offsets ``encode_done`` wrote; empty for foreign or malformed metadata."""
    if not metadata or not metadata.startswith(_PREFIX):
        return frozenset()
    offsets: set[int] = set()
    try:
        for part in metadata[len(_PREFIX) :].split(","):
            start, _, length = part.partition("+")
            first = base + int(start, 16)
            offsets.update(range(first, first + int(length, 16)))
    except ValueError:
        return frozenset()
    return frozenset(offsets)


def _runs(offsets: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for offset in offsets:
        if runs and runs[-1][0] + runs[-1][1] == offset:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((offset, 1))
    return runs
