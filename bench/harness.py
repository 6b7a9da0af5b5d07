"""Shared pieces of the benchmarks: simulator, topics, input, measured subprocesses.

Not a benchmark itself: ``bench/run.py`` (``make bench``) uses it. Everything here talks to
real things: the local Kafka broker (``--bootstrap``), the project's simulator run as its
own process (``enrich-worker simulate``), and the subject of a measurement (the worker, a
bare loop, the baseline) run as a subprocess so that its CPU time (``os.wait4`` rusage:
user + system of that process alone) and its memory (``/proc/<pid>/status``: VmRSS sampled
while it runs, VmHWM and ``ru_maxrss`` for the peak) belong to it alone.

On a machine with two or more CPUs the simulator is pinned to the first one and the subject
to the others, the same for every subject, so that ratios compare like with like.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from worker.kafka import ensure_topics, partitions_of  # noqa: E402
from worker.simulator import API_PREFIX, DEFAULT_TOKEN, catalog_id  # noqa: E402

ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"
PARTITIONS = 3
SEED = 1
"""The simulator's seed: its catalogue of known ids depends on it."""
ENRICH_WORKER = [sys.executable, "-m", "worker"]


# --- CPUs -----------------------------------------------------------------------------------


def cpu_split() -> tuple[set[int] | None, set[int] | None]:
    """(simulator CPUs, subject CPUs), or (None, None) on a single CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def pin(pid: int, cpus: set[int] | None) -> None:
    """Pin a process to CPUs (no-op when ``cpus`` is None)."""
    if cpus:
        os.sched_setaffinity(pid, cpus)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- the simulator --------------------------------------------------------------------------


class Simulator:
    """``enrich-worker simulate`` on a free port, in its own process."""

    def __init__(self, *flags: str, seed: int = SEED) -> None:
        self.port = free_port()
        self.seed = seed
        self._flags = [*flags]
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The base URL a client is given (``.../client/v4``)."""
        return f"http://127.0.0.1:{self.port}{API_PREFIX}"

    def __enter__(self) -> Simulator:
        self._proc = subprocess.Popen(
            [
                *ENRICH_WORKER,
                "simulate",
                *("--port", str(self.port), "--seed", str(self.seed)),
                *self._flags,
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        pin(self._proc.pid, cpu_split()[0])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the simulator exited with {self._proc.returncode}")
            try:
                self.stats()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the simulator did not answer on port {self.port} within 30 s")

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def stats(self) -> dict[str, Any]:
        """The simulator's counters (``/__simulator/stats``)."""
        return self._get("/__simulator/stats")

    def reset(self) -> None:
        """Zero the counters and the rate limit."""
        self._get("/__simulator/reset")

    def _get(self, path: str) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=5) as answer:
            result: dict[str, Any] = json.loads(answer.read())
            return result


# --- topics and input -----------------------------------------------------------------------


@dataclass(frozen=True)
class Topics:
    """Fresh input, output and DLQ topics and a fresh group for one measurement."""

    input: str
    output: str
    dlq: str
    group: str

    @classmethod
    def fresh(cls, run_id: str, step: str) -> Topics:
        """Names unique to this benchmark run and step."""
        base = f"bench-{run_id}-{step}"
        return cls(f"{base}-ids", f"{base}-events", f"{base}-dlq", f"{base}-group")


def create_topics(bootstrap: str, topics: Topics) -> None:
    """Create the three topics (input and output with PARTITIONS partitions)."""
    asyncio.run(
        ensure_topics(
            bootstrap, {topics.input: PARTITIONS, topics.output: PARTITIONS, topics.dlq: 1}
        )
    )


def distinct_ids(count: int, start: int = 0) -> list[str]:
    """``count`` distinct ids the simulator (seed SEED) knows."""
    return [catalog_id(SEED, i) for i in range(start, start + count)]


def with_repeats(count: int, repeat_share: float, seed: int = 7) -> list[str]:
    """``count`` ids of which ``repeat_share`` repeat an id that came earlier in the list.

    A repeat picks uniformly among the ids already seen, so some repeat within a second of
    the first and others minutes later, as alerts about one message arrive in a SOC.
    """
    rng = random.Random(seed)
    fresh = iter(distinct_ids(count))
    seen: list[str] = []
    out: list[str] = []
    repeats = round(count * repeat_share)
    plan = [True] * repeats + [False] * (count - repeats)
    rng.shuffle(plan)
    for repeat in plan:
        if repeat and seen:
            out.append(rng.choice(seen))
        else:
            investigate_id = next(fresh)
            seen.append(investigate_id)
            out.append(investigate_id)
    return out


def message_value(investigate_id: str, index: int) -> bytes:
    """Half the inputs are bare ids, half the JSON form with a context (like the demo)."""
    if index % 2:
        return orjson.dumps({"investigate_id": investigate_id, "context": {"alert_id": index}})
    return investigate_id.encode()


def feed(bootstrap: str, topic: str, ids: Sequence[str]) -> float:
    """Produce one message per id (keyed by id); return the seconds it took."""
    return asyncio.run(_feed(bootstrap, topic, ids))


async def _feed(bootstrap: str, topic: str, ids: Sequence[str]) -> float:
    started = time.monotonic()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=20,
        max_batch_size=256 * 1024,
        compression_type=None,
    )
    await producer.start()
    try:
        pending: list[asyncio.Future[Any]] = []
        for index, investigate_id in enumerate(ids):
            pending.append(
                await producer.send(
                    topic, value=message_value(investigate_id, index), key=investigate_id.encode()
                )
            )
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.monotonic() - started


