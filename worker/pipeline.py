"""The run loop: consume ids, enrich concurrently, produce events or DLQ records, commit.

An input offset is committed only once the broker acknowledged the output of that message
and of every earlier message of its partition (see worker.offsets). Memory is bounded by
``max_pending_messages``: when that many messages are in progress, every partition is
paused until some finish. Shutdown stops consuming, lets work in progress finish within the
grace period, commits what finished, then closes the clients in reverse order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.structs import ConsumerRecord, TopicPartition

from worker.delivery import AtLeastOnce, ExactlyOnce
from worker.enricher import HOLD_AUTH, HOLD_RATE_LIMIT, HOLD_UNAVAILABLE, Enricher
from worker.errors import InputError, TransactionFailed
from worker.events import Source, build_dlq_record, build_event
from worker.inputs import EnrichRequest, parse_message
from worker.observability import Health, Metrics
from worker.offsets import PartitionOffsets, decode_done
from worker.retry import Attempts, Outcome
from worker.settings import Settings

log = logging.getLogger(__name__)

_POLL_TIMEOUT_MS = 200
_CAUGHT_UP_CHECK_S = 0.2
_PRODUCE_RETRY_S = 1.0
_CLOSE_TIMEOUT_S = 5.0
_DELIVERY_WAIT_S = 2.0
_RATE_WINDOW_S = 60.0
"""The drain estimate divides the lag by the completion rate over this recent window."""


@dataclass
class RunStats:
    """Counts of one run, for the demo summary and for tests."""

    consumed: int = 0
    produced: int = 0
    dlq: int = 0
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class _Inbound:
    """One input message, as the DLQ record needs to keep it."""

    source: Source
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None


class _EventTooLarge(Exception):
    """The broker refused the event for its size; it goes to the DLQ instead."""


class Pipeline:
    """Owns the consumer, the producer and the work in progress between them."""

    def __init__(
        self,
        *,
        settings: Settings,
        enricher: Enricher,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        metrics: Metrics,
        health: Health | None = None,
    ) -> None:
        self._settings = settings
        self._kafka = settings.kafka
        self._limits = settings.pipeline
        self._enricher = enricher
        self._consumer = consumer
        self._delivery: AtLeastOnce | ExactlyOnce = (
            ExactlyOnce(producer, group_id=settings.kafka.group_id)
            if settings.pipeline.exactly_once
            else AtLeastOnce(producer, consumer)
        )
        self._failed = asyncio.Event()
        self._admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
        self._metrics = metrics
        self._health = health or Health()
        self._trackers: dict[TopicPartition, PartitionOffsets] = {}
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self._delivering: set[asyncio.Task[None]] = set()
        """Tasks whose output is being sent: they are let finish, never cancelled (see
        ``_cancel``), so that a sent output always gets its offset marked done."""
        self._pending = 0
        self._stopping = False
        self._assigned_once = False
        self._hold: str | None = None
        self._finished_samples: deque[tuple[float, int]] = deque()
        self.stats = RunStats()

    async def run(self, *, stop: asyncio.Event | None = None, burst: bool = False) -> RunStats:
        """Process messages until ``stop`` is set or, with ``burst``, until caught up."""
        stop = stop or asyncio.Event()
        await self._delivery.start()
        await self._admin.start()
        try:
            await self._consumer.start()
            try:
                self._consumer.subscribe([self._kafka.input_topic], listener=_Rebalance(self))
                await self._loop(stop, burst)
            finally:
                # Bounded, even when the broker is gone: what is not committed is repeated.
                await _bounded(self._drain_and_commit(), self._limits.shutdown_grace_s + 5, "drain")
                await _bounded(self._consumer.stop(), _CLOSE_TIMEOUT_S, "consumer close")
        finally:
            await _bounded(self._admin.close(), _CLOSE_TIMEOUT_S, "admin close")
            await _bounded(self._delivery.stop(), _CLOSE_TIMEOUT_S, "producer close")
            self._health.ready = False
            self._health.reason = "stopped"
        if self._failed.is_set():
            raise TransactionFailed("an exactly-once transaction failed; restart the worker")
        return self.stats

    async def _loop(self, stop: asyncio.Event, burst: bool) -> None:
        next_commit = time.monotonic() + self._limits.commit_interval_s
        next_caught_up_check = 0.0
        while not stop.is_set() and not self._failed.is_set():
            self._health.beat()
            hold = self._enricher.hold_reason()
            if hold != self._hold:
                self._hold_changed(hold)
            room = 0 if hold else self._limits.max_pending_messages - self._pending
            self._apply_backpressure(room)
            batch = await self._consumer.getmany(
                timeout_ms=_POLL_TIMEOUT_MS,
                max_records=max(1, min(room, self._kafka.max_poll_records)),
            )
            missing = {tp for tp in batch if tp not in self._trackers}
            if missing:
                # Before the first record of a partition: what did its last owner finish?
                # (Not in the rebalance listener: aiokafka may fetch before that returns.)
                await self._load_trackers(missing)
            for tp, records in batch.items():
                for record in records:
                    self._dispatch(tp, record)
            now = time.monotonic()
            if now >= next_commit:
                await self._commit()
                self._observe_partitions(now)
                next_commit = now + self._limits.commit_interval_s
            self._check_stuck(now)
            if burst and not batch and now >= next_caught_up_check:
                next_caught_up_check = now + _CAUGHT_UP_CHECK_S
                if await self._caught_up():
                    log.info("caught up with the input topic; stopping (burst mode)")
                    return

    def _observe_partitions(self, now: float) -> None:
        """Lag, out-of-order record size and drain estimate; on the commit interval only."""
        total_lag = 0
        for tp in self._consumer.assignment():
            tracker = self._trackers.get(tp)
            highwater = self._consumer.highwater(tp)
            base = None
            if tracker is not None:
                base = (
                    tracker.committed if tracker.committed is not None else tracker.oldest_pending
                )
            lag = None if highwater is None or base is None else max(0, highwater - base)
            total_lag += lag or 0
            self._metrics.partition(
                tp.topic, tp.partition, lag=lag, uncommitted=len(tracker) if tracker else 0
            )
        finished = self.stats.produced + self.stats.dlq + self.stats.skipped
        samples = self._finished_samples
        samples.append((now, finished))
        while len(samples) > 2 and now - samples[0][0] > _RATE_WINDOW_S:
            samples.popleft()
        span = now - samples[0][0]
        rate = (finished - samples[0][1]) / span if span > 0 else 0.0
        self._metrics.drain(total_lag, rate)

    def _check_stuck(self, now: float) -> None:
        """Liveness fails when a partition with work finished nothing for stuck_after_s."""
        if self._hold is not None:
            return  # waiting out Cloudflare is not being stuck
        limit = self._limits.stuck_after_s
        stuck = sorted(
            f"{tp.topic}[{tp.partition}]"
            for tp, tracker in self._trackers.items()
            if len(tracker) and now - tracker.last_progress > limit
        )
        reason = f"no progress for {limit:.0f} s on {', '.join(stuck)}" if stuck else None
        if reason != self._health.stuck:
            if reason:
                log.error(
                    "stuck: liveness fails so that the worker is restarted",
                    extra={"partitions": stuck},
                )
            self._health.stuck = reason

    def _hold_changed(self, hold: str | None) -> None:
        """Pause all input while no call can succeed; say so once, not per message."""
        previous, self._hold = self._hold, hold
        if hold is None:  # the time held does not count towards being stuck
            now = time.monotonic()
            for tracker in self._trackers.values():
                tracker.last_progress = now
        self._metrics.lockout_active.set(1 if hold == HOLD_RATE_LIMIT else 0)
        self._metrics.auth_refused.set(1 if hold == HOLD_AUTH else 0)
        self._metrics.api_unavailable.set(1 if hold == HOLD_UNAVAILABLE else 0)
        if hold == HOLD_RATE_LIMIT:
            log.warning("Cloudflare rate limit lockout: input paused until it ends")
        elif hold == HOLD_UNAVAILABLE:
            log.error("Cloudflare API unavailable: input paused until it answers again")
        elif hold == HOLD_AUTH:
            log.error("Cloudflare refuses the credentials: input paused, readiness red")
        else:
            log.info("calls flow again: input resumed", extra={"after": previous})
        self._update_readiness()

    def _update_readiness(self) -> None:
        # A lockout is Cloudflare's rule, not our fault: stay ready. Refused credentials
        # need a person: report not ready so that the orchestrator and on-call see it.
        if self._hold == HOLD_AUTH:
            self._health.ready, self._health.reason = False, "Cloudflare refuses the credentials"
        elif self._assigned_once:
            self._health.ready = True
            self._health.reason = f"{len(self._consumer.assignment())} partitions assigned"

    def _apply_backpressure(self, room: int) -> None:
        """Pause what must wait: everything when full, else partitions with too much open."""
        assignment = self._consumer.assignment()
        per_partition = self._limits.max_pending_per_partition
        wanted = (
            set(assignment)
            if room <= 0
            else {tp for tp in assignment if len(self._trackers.get(tp, ())) >= per_partition}
        )
        paused = self._consumer.paused()
        if wanted - paused:
            self._consumer.pause(*(wanted - paused))
        if paused - wanted:
            self._consumer.resume(*(paused - wanted))

    def _dispatch(self, tp: TopicPartition, record: ConsumerRecord[Any, Any]) -> None:
        tracker = self._trackers.get(tp)
        if tracker is None or not tracker.accepts(record.offset):
            # A new assignment, or the consumer went back (offset reset): start afresh.
            # Work still in flight for the old record only repeats, it is never skipped;
            # what a previous owner finished stays finished.
            skip = tracker.skip if tracker is not None else frozenset()
            tracker = self._trackers[tp] = PartitionOffsets(skip=skip)
        if not len(tracker):
            tracker.last_progress = time.monotonic()  # the stuck clock starts with work
        tracker.add(record.offset)
        self._metrics.consumed.inc()
        self.stats.consumed += 1
        if record.offset in tracker.skip:
            # A previous owner finished it after its last commit (commit metadata).
            tracker.done(record.offset)
            self._metrics.skipped.inc()
            self.stats.skipped += 1
            return
        self._pending += 1
        self._metrics.pending.set(self._pending)
        task = asyncio.create_task(self._handle(tp, tracker, record))
        tasks = self._tasks.setdefault(tp, set())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _handle(
        self, tp: TopicPartition, tracker: PartitionOffsets, record: ConsumerRecord[Any, Any]
    ) -> None:
        message = _Inbound(
            Source(tp.topic, tp.partition, record.offset),
            record.key,
            record.value,
            record.timestamp,
        )
        task = asyncio.current_task()
        assert task is not None
        try:
            output = await self._process(message)
            # Once an output is being sent it is finished, rebalance or shutdown: in
            # exactly-once mode it is part of the open transaction already, so its offset
            # must be marked done before that transaction commits. ``_cancel`` skips it.
            self._delivering.add(task)
            await self._deliver(output, tracker, record)
        except asyncio.CancelledError:
            raise  # not done, so not committed: it is processed again after a restart
        except TransactionFailed:
            # Its output is aborted with the transaction: not done, and not for the DLQ
            # either. The run loop stops; the restart repeats it from the last commit.
            self._failed.set()
        except Exception:  # the outermost handler of a message: never let a bug stop the line
            log.exception("unexpected error handling a message", extra=_where(message.source))
            try:
                await self._send_dlq(message, "internal_error", "unexpected error in the worker")
                tracker.done(record.offset)
            except Exception:  # the DLQ is unreachable too: leave the offset uncommitted
                log.exception(
                    "cannot write the DLQ record; offset held", extra=_where(message.source)
                )
        finally:
            self._delivering.discard(task)
            self._pending -= 1
            self._metrics.pending.set(self._pending)

    async def _deliver(
        self,
        output: Callable[[], Awaitable[None]],
        tracker: PartitionOffsets,
        record: ConsumerRecord[Any, Any],
    ) -> None:
        await output()
        tracker.done(record.offset)
        tracker.last_progress = time.monotonic()
        self._metrics.message_finished(record.timestamp)

    async def _process(self, message: _Inbound) -> Callable[[], Awaitable[None]]:
        """Parse and enrich one message; return the step that sends its event or DLQ record."""
        where = _where(message.source)
        try:
            request = parse_message(
                message.value,
                default_account_id=self._settings.cloudflare.account_id,
                max_bytes=self._limits.max_message_bytes,
            )
        except InputError as exc:
            log.warning("bad input message to DLQ", extra={**where, "reason": exc.reason})
            return partial(self._send_dlq, message, exc.reason, exc.detail)
        outcome = await self._enricher.enrich(request)
        if outcome.detections is None:
            assert outcome.error is not None
            error = outcome.error
            log.warning(
                "enrichment failed; DLQ",
                extra={
                    **where,
                    "investigate_id": request.investigate_id,
                    "reason": error.reason,
                    "status": error.status,
                },
            )
            return partial(
                self._send_dlq,
                message,
                error.reason,
                error.detail,
                investigate_id=request.investigate_id,
                attempts=outcome.attempts,
            )
        return partial(self._send_event, message, request, outcome)

    async def _send_event(
        self, message: _Inbound, request: EnrichRequest, outcome: Outcome
    ) -> None:
        assert outcome.detections is not None
        event = build_event(
            outcome.detections,
            request,
            message.source,
            on_unknown=lambda field, _: self._metrics.unknown_values.labels(field=field).inc(),
        )
        try:
            await self._produce(
                self._kafka.output_topic, request.investigate_id.encode(), orjson.dumps(event)
            )
        except _EventTooLarge as exc:
            await self._send_dlq(
                message,
                "event_too_large",
                str(exc),
                investigate_id=request.investigate_id,
                attempts=outcome.attempts,
            )
            return
        self._metrics.produced.inc()
        self._metrics.dispositions.labels(
            disposition=outcome.detections.final_disposition or "absent"
        ).inc()
        self.stats.produced += 1

    async def _send_dlq(
        self,
        message: _Inbound,
        reason: str,
        detail: str,
        *,
        investigate_id: str | None = None,
        attempts: Attempts | None = None,
    ) -> None:
        record = build_dlq_record(
            reason=reason,
            detail=detail,
            source=message.source,
            key=message.key,
            value=message.value,
            timestamp_ms=message.timestamp_ms,
            investigate_id=investigate_id,
            attempts=attempts,
        )
        try:
            await self._produce(self._kafka.dlq_topic, message.key, orjson.dumps(record))
        except _EventTooLarge:
            # Even cut, the record is refused (a broker with a small message.max.bytes):
            # keep the reason and the hash, drop the original bytes, never hold the line.
            record = build_dlq_record(
                reason=reason, detail=detail, source=message.source, key=message.key,
                value=message.value, timestamp_ms=message.timestamp_ms,
                investigate_id=investigate_id, attempts=attempts, max_original_bytes=0,
            )  # fmt: skip
            await self._produce(self._kafka.dlq_topic, None, orjson.dumps(record))
        self._metrics.dlq.labels(reason=reason).inc()
        self.stats.dlq += 1

    async def _produce(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Send and wait for the broker's ack; retry broker trouble, never drop silently."""
        while True:
            try:
                await self._delivery.send(topic, key, value)
                return
            except MessageSizeTooLargeError as exc:
                raise _EventTooLarge(f"{len(value)} bytes refused by the broker") from exc
            except TransactionFailed:
                raise
            except KafkaError as exc:
                if self._stopping or self._settings.pipeline.exactly_once:
                    raise
                log.warning("produce failed; retrying", extra={"topic": topic, "error": repr(exc)})
                await asyncio.sleep(_PRODUCE_RETRY_S)

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        if self._settings.pipeline.exactly_once:
            only = None  # a transaction holds every partition's outputs: commit them all
        due: dict[TopicPartition, tuple[PartitionOffsets, int]] = {}

        def collect() -> dict[TopicPartition, tuple[int, str]]:
            # Offsets done beyond the commit point ride along as metadata (see offsets.py).
            offsets: dict[TopicPartition, tuple[int, str]] = {}
            for tp, tracker in self._trackers.items():
                point = tracker.commit_point
                if point is not None and tracker.needs_commit() and (only is None or tp in only):
                    offsets[tp] = (point, tracker.metadata())
                    due[tp] = (tracker, tracker.changes)
            return offsets

        try:
            committed = await self._delivery.commit(collect)
        except TransactionFailed:
            log.error("exactly-once transaction failed; stopping to restart from the last one")
            self._failed.set()
            return
        except KafkaError as exc:
            # Not skipped: the same (or a later) point is committed on the next try.
            log.warning("commit failed; will retry", extra={"error": repr(exc)})
            return
        for tp, (point, _) in committed.items():
            tracker, changes = due[tp]
            tracker.committed_at(point, changes)  # later changes still need a commit
            self._metrics.committed.labels(topic=tp.topic, partition=str(tp.partition)).set(point)

    async def _committed(self, tps: set[TopicPartition]) -> dict[TopicPartition, tuple[int, str]]:
        """The group's committed offsets and metadata; empty if they cannot be read now."""
        if not tps:
            return {}
        try:
            found = await self._admin.list_consumer_group_offsets(
                self._kafka.group_id, partitions=list(tps)
            )
        except KafkaError as exc:
            log.warning(
                "cannot read committed metadata; nothing skipped", extra={"error": repr(exc)}
            )
            return {}
        return {
            tp: (meta.offset, meta.metadata or "") for tp, meta in found.items() if meta.offset >= 0
        }

    async def _caught_up(self) -> bool:
        if self._pending or not self._assigned_once:
            return False
        if any(t.needs_commit() for t in self._trackers.values()):
            await self._commit()
            return False
        assignment = self._consumer.assignment()
        if not assignment:
            return False
        if any(len(tracker) for tracker in self._trackers.values()):
            return False  # a message that could not be finished holds its partition
        ends = await self._consumer.end_offsets(list(assignment))
        for tp in assignment:
            if await self._consumer.position(tp) < ends[tp]:
                return False
        return True

    async def _wait_for(self, tps: set[TopicPartition], timeout_s: float) -> None:
        tasks = set().union(*(self._tasks.get(tp, set()) for tp in tps)) if tps else set()
        if tasks:
            _, left = await asyncio.wait(tasks, timeout=timeout_s)
            if left:
                log.warning(
                    "grace period over; abandoning in-flight messages", extra={"count": len(left)}
                )

    async def _cancel(self, tasks: list[asyncio.Task[None]]) -> None:
        """Cancel the tasks still enriching; let those sending their output finish.

        A send ends with the broker's answer (or, while stopping, its error) within the
        producer's timeouts; past _DELIVERY_WAIT_S, broker trouble that holds it is given up
        on too (its offset stays uncommitted, and the message is repeated).
        """
        left = [task for task in tasks if not task.done()]
        if not left:
            return
        for task in left:
            if task not in self._delivering:
                task.cancel()
        _, stuck = await asyncio.wait(left, timeout=_DELIVERY_WAIT_S)
        for task in stuck:
            task.cancel()
        if stuck:
            log.warning("output sends did not finish; abandoned", extra={"count": len(stuck)})
            await asyncio.gather(*stuck, return_exceptions=True)

    async def _drain_and_commit(self) -> None:
        """On shutdown: finish what is in flight (up to the grace period), then commit."""
        self._stopping = True
        # While no call can succeed, in-flight work cannot finish: do not wait for it.
        grace = 0.0 if self._hold is not None else self._limits.shutdown_grace_s
        await self._wait_for(set(self._tasks), grace)
        await self._cancel([t for tasks in self._tasks.values() for t in tasks])
        await self._commit()

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Rebalance: give those partitions' work a moment, commit what is done, let go.

        The wait is short (the group waits for us, and work may be queued behind the rate
        budget for minutes); what is still running is cancelled and left to the next
        owner, and what finished beyond the commit point travels in the metadata.
        """
        await self._wait_for(revoked, self._limits.rebalance_grace_s)
        await self._cancel([t for tp in revoked for t in self._tasks.get(tp, ())])
        await self._commit(revoked)
        for tp in revoked:
            self._trackers.pop(tp, None)
            self._tasks.pop(tp, None)
            self._metrics.forget_partition(tp.topic, tp.partition)
        if revoked:
            log.info("partitions revoked", extra={"partitions": _names(revoked)})

    async def _load_trackers(self, tps: set[TopicPartition]) -> None:
        """Start the records of new partitions from the group's commit and its metadata."""
        committed = await self._committed(tps)
        for tp in tps:
            offset, metadata = committed.get(tp, (None, ""))
            skip = decode_done(offset, metadata) if offset is not None else frozenset()
            self._trackers[tp] = PartitionOffsets(committed=offset, skip=skip)

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Rebalance: the partitions are ours (their records start with their first batch)."""
        self._assigned_once = True
        self._update_readiness()
        log.info("partitions assigned", extra={"partitions": _names(assigned)})


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._pipeline.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._pipeline.on_assigned(set(assigned))


async def _bounded(step: Awaitable[None], timeout_s: float, what: str) -> None:
    try:
        await asyncio.wait_for(step, timeout_s)
    except TimeoutError:
        log.error(
            "shutdown step timed out; uncommitted work will be repeated", extra={"step": what}
        )
    except KafkaError as exc:
        log.error("shutdown step failed", extra={"step": what, "error": repr(exc)})


def _where(source: Source) -> dict[str, Any]:
    return {"topic": source.topic, "partition": source.partition, "offset": source.offset}


def _names(tps: set[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}[{tp.partition}]" for tp in tps)
