"""worker.offsets.PartitionOffsets: the commit point under out-of-order completion.

The commit point (next offset to read) may only move past an offset once it and every
earlier consumed offset are done. Checked by hand-written cases and by a randomized model
test over 1,000 offsets with gaps, completed in random order while more are being added.
"""

from __future__ import annotations

import random

import pytest

from worker.offsets import PartitionOffsets, decode_done, encode_done


def tracker_with(*offsets: int, committed: int | None = None) -> PartitionOffsets:
    tracker = PartitionOffsets(committed)
    for offset in offsets:
        tracker.add(offset)
    return tracker


def test_nothing_done_means_no_commit_point() -> None:
    tracker = tracker_with(0, 1, 2)
    assert tracker.commit_point is None
    assert not tracker.needs_commit()
    assert tracker.oldest_pending == 0
    assert len(tracker) == 3


def test_out_of_order_completion_waits_for_the_oldest() -> None:
    tracker = tracker_with(10, 11, 12, 13)
    tracker.done(12)
    tracker.done(13)
    assert tracker.commit_point == 10  # the oldest pending, with 12 and 13 in the metadata
    assert decode_done(10, tracker.metadata()) == {12, 13}
    tracker.done(11)
    assert tracker.commit_point == 10
    assert tracker.oldest_pending == 10
    tracker.done(10)
    assert tracker.commit_point == 14
    assert tracker.oldest_pending is None
    assert len(tracker) == 0


def test_commit_point_stops_at_the_first_unfinished_offset() -> None:
    tracker = tracker_with(0, 1, 2, 3, 4)
    for offset in (0, 1, 3, 4):
        tracker.done(offset)
    assert tracker.commit_point == 2
    assert tracker.oldest_pending == 2
    assert len(tracker) == 3  # 2 is pending; 3 and 4 wait behind it


def test_gaps_in_offsets() -> None:
    tracker = tracker_with(5, 9, 20)
    tracker.done(9)
    assert tracker.commit_point == 5
    tracker.done(5)
    assert tracker.commit_point == 10  # 6..9 were never consumed; 20 is pending
    tracker.done(20)
    assert tracker.commit_point == 21


def test_starts_from_the_committed_offset() -> None:
    tracker = tracker_with(100, 101, committed=100)
    assert tracker.commit_point == 100
    assert not tracker.needs_commit()
    tracker.done(101)
    assert tracker.commit_point == 100
    tracker.done(100)
    assert tracker.commit_point == 102
    assert tracker.needs_commit()


def test_needs_commit_tracks_the_last_commit() -> None:
    tracker = tracker_with(0, 1, 2)
    tracker.done(0)
    assert tracker.needs_commit()
    tracker.committed_at(1)
    assert not tracker.needs_commit()
    tracker.done(2)
    assert tracker.commit_point == 1  # 1 still blocks the point ...
    assert tracker.needs_commit()  # ... but 2 should reach the metadata
    tracker.committed_at(1)
    assert not tracker.needs_commit()
    tracker.done(1)
    assert tracker.needs_commit()
    assert tracker.commit_point == 3


def test_repeated_done_is_harmless() -> None:
    tracker = tracker_with(0, 1, 2)
    tracker.done(1)
    tracker.done(1)
    assert tracker.commit_point == 0
    tracker.done(0)
    tracker.done(0)
    assert tracker.commit_point == 2
    tracker.done(1)  # after it is already part of the commit point
    tracker.done(0)
    assert tracker.commit_point == 2
    assert tracker.oldest_pending == 2
    tracker.done(2)
    tracker.done(2)
    assert tracker.commit_point == 3
    assert len(tracker) == 0


def test_done_of_an_old_offset_is_ignored() -> None:
    tracker = tracker_with(50, 51, committed=50)
    tracker.done(7)
    assert tracker.commit_point == 50
    assert len(tracker) == 2


def test_accepts() -> None:
    tracker = PartitionOffsets()
    assert tracker.accepts(0)
    assert tracker.accepts(1234)
    tracker.add(5)
    assert not tracker.accepts(5)
    assert not tracker.accepts(4)
    assert tracker.accepts(6)
    assert tracker.accepts(100)
    tracker.done(5)
    assert not tracker.accepts(5)  # went back: already done and committed
    assert tracker.accepts(6)
    assert tracker.accepts(7)  # a gap is fine


def test_accepts_with_committed_start() -> None:
    tracker = PartitionOffsets(committed=40)
    assert not tracker.accepts(39)
    assert tracker.accepts(40)
    assert tracker.accepts(41)