@dataclass(frozen=True)
class Span:
    """What a topic holds: records, and the first and last producer timestamps (ms)."""

    records: int
    first_ms: int
    last_ms: int
    value_bytes: int = 0
    """Mean value size of the records read (the first and last of each partition)."""

    @property
    def seconds(self) -> float:
        """From the first record produced to the last."""
        return max(1e-3, (self.last_ms - self.first_ms) / 1000)

    def rate(self) -> float:
        """Records per second between the first and the last (startup excluded)."""
        return (self.records - 1) / self.seconds if self.records > 1 else 0.0


def topic_span(bootstrap: str, topic: str) -> Span:
    """Count the records of a topic and read its first and last producer timestamps."""
    return asyncio.run(_topic_span(bootstrap, topic))


async def _topic_span(bootstrap: str, topic: str) -> Span:
    tps = [TopicPartition(topic, p) for p in await partitions_of(bootstrap, topic)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        records = sum(ends[tp] - starts[tp] for tp in tps)
        stamps: list[int] = []
        sizes: list[int] = []
        for tp in tps:
            if ends[tp] <= starts[tp]:
                continue
            for offset in (starts[tp], ends[tp] - 1):
                consumer.seek(tp, offset)
                batch = await consumer.getmany(tp, timeout_ms=10_000, max_records=1)
                for record in batch.get(tp, []):
                    stamps.append(record.timestamp)
                    sizes.append(len(record.value or b""))
        if not stamps:
            return Span(records, 0, 0)
        return Span(records, min(stamps), max(stamps), sum(sizes) // len(sizes))
    finally:
        await consumer.stop()


# --- measured subprocesses ------------------------------------------------------------------


@dataclass
class Measured:
    """A finished subprocess: exit code, wall time, CPU, memory samples, output."""

    returncode: int
    wall_s: float
    user_s: float
    system_s: float
    max_rss_kb: int
    """``ru_maxrss`` of the child. Not the subject's own peak: Linux counts in it the image
    of the forked parent (this harness, which may hold a million ids) before the exec."""
    rss_samples: list[tuple[float, int]] = field(default_factory=list)
    """(seconds since start, VmRSS kB), every ``sample_s``."""
    hwm_kb: int = 0
    """The subject's own peak RSS (VmHWM, kept by the kernel, read at each sample)."""
    stdout: str = ""
    stderr_tail: str = ""

    @property
    def cpu_s(self) -> float:
        """User + system CPU seconds of the process."""
        return self.user_s + self.system_s

    def rss_at(self, share: float) -> int:
        """VmRSS (kB) of the sample nearest to ``share`` of the run's wall time."""
        if not self.rss_samples:
            return 0
        when = share * self.wall_s
        return min(self.rss_samples, key=lambda s: abs(s[0] - when))[1]


def run_measured(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout_s: float,
    sample_s: float = 0.25,
    stop_after_s: float | None = None,
) -> Measured:
    """Run ``argv`` pinned to the subject CPUs, environment without ENRICH_* plus ``env``.

    ``stop_after_s`` sends SIGTERM after that long (for runs that do not end by themselves);
    ``timeout_s`` kills the process (and the benchmark fails) past that.
    """
    # The caller's ENRICH_* settings (or config file) must not leak into a measurement.
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ENRICH_")}
    full_env.update(env or {})
    started = time.monotonic()
    proc = subprocess.Popen(
        list(argv),
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    pin(proc.pid, cpu_split()[1])
    samples: list[tuple[float, int]] = []
    hwm = [0]
    done = threading.Event()
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []

    def sample() -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while not done.is_set():
            try:
                fields = dict(
                    line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
                )
                samples.append((time.monotonic() - started, int(fields["VmRSS"].split()[0])))
                hwm[0] = max(hwm[0], int(fields["VmHWM"].split()[0]))
            except (OSError, KeyError, ValueError):
                pass
            done.wait(sample_s)

    def drain(stream: Any, into: list[bytes]) -> None:
        for chunk in iter(lambda: stream.read(65536), b""):
            into.append(chunk)

    threads = [
        threading.Thread(target=sample, daemon=True),
        threading.Thread(target=drain, args=(proc.stdout, out_chunks), daemon=True),
        threading.Thread(target=drain, args=(proc.stderr, err_chunks), daemon=True),
    ]
    for thread in threads:
        thread.start()

    def watchdog() -> None:
        if stop_after_s is not None and not done.wait(stop_after_s):
            proc.terminate()
        if not done.wait(timeout_s - (stop_after_s or 0)):
            proc.kill()

    threading.Thread(target=watchdog, daemon=True).start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    done.set()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for thread in threads[1:]:
        thread.join(timeout=5)
    stderr = b"".join(err_chunks).decode(errors="replace")
    return Measured(
        returncode=proc.returncode,
        wall_s=wall,
        user_s=usage.ru_utime,
        system_s=usage.ru_stime,
        max_rss_kb=usage.ru_maxrss,
        rss_samples=samples,
        hwm_kb=hwm[0],
        stdout=b"".join(out_chunks).decode(errors="replace"),
        stderr_tail="\n".join(stderr.splitlines()[-20:]),
    )


def worker_env(
    bootstrap: str, topics: Topics, simulator: Simulator, **settings: str
) -> dict[str, str]:
    """ENRICH_* variables for ``enrich-worker run`` on these topics and this simulator.

    ``settings`` are extra ``SECTION__NAME=value`` pairs, e.g. ``CLOUDFLARE__MAX_IN_FLIGHT``.
    """
    env = {
        "ENRICH_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "ENRICH_KAFKA__INPUT_TOPIC": topics.input,
        "ENRICH_KAFKA__OUTPUT_TOPIC": topics.output,
        "ENRICH_KAFKA__DLQ_TOPIC": topics.dlq,
        "ENRICH_KAFKA__GROUP_ID": topics.group,
        "ENRICH_CLOUDFLARE__BASE_URL": simulator.base_url,
        "ENRICH_CLOUDFLARE__ACCOUNT_ID": ACCOUNT,
        "ENRICH_CLOUDFLARE__API_TOKEN": DEFAULT_TOKEN,
        "ENRICH_METRICS__ENABLED": "false",
        "ENRICH_LOG__LEVEL": "WARNING",
    }
    env.update({f"ENRICH_{name}": value for name, value in settings.items()})
    return env


# --- the machine ----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU model, cores, Python, OS, load."""
    model = platform.processor() or "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def git_commit() -> str:
    """HEAD's hash, with ``-dirty`` when the measured code (worker/, bench/) has changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "worker", "bench/*.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head
