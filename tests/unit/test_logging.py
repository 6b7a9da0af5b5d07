"""Library log floods are throttled; our own lines are not."""

from __future__ import annotations

import logging

from worker.observability import LibraryThrottle, TextFormatter


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


def test_text_lines_keep_the_structured_fields() -> None:
    # Found by a new user: in text format a DLQ line said neither why nor where.
    line = record("worker.pipeline", "bad input message to DLQ")
    line.__dict__.update(topic="ids", partition=2, offset=41, reason="invalid_id")
    text = TextFormatter("%(levelname)s %(name)s %(message)s").format(line)
    assert text == (
        "ERROR worker.pipeline bad input message to DLQ "
        "topic=ids partition=2 offset=41 reason=invalid_id"
    )
    plain = TextFormatter("%(message)s").format(record("worker.service", "metrics endpoint up"))
    assert plain == "metrics endpoint up"
