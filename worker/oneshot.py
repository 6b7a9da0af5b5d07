"""One-shot mode: enrich ids given on the command line, in a file or on stdin, without Kafka.

Each input line is read like a Kafka message (a bare id or the JSON object form). Events go
to stdout as JSON lines in input order; failures go to stderr as JSON lines with a reason,
so a SOAR playbook can parse both. A progress line goes to stderr every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import BinaryIO, TextIO

import orjson

from worker.enricher import Enricher
from worker.errors import InputError
from worker.events import build_event
from worker.inputs import parse_message

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 2.0


@dataclass
class OneShotStats:
    """Counts of a one-shot run."""

    events: int = 0
    failed: int = 0


async def enrich_lines(
    lines: AsyncIterator[str],
    enricher: Enricher,
    *,
    default_account_id: str | None,
    max_bytes: int,
    window: int,
    out: BinaryIO,
    err: TextIO,
) -> OneShotStats:
    """Enrich every line, up to ``window`` at once, writing results in input order."""
    stats = OneShotStats()
    pending: deque[asyncio.Task[tuple[bytes | None, bytes | None]]] = deque()
    started = last_progress = time.monotonic()

    async def one(line: str) -> tuple[bytes | None, bytes | None]:
        try:
            request = parse_message(
                line.encode(), default_account_id=default_account_id, max_bytes=max_bytes
            )
        except InputError as exc:
            return None, _failure(line, exc.reason, exc.detail)
        outcome = await enricher.enrich(request)
        if outcome.detections is None:
            assert outcome.error is not None
            return None, _failure(
                request.investigate_id, outcome.error.reason, outcome.error.detail
            )
        try:
            return orjson.dumps(build_event(outcome.detections, request, None)), None
        except Exception:  # one id's bug must not end the run: report it like the pipeline
            log.exception(
                "cannot build the event", extra={"investigate_id": request.investigate_id}
            )
            return None, _failure(request.investigate_id, "internal_error", "see the log")

    def write(result: tuple[bytes | None, bytes | None]) -> None:
        event, failure = result
        if event is not None:
            out.write(event + b"\n")
            stats.events += 1
        else:
            assert failure is not None
            err.write(failure.decode() + "\n")
            stats.failed += 1

    async def flush(keep: int) -> None:
        nonlocal last_progress
        while len(pending) > keep or (pending and pending[0].done()):
            write(await pending.popleft())
        now = time.monotonic()
        if now - last_progress >= PROGRESS_EVERY_S:
            last_progress = now
            _progress(err, stats, now - started)

    async for line in lines:
        if not line.strip():
            continue
        pending.append(asyncio.create_task(one(line.rstrip("\r\n"))))
        await flush(window - 1)
    await flush(0)
    out.flush()
    if time.monotonic() - started >= PROGRESS_EVERY_S:
        _progress(err, stats, time.monotonic() - started, final=True)
    return stats


def _failure(investigate_id: str, reason: str, detail: str) -> bytes:
    return orjson.dumps({"investigate_id": investigate_id[:300], "error": reason, "detail": detail})


def _progress(err: TextIO, stats: OneShotStats, elapsed: float, *, final: bool = False) -> None:
    done = stats.events + stats.failed
    rate = done / elapsed if elapsed > 0 else 0.0
    label = "done" if final else "progress"
    err.write(
        f"enrich {label}: {done} ids, {stats.events} events, {stats.failed} failed, "
        f"{rate:.1f} ids/s, {elapsed:.0f} s\n"
    )
    err.flush()
