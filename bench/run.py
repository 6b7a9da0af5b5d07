"""All the benchmarks of issue 7 in one run, with a results table (``make bench``).

Six measures, each on the real Kafka broker (``--bootstrap``, default the local broker of
deploy/local/kafka.sh) and the project's simulator (``enrich-worker simulate`` in its own
process), each with fresh topics and a fresh consumer group, the worker (``enrich-worker run
--burst``), the bare loops (bench/bare.py) and the baseline (bench/baseline_worker.py) run
as measured subprocesses (bench/harness.py). Comparisons are ratios of figures measured in
the same run, because the machine is shared and noisy:

1. ``cpu``: worker CPU (user + system, whole process) per event, 100,000 ids, zero latency.
2. ``stack``: the worker's throughput (from measure 1) over the slower of a bare httpx GET
   loop (httpx as shipped) and a bare aiokafka consume->produce loop with the worker's
   concurrency; the bare GET loop over the worker's own transport is reported beside it.
3. ``baseline``: the worker's throughput over the naive SDK worker's, at 100 ms latency
   (worker with ``cloudflare.max_in_flight`` 32; the default 16 is reported beside it).
4. ``budget``: simulator limit and worker budget both 20 calls/s (20 per 1 s window);
   2,420 ids, ideally 120 s: share of the budget used, and 429s; the same rate as 1,200
   calls per 60 s is reported beside it.
5. ``memory``: peak RSS while draining a 1,000,000-id backlog at zero latency, and RSS at
   10 %, 50 %, 90 % of the run (the run is cut at ``--memory-seconds``, see bench/README.md).
6. ``dedup``: API calls per event on input where 30 % of the ids repeat an earlier one.

Writes bench/results/latest.json and bench/results/latest.md (date, commit, machine, each
measure with its target and pass/fail) and prints a progress line per step.

    .venv/bin/python bench/run.py [--bootstrap 127.0.0.1:19092] [--only cpu,dedup] [--scale 0.1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness as h

RESULTS = h.ROOT / "bench" / "results"
NO_LIMIT = {
    # The simulator's limit is off; the worker's budget is lifted the same way: a budget of
    # 10^9 calls per 1 s window never waits, and its window of send times stays small.
    "CLOUDFLARE__BUDGET_CALLS": str(10**9),
    "CLOUDFLARE__BUDGET_WINDOW_S": "1",
}


@dataclass
class Context:
    """What every step needs."""

    bootstrap: str
    run_id: str
    scale: float
    memory_seconds: float
    started: float
    shared: dict[str, Any]

    def n(self, count: int) -> int:
        """``count`` scaled for a quick run (never below 100)."""
        return max(100, round(count * self.scale))

    def say(self, text: str) -> None:
        """One progress line."""
        print(f"[{time.monotonic() - self.started:6.0f} s] {text}", flush=True)


def worker_run(
    ctx: Context,
    step: str,
    ids: list[str],
    sim: h.Simulator,
    *,
    settings: dict[str, str],
    stop_after_s: float | None = None,
    timeout_s: float = 900,
) -> tuple[h.Measured, h.Span, h.Topics]:
    """Fresh topics, feed ``ids``, run the worker in burst mode; measured."""
    topics = h.Topics.fresh(ctx.run_id, step)
    h.create_topics(ctx.bootstrap, topics)
    fed_s = h.feed(ctx.bootstrap, topics.input, ids)
    ctx.say(f"{step}: fed {len(ids):,} ids in {fed_s:.1f} s; worker running")
    env = h.worker_env(ctx.bootstrap, topics, sim, **settings)
    measured = h.run_measured(
        [*h.ENRICH_WORKER, "run", "--burst"],
        env=env,
        timeout_s=timeout_s,
        stop_after_s=stop_after_s,
    )
    if measured.returncode != 0:
        raise RuntimeError(f"{step}: the worker exited {measured.returncode}:\n"
                           f"{measured.stderr_tail}")  # fmt: skip
    span = h.topic_span(ctx.bootstrap, topics.output)
    dlq = h.topic_span(ctx.bootstrap, topics.dlq).records
    if dlq:
        raise RuntimeError(f"{step}: {dlq} DLQ records; the benchmark input must all enrich")
    return measured, span, topics


def _json_line(measured: h.Measured, what: str) -> dict[str, Any]:
    """The JSON line a bench subprocess printed; its stderr when it failed."""
    if measured.returncode != 0:
        raise RuntimeError(f"{what} exited {measured.returncode}:\n{measured.stderr_tail}")
    line: dict[str, Any] = json.loads(measured.stdout.strip().splitlines()[-1])
    return line


def result(
    name: str, title: str, value: float, unit: str, target: str, ok: bool, **details: Any
) -> dict[str, Any]:
    """One row of the table."""
    return {
        "measure": name,
        "title": title,
        "value": value,
        "unit": unit,
        "target": target,
        "pass": ok,
        "details": details,
    }


# --- the six measures -----------------------------------------------------------------------


def measure_cpu(ctx: Context) -> dict[str, Any]:
    count = ctx.n(100_000)
    with h.Simulator("--rate-limit", "0") as sim:
        measured, span, _ = worker_run(ctx, "cpu", h.distinct_ids(count), sim, settings=NO_LIMIT)
        calls = sim.stats()["requests_total"]
    if span.records != count:
        raise RuntimeError(f"cpu: {span.records} events for {count} ids")
    us = measured.cpu_s / span.records * 1e6
    ctx.shared["event_bytes"] = span.value_bytes
    return result(
        "cpu",
        "CPU per enrichment (100,000 ids, zero latency)",
        round(us, 1),
        "us/event",
        "<= 150",
        us <= 150,
        events=span.records,
        api_calls=calls,
        cpu_s=round(measured.cpu_s, 2),
        user_s=round(measured.user_s, 2),
        system_s=round(measured.system_s, 2),
        wall_s=round(measured.wall_s, 1),
        events_per_s=round(span.rate(), 1),
        peak_rss_mb=round(measured.hwm_kb / 1024, 1),
    )


STACK_ROUNDS = 3


def measure_stack(ctx: Context) -> dict[str, Any]:
    """The worker against the bare loops, in rounds that alternate who goes first.

    The machine is shared and its speed drifts between minutes, so each round measures
    the worker and both bare loops back to back on the same number of ids, and the
    headline is the median of the rounds' ratios.
    """
    count = ctx.n(20_000)
    ratios: list[float] = []
    rounds: list[dict[str, float]] = []
    with h.Simulator("--rate-limit", "0") as sim:

        def bare_http(what: str, ids: int, *flags: str) -> dict[str, Any]:
            argv = [sys.executable, "bench/bare.py", "http", "--base-url", sim.base_url]
            line = _json_line(
                h.run_measured([*argv, "--count", str(ids), *flags], timeout_s=600), what
            )
            ctx.say(f"stack: {what}: {line['rate']:,.0f} GETs/s")
            return line

        def bare_kafka(step: str) -> tuple[float, dict[str, Any]]:
            topics = h.Topics.fresh(ctx.run_id, step)
            h.create_topics(ctx.bootstrap, topics)
            h.feed(ctx.bootstrap, topics.input, h.distinct_ids(count))
            measured = h.run_measured(
                [sys.executable, "bench/bare.py", "kafka", "--bootstrap", ctx.bootstrap,
                 "--input", topics.input, "--output", topics.output, "--group", topics.group,
                 "--expect", str(count),
                 "--value-bytes", str(ctx.shared.get("event_bytes", 2300))],
                timeout_s=600,
            )  # fmt: skip
            line = _json_line(measured, "bare kafka")
            rate = h.topic_span(ctx.bootstrap, topics.output).rate()
            ctx.say(f"stack: bare aiokafka loop {rate:,.0f} records/s")
            return rate, line

        def worker(step: str) -> tuple[float, float]:
            measured, span, _ = worker_run(ctx, step, h.distinct_ids(count), sim, settings=NO_LIMIT)
            ctx.say(f"stack: worker {span.rate():,.0f} events/s")
            return span.rate(), measured.cpu_s / span.records * 1e6

        for number in range(STACK_ROUNDS):
            if number % 2:  # bare loops first every other round
                http = bare_http("bare httpx loop", count)
                kafka_rate, kafka = bare_kafka(f"bare-kafka-{number}")
                worker_rate, worker_us = worker(f"stack-worker-{number}")
            else:
                worker_rate, worker_us = worker(f"stack-worker-{number}")
                http = bare_http("bare httpx loop", count)
                kafka_rate, kafka = bare_kafka(f"bare-kafka-{number}")
            ratios.append(worker_rate / min(http["rate"], kafka_rate))
            rounds.append({
                "worker_per_s": round(worker_rate, 1),
                "worker_cpu_us_per_event": round(worker_us, 1),
                "bare_http_per_s": http["rate"],
                "bare_http_cpu_us_per_get": http["cpu_us_per_item"],
                "bare_kafka_per_s": round(kafka_rate, 1),
                "bare_kafka_cpu_us_per_record": kafka["cpu_us_per_item"],
                "ratio": round(ratios[-1], 3),
            })  # fmt: skip
            ctx.say(f"stack: round {number + 1} of {STACK_ROUNDS}: {ratios[-1]:.1%}")
        # The same GET loop over the worker's own transport: what the worker's HTTP could
        # do; and httpx's plain layout, one client of 16 connections (the worker's before
        # it split them, see bench/README.md), on a fifth of the ids.
        ours_http = bare_http("on AsyncioTransport", count, "--transport", "asyncio")
        plain_http = bare_http("one pool of 16", max(100, count // 5),
                               "--pool-size", "16")  # fmt: skip
    ratio = statistics.median(ratios)
    median_round = rounds[ratios.index(ratio)]  # an odd number of rounds: one of them
    return result(
        "stack",
        "Throughput vs the slower bare loop (httpx GETs, aiokafka consume->produce), "
        f"median of {STACK_ROUNDS} rounds",
        round(ratio, 3),
        "ratio",
        ">= 0.70",
        ratio >= 0.70,
        ratios=[round(r, 3) for r in ratios],
        rounds=rounds,
        median_round=median_round,
        bare_http_asyncio_transport_per_s=ours_http["rate"],
        bare_http_asyncio_transport_cpu_us_per_get=ours_http["cpu_us_per_item"],
        bare_http_one_pool_of_16_per_s=plain_http["rate"],
        bare_http_one_pool_of_16_cpu_us_per_get=plain_http["cpu_us_per_item"],
        count_per_round=count,
    )


def measure_baseline(ctx: Context) -> dict[str, Any]:
    latency = ("--rate-limit", "0", "--latency-ms", "100")
    with h.Simulator(*latency) as sim:
        topics = h.Topics.fresh(ctx.run_id, "baseline")
        h.create_topics(ctx.bootstrap, topics)
        count = max(50, ctx.n(300))
        h.feed(ctx.bootstrap, topics.input, h.distinct_ids(count))
        ctx.say(f"baseline: naive SDK worker on {count} ids at 100 ms")
        base = h.run_measured(
            [sys.executable, "bench/baseline_worker.py", "--bootstrap", ctx.bootstrap,
             "--input", topics.input, "--output", topics.output, "--group", topics.group,
             "--base-url", sim.base_url, "--expect", str(count)],
            timeout_s=600,
        )  # fmt: skip
        if base.returncode != 0:
            raise RuntimeError(f"baseline exited {base.returncode}:\n{base.stderr_tail}")
        base_span = h.topic_span(ctx.bootstrap, topics.output)
        if base_span.records != count:
            raise RuntimeError(f"baseline: {base_span.records} answers for {count} ids")
    ctx.say(f"baseline: {base_span.rate():.2f} messages/s")
    runs: dict[str, float] = {}
    for in_flight in (16, 32):
        with h.Simulator(*latency) as sim:
            ids = h.distinct_ids(ctx.n(2_000 * in_flight // 16))
            settings = {**NO_LIMIT, "CLOUDFLARE__MAX_IN_FLIGHT": str(in_flight)}
            _, span, _ = worker_run(
                ctx, f"baseline-worker-{in_flight}", ids, sim, settings=settings
            )
            runs[str(in_flight)] = span.rate()
        ctx.say(f"baseline: worker with max_in_flight={in_flight}: {span.rate():.1f} events/s")
    # Both workers wait on the API: the baseline for one call at a time, ours for
    # max_in_flight calls, so the ratio is about max_in_flight / (latency x baseline rate).
    # The default 16 bounds it below 20x at 100 ms; the headline is the worker with 32.
    ratio = runs["32"] / base_span.rate()
    return result(
        "baseline",
        "Throughput vs the naive SDK worker (100 ms API latency, max_in_flight 32)",
        round(ratio, 1),
        "x",
        ">= 20",
        ratio >= 20,
        baseline_per_s=round(base_span.rate(), 2),
        worker_max_in_flight_32_per_s=round(runs["32"], 1),
        worker_default_max_in_flight_16_per_s=round(runs["16"], 1),
        ratio_with_default_max_in_flight_16=round(runs["16"] / base_span.rate(), 1),
        bound_per_s="max_in_flight / latency: 160 with 16, 320 with 32",
    )


def budget_run(ctx: Context, step: str, limit: int, window: float, windows: int) -> dict[str, Any]:
    """The worker alone against the simulator's limit, its budget set to the same limit:
    ``limit * (windows + 1)`` ids, ideally ``windows`` windows from first event to last."""
    count = limit * (windows + 1)
    ideal_s = windows * window
    flags = ("--rate-limit", str(limit), "--rate-window-s", str(window), "--lockout-s", "5")
    with h.Simulator(*flags) as sim:
        settings = {
            "CLOUDFLARE__BUDGET_CALLS": str(limit),
            "CLOUDFLARE__BUDGET_WINDOW_S": str(window),
            "CLOUDFLARE__BUDGET_SAFETY": "1.0",
        }
        _, span, _ = worker_run(ctx, step, h.distinct_ids(count), sim, settings=settings)
        stats = sim.stats()
    return {
        "share": round(ideal_s / span.seconds, 4),
        "rate_limited_429s": int(stats["rate_limited_total"]),
        "lockouts": stats["lockouts_triggered"],
        "api_calls": stats["requests_total"],
        "events": span.records,
        "ids": count,
        "first_to_last_event_s": round(span.seconds, 2),
        "ideal_s": ideal_s,
    }


def measure_budget(ctx: Context) -> dict[str, Any]:
    # As the issue puts it: 20 calls per 1 s window for 120 s, 2,420 ids (the first
    # window's 20 calls go at once, then 120 windows). Each window loses the time its calls
    # take to be answered, because the budget dates a call at its answer so that it never
    # frees a call before Cloudflare does. Beside it, the same rate as 1,200 calls per 60 s:
    # few windows, but the last one's 1,200 calls take the worker ~0.8 s to make, which the
    # run loses against the ideal (bench/README.md).
    windows = max(5, round(120 * ctx.scale))
    main = budget_run(ctx, "budget", 20, 1.0, windows)
    long = budget_run(ctx, "budget-60s", 1200, 60.0, 1 if ctx.scale < 1 else 2)
    share, rejected = main.pop("share"), main["rate_limited_429s"]
    return result(
        "budget",
        f"Share of the budget used (20 calls/s as 20 per 1 s, {main['ids']:,} ids, "
        f"ideally {main['ideal_s']:.0f} s)",
        share,
        "share",
        ">= 0.99 and 0 429s",
        share >= 0.99 and rejected == 0 and long["rate_limited_429s"] == 0,
        **main,
        as_1200_per_60s=long,
    )


def measure_memory(ctx: Context) -> dict[str, Any]:
    count = ctx.n(1_000_000)
    with h.Simulator("--rate-limit", "0") as sim:
        measured, span, _ = worker_run(
            ctx,
            "memory",
            h.distinct_ids(count),
            sim,
            settings=NO_LIMIT,
            stop_after_s=ctx.memory_seconds,
            timeout_s=ctx.memory_seconds + 120,
        )
    peak_mb = measured.hwm_kb / 1024  # not ru_maxrss: see Measured.max_rss_kb
    at = {f"rss_at_{p}pct_mb": round(measured.rss_at(p / 100) / 1024, 1) for p in (10, 50, 90)}
    flat = at["rss_at_90pct_mb"] <= 1.10 * at["rss_at_50pct_mb"]
    return result(
        "memory",
        f"Peak RSS draining a {count:,}-id backlog (zero latency)",
        round(peak_mb, 1),
        "MB",
        "<= 150, flat",
        peak_mb <= 150 and flat,
        **at,
        flat_second_half=flat,
        backlog=count,
        drained=span.records,
        run_s=round(measured.wall_s, 1),
        stopped_after_s=ctx.memory_seconds if span.records < count else None,
        events_per_s=round(span.rate(), 1),
        cpu_us_per_event=round(measured.cpu_s / max(1, span.records) * 1e6, 1),
    )


def measure_dedup(ctx: Context) -> dict[str, Any]:
    count = ctx.n(20_000)
    ids = h.with_repeats(count, 0.30)
    with h.Simulator("--rate-limit", "0") as sim:
        _, span, _ = worker_run(ctx, "dedup", ids, sim, settings=NO_LIMIT)
        calls = int(sim.stats()["requests_total"])
    if span.records != count:
        raise RuntimeError(f"dedup: {span.records} events for {count} ids")
    saved = 1 - calls / count
    return result(
        "dedup",
        "API calls saved on input with 30 % repeated ids",
        round(saved, 4),
        "share of ids",
        ">= 0.25",
        saved >= 0.25,
        ids=count,
        distinct_ids=len(set(ids)),
        api_calls=calls,
        calls_per_event=round(calls / span.records, 4),
    )


MEASURES: dict[str, Callable[[Context], dict[str, Any]]] = {
    "cpu": measure_cpu,
    "stack": measure_stack,
    "baseline": measure_baseline,
    "budget": measure_budget,
    "memory": measure_memory,
    "dedup": measure_dedup,
}


# --- the report -----------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    """The results table."""
    m = report["machine"]
    lines = [
        f"Run {report['date']} on commit `{report['commit']}`: {m['cpu_model']}, "
        f"{m['cores_usable']} cores, Python {m['python']}, "
        f"{report['wall_s'] / 60:.1f} min in all.",
        "",
        "| # | measure | result | target | pass |",
        "|---|---|---|---|---|",
    ]
    for i, row in enumerate(report["results"], 1):
        lines.append(
            f"| {i} | {row['title']} | {_figure(row)} | {row['target']} | "
            f"{'yes' if row['pass'] else '**no**'} |"
        )
    lines.append("")
    for row in report["results"]:
        details = ", ".join(
            f"{k} {_detail(v)}" for k, v in row["details"].items() if _detail(v) is not None
        )
        lines.append(f"- `{row['measure']}`: {details}")
    return "\n".join(lines) + "\n"


def _detail(value: Any) -> str | None:
    """A figure as the table's notes write it; per-round lists stay in the JSON only."""
    if value is None or (isinstance(value, list) and value and isinstance(value[0], dict)):
        return None
    if isinstance(value, dict):
        return "(" + ", ".join(f"{k} {v}" for k, v in value.items()) + ")"
    return str(value)