@pytest.mark.parametrize("offset", [3, 2])
def test_add_refuses_to_go_back(offset: int) -> None:
    tracker = tracker_with(1, 3)
    with pytest.raises(ValueError, match="added after"):
        tracker.add(offset)


def expected_commit_point(consumed: list[int], done: set[int]) -> int | None:
    """The reference model: one past the longest fully-done prefix of consumed offsets."""
    point = None
    for offset in consumed:
        if offset not in done:
            break
        point = offset + 1
    if point is None and done:
        point = consumed[0]  # nothing contiguous yet: the oldest pending, for the metadata
    return point


@pytest.mark.parametrize("seed", range(5))
def test_random_completion_order_with_gaps(seed: int) -> None:
    rng = random.Random(seed)
    offsets = sorted(rng.sample(range(3_000), 1_000))  # gaps, like compaction leaves
    tracker = PartitionOffsets()
    consumed: list[int] = []
    in_flight: list[int] = []
    done: set[int] = set()
    to_add = iter(offsets)
    while len(done) < len(offsets):
        if len(consumed) < len(offsets) and (not in_flight or rng.random() < 0.5):
            offset = next(to_add)
            assert tracker.accepts(offset)
            tracker.add(offset)
            consumed.append(offset)
            in_flight.append(offset)
            continue
        offset = in_flight.pop(rng.randrange(len(in_flight)))
        tracker.done(offset)
        done.add(offset)
        if rng.random() < 0.1:
            tracker.done(offset)  # a repeat changes nothing
        point = tracker.commit_point
        assert point == expected_commit_point(consumed, done)
        unfinished = [o for o in consumed if o not in done]
        if unfinished:
            smallest = min(unfinished)
            # Never past an unfinished offset, and nothing consumed lies in between.
            assert point is None or point <= smallest
            assert not any(point is not None and point <= o < smallest for o in consumed)
            assert tracker.oldest_pending == smallest
        else:
            assert point == consumed[-1] + 1
            assert tracker.oldest_pending is None
        assert len(tracker) == len(consumed) - len(
            [o for o in consumed if point is not None and o < point]
        )
    assert tracker.commit_point == offsets[-1] + 1


@pytest.mark.parametrize("seed", range(3))
def test_metadata_round_trips_the_offsets_done_beyond_the_commit_point(seed: int) -> None:
    rng = random.Random(seed)
    tracker = PartitionOffsets(committed=1_000)
    offsets = list(range(1_000, 1_400))
    for offset in offsets:
        tracker.add(offset)
    finished = set(rng.sample(offsets[1:], 150))  # 1000 stays pending
    for offset in finished:
        tracker.done(offset)
    base = tracker.commit_point
    assert base == 1_000
    metadata = tracker.metadata()
    assert len(metadata.encode()) <= 3_000
    assert decode_done(base, metadata) == finished


def test_metadata_that_does_not_fit_leaves_out_later_runs_only() -> None:
    done = set(range(100, 20_000, 2))  # 9,950 isolated offsets: cannot all fit
    metadata = encode_done(0, done, max_bytes=500)
    assert len(metadata) <= 500
    kept = decode_done(0, metadata)
    assert kept
    assert kept <= done
    assert kept == {o for o in done if o <= max(kept)}  # a prefix of the runs, no holes


@pytest.mark.parametrize("metadata", ["", "something else", "done1:zz+1", "done1:1+", None])
def test_foreign_or_broken_metadata_means_nothing_to_skip(metadata: str | None) -> None:
    assert decode_done(10, metadata) == frozenset()


def test_offsets_a_previous_owner_finished_survive_an_owner_that_never_reached_them() -> None:
    # Owner 1 committed 10 with 20..29 done beyond it. Owner 2 consumes 10..14 only (it is
    # killed, or paused by back-pressure) and commits: 20..29 must stay in the metadata,
    # or owner 3 would process them a second time (a duplicate even in exactly-once mode).
    first = decode_done(10, encode_done(10, set(range(20, 30))))
    second = PartitionOffsets(committed=10, skip=first)
    for offset in range(10, 15):
        second.add(offset)
    for offset in (10, 11, 13):
        second.done(offset)
    assert second.commit_point == 12
    assert decode_done(12, second.metadata()) == {13, *range(20, 30)}
    third = PartitionOffsets(committed=12, skip=decode_done(12, second.metadata()))
    for offset in range(12, 30):
        third.add(offset)
        if offset in third.skip:
            third.done(offset)
    assert third.commit_point == 12  # 12 waits for its own work ...
    third.done(12)
    for offset in range(14, 20):
        third.done(offset)
    assert third.commit_point == 30  # ... and nothing finished before is done again
    assert third.metadata() == ""
