"""Library log floods are throttled; our own lines are not."""

from __future__ import annotations

import logging

from worker.observability import LibraryThrottle


def record(name: str, msg: str) -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, (), None)


def test_a_repeated_library_message_passes_once_per_interval() -> None:
    throttle = LibraryThrottle(prefixes=("aiokafka",), interval_s=3600)
    passed = [throttle.filter(record("aiokafka.conn", "Unable connect to %s")) for _ in range(500)]
    assert passed.count(True) == 1
    assert throttle.filter(record("aiokafka.conn", "another message"))
    assert all(throttle.filter(record("worker.pipeline", "ours")) for _ in range(5))


def test_the_next_line_after_the_interval_carries_the_count() -> None:
    throttle = LibraryThrottle(prefixes=("aiokafka",), interval_s=0)
    first = record("aiokafka.conn", "x")
    assert throttle.filter(first)
    assert not hasattr(first, "suppressed")
    strict = LibraryThrottle(prefixes=("aiokafka",), interval_s=3600)
    strict.filter(record("aiokafka.conn", "x"))
    for _ in range(3):
        strict.filter(record("aiokafka.conn", "x"))
    strict._seen[("aiokafka.conn", "x")] = (-1e9, 3)  # the interval has passed
    later = record("aiokafka.conn", "x")
    assert strict.filter(later)
    assert later.suppressed == 3  # type: ignore[attr-defined]