def _figure(row: dict[str, Any]) -> str:
    value, unit = row["value"], row["unit"]
    if unit in ("share", "share of ids", "ratio"):
        text = f"{value * 100:.1f} %"
    elif unit == "x":
        text = f"{value} x"
    else:
        text = f"{value:,} {unit}"
    if row["measure"] == "budget":
        d = row["details"]
        long = d["as_1200_per_60s"]
        text += (
            f", {d['rate_limited_429s']} 429s (as 1,200 per 60 s: {long['share'] * 100:.1f} %, "
            f"{long['rate_limited_429s']} 429s)"
        )
    if row["measure"] == "memory":
        d = row["details"]
        text += (
            f" (10/50/90 %: {d['rss_at_10pct_mb']} / {d['rss_at_50pct_mb']} / "
            f"{d['rss_at_90pct_mb']} MB)"
        )
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("BENCH_BOOTSTRAP", "127.0.0.1:19092"),
        help="Kafka bootstrap servers (default $BENCH_BOOTSTRAP or 127.0.0.1:19092)",
    )
    parser.add_argument(
        "--only", default="", help="comma-separated measures: " + ",".join(MEASURES)
    )
    parser.add_argument("--scale", type=float, default=1.0, help="scale the sizes (quick runs)")
    parser.add_argument(
        "--memory-seconds",
        type=float,
        default=240.0,
        help="cut the backlog drain after this long (default 240)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(MEASURES)
    unknown = set(names) - set(MEASURES)
    if unknown:
        parser.error(f"unknown measures {sorted(unknown)}")
    ctx = Context(
        bootstrap=args.bootstrap,
        run_id=time.strftime("%Y%m%d-%H%M%S"),
        scale=args.scale,
        memory_seconds=args.memory_seconds,
        started=time.monotonic(),
        shared={},
    )
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": h.git_commit(),
        "machine": h.machine(),
        "bootstrap": args.bootstrap,
        "scale": args.scale,
        "results": [],
    }
    for name in names:
        ctx.say(f"{name}: starting")
        row = MEASURES[name](ctx)
        report["results"].append(row)
        ctx.say(f"{name}: {_figure(row)} (target {row['target']}): "
                f"{'pass' if row['pass'] else 'FAIL'}")  # fmt: skip
    report["wall_s"] = round(time.monotonic() - ctx.started, 1)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.results / "latest.md").write_text(markdown(report))
    print(markdown(report))
    ctx.say(f"wrote {args.results}/latest.json and latest.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
