"""Command line: parse arguments, build settings, call the library. Nothing else lives here."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from worker import __version__
from worker.errors import ConfigError, TransactionFailed
from worker.settings import Settings, load_settings

log = logging.getLogger("worker")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2

_DESCRIPTION = """\
Enrich Cloudflare Email Security investigate ids with their detections.

Settings come from a TOML file (--config or ENRICH_CONFIG_FILE) and ENRICH_* environment
variables (nested with __, e.g. ENRICH_KAFKA__BOOTSTRAP_SERVERS); the environment wins.
Every setting is listed in config/example.toml and the README.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``enrich-worker``."""
    parser = argparse.ArgumentParser(
        prog="enrich-worker",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--config", type=Path, help="TOML config file (default: ENRICH_CONFIG_FILE)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="consume ids from Kafka, produce enrichment events (the service)",
        description="Consume ids from kafka.input_topic, call the detections API, produce one "
        "event per id to kafka.output_topic and bad input or permanent failures to "
        "kafka.dlq_topic. Commits an offset only after its output is acknowledged. "
        "SIGTERM/SIGINT drain in-flight work (pipeline.shutdown_grace_s), commit and exit 0; "
        "a second signal exits at once (work since the last commit is repeated, not lost).",
    )
    run.add_argument(
        "--burst",
        action="store_true",
        help="exit 0 once every assigned partition is processed and committed up to its end",
    )

    enrich = sub.add_parser(
        "enrich",
        help="enrich ids without Kafka: events as JSON lines on stdout",
        description="Enrich the given ids (or lines of --input FILE, or stdin with '-') and "
        "print one event per line on stdout, in input order. Each line may be a bare id or "
        'the JSON form {"investigate_id": ..., "account_id": ..., "context": ...}. '
        "Failures are JSON lines on stderr "
        '({"investigate_id", "error", "detail"}); a progress line goes to stderr every 2 s. '
        "Exit status: 0 all enriched, 1 some failed, 2 configuration error.",
    )
    enrich.add_argument("ids", nargs="*", help="investigate ids; '-' reads stdin")
    enrich.add_argument("--input", type=Path, help="file with one id (or JSON object) per line")

    from worker.simulator import options as simulator_options

    simulate = sub.add_parser(
        "simulate",
        help="serve a local stand-in for the Cloudflare API (detections and search)",
        description=simulator_options.DESCRIPTION,
        epilog=simulator_options.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    simulator_options.add_arguments(simulate)

    sub.add_parser(
        "check",
        help="check the configuration, the topics and the API credentials, then exit",
        description="Check that credentials are configured, that the three topics exist on "
        "the broker, and (with cloudflare.account_id set) that the API accepts the "
        "credentials, with one call for an id that does not exist (it uses one call of "
        "the budget). Prints one line per check. Exit status: 0 all passed, 1 a check "
        "failed, 2 configuration error.",
    )

    health = sub.add_parser(
        "check-health",
        help="exit 0 if a running worker is live and ready (for container health checks)",
        description="Ask a running `enrich-worker run` for /healthz (liveness) and /readyz "
        "(readiness) and print one line each. Exit status: 0 both answered 200, 1 otherwise "
        "(not answering counts as failed). Without --url it asks 127.0.0.1 on metrics.port "
        "from the settings (9108 by default).",
    )
    health.add_argument("--url", help="base URL of the endpoint, e.g. http://127.0.0.1:9108")
    health.add_argument(
        "--timeout", type=float, default=3.0, help="seconds per request (default 3)"
    )

    topics = sub.add_parser(
        "create-topics",
        help="create the input, output and DLQ topics if they do not exist",
        description="Create kafka.input_topic and kafka.output_topic with --partitions "
        "partitions and kafka.dlq_topic with one, if they do not exist yet (existing topics "
        "are left as they are). For development and small clusters; production clusters "
        "usually manage topics with their own tooling.",
    )
    topics.add_argument("--partitions", type=int, default=3, help="partitions (default 3)")
    topics.add_argument(
        "--replication-factor", type=int, default=1, help="replication factor (default 1)"
    )

    redrive = sub.add_parser(
        "redrive",
        help="re-publish DLQ records to the input topic (after fixing their cause)",
        description="Read kafka.dlq_topic from its beginning to its current end and "
        "re-publish the original key and value of each matching record to "
        "kafka.input_topic, with a header enrich-redriven-from naming its DLQ position. "
        "Paced by the rate budget (cloudflare.budget_calls per budget_window_s, times "
        "budget_safety), since each re-published id will cost one API call. Prints a "
        "progress line every 2 s and a summary; exit 0.",
    )
    redrive.add_argument(
        "--reason",
        action="append",
        default=[],
        help="only records with this reason (repeatable), e.g. not_found, retries_exhausted",
    )
    redrive.add_argument(
        "--since", type=_timestamp, help="only records that failed at or after this ISO time"
    )
    redrive.add_argument(
        "--until", type=_timestamp, help="only records that failed before this ISO time"
    )
    redrive.add_argument("--limit", type=int, help="re-publish at most this many")
    redrive.add_argument(
        "--dry-run", action="store_true", help="count the matching records, publish nothing"
    )

    demo = sub.add_parser(
        "demo",
        help="simulator + local broker + worker on sample ids, then a summary",
        description="Start the simulator in-process, create demo topics on the configured "
        "broker, feed sample ids, run the worker until they are all enriched and committed, "
        "and print the counts, one event and how to read the rest.",
    )
    demo.add_argument("--count", type=int, default=1000, help="ids to feed (default 1000)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``enrich-worker``."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "simulate":
            return _simulate(args)
        if args.command == "check-health":
            return _check_health(args)
        settings = load_settings(args.config)
        from worker.observability import setup_logging

        # One-shot and demo write their results on stdout; their logs go to stderr.
        stream = sys.stdout if args.command == "run" else sys.stderr
        setup_logging(level=settings.log.level, fmt=settings.log.format, stream=stream)
        if args.command == "run":
            return asyncio.run(_run(settings, burst=args.burst))
        if args.command == "create-topics":
            return asyncio.run(_create_topics(settings, args.partitions, args.replication_factor))
        if args.command == "redrive":
            return asyncio.run(_redrive(settings, args))
        if args.command == "check":
            return asyncio.run(_check(settings))
        if args.command == "enrich":
            return asyncio.run(_enrich(settings, args.ids, args.input))
        if args.command == "demo":
            from worker.demo import run_demo

            # A broker that just started answers the first requests with transient errors
            # that aiokafka logs and retries; the demo checks its own result instead.
            if settings.log.level != "DEBUG":
                logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

            return asyncio.run(run_demo(settings, count=args.count, out=sys.stdout))
    except ConfigError as exc:
        print(f"enrich-worker: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unhandled command {args.command}")


async def _run(settings: Settings, *, burst: bool) -> int:
    from worker.service import run_worker

    settings.cloudflare.require_credentials()
    stop = asyncio.Event()
    _install_signal_handlers(stop)
    try:
        stats = await run_worker(settings, stop=stop, burst=burst)
    except TransactionFailed as exc:
        # Exit non-zero so that the orchestrator restarts us from the last transaction.
        log.error("stopping: %s; restart to resume from the last committed transaction", exc)
        return EXIT_FAILED
    log.info(
        "worker stopped",
        extra={"consumed": stats.consumed, "produced": stats.produced, "dlq": stats.dlq},
    )
    return EXIT_OK


def _install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            # Second signal: leave now. Nothing is lost, uncommitted work is repeated.
            os._exit(128 + signum)
        log.info("signal received; draining", extra={"signal": signal.Signals(signum).name})
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


async def _create_topics(settings: Settings, partitions: int, replication_factor: int) -> int:
    from worker.kafka import ensure_topics

    kafka = settings.kafka
    wanted = {kafka.input_topic: partitions, kafka.output_topic: partitions, kafka.dlq_topic: 1}
    created = await ensure_topics(
        kafka.bootstrap_servers, wanted, replication_factor=replication_factor
    )
    for topic in wanted:
        print(f"{topic}: {'created' if topic in created else 'exists'}")
    return EXIT_OK


def _timestamp(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO time such as 2026-12-03T10:00:00Z"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


async def _redrive(settings: Settings, args: argparse.Namespace) -> int:
    from worker.redrive import RedriveFilter, RedriveStats, redrive

    def show(stats: RedriveStats, final: bool = False) -> None:
        done = "re-published to" if not args.dry_run else "dry run: nothing re-published to"
        print(
            f"redrive {'done' if final else 'progress'}: {stats.read} read, "
            f"{stats.matched} matched, {stats.published} {done} "
            f"{settings.kafka.input_topic}, {stats.unreadable} unreadable",
            file=sys.stderr,
            flush=True,
        )
        if final and args.reason and not stats.matched and stats.read:
            seen = ", ".join(f"{r} ({n})" for r, n in stats.reasons.most_common())
            print(f"redrive: no record has reason {', '.join(args.reason)}; the DLQ holds: "
                  f"{seen}", file=sys.stderr)  # fmt: skip

    selection = RedriveFilter(reasons=args.reason, since=args.since, until=args.until)
    stats = await redrive(
        settings, selection, dry_run=args.dry_run, limit=args.limit, progress=show
    )
    show(stats, final=True)
    return EXIT_OK


async def _check(settings: Settings) -> int:
    from worker.preflight import run_checks

    results = await run_checks(settings)
    for result in results:
        print(f"{'ok  ' if result.ok else 'FAIL'} {result.name}: {result.detail}")
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


def _check_health(args: argparse.Namespace) -> int:
    """Fast and dependency-free: stdlib HTTP, no logging setup, settings only for the port."""
    import urllib.error
    import urllib.request

    url = args.url
    if url is None:
        try:
            port = load_settings(args.config).metrics.port
        except ConfigError:
            port = 9108  # the health check must not fail on a setting the worker would refuse
        url = f"http://127.0.0.1:{port}"
    if not url.startswith(("http://", "https://")):
        print(f"FAIL --url {url!r}: give an http:// or https:// URL")
        return EXIT_FAILED
    healthy = True
    for path in ("/healthz", "/readyz"):
        try:
            with urllib.request.urlopen(  # noqa: S310 (the scheme is checked above)
                url.rstrip("/") + path, timeout=args.timeout
            ) as answer:
                status, text = answer.status, answer.read(200).decode(errors="replace")
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read(200).decode(errors="replace")
        except (OSError, ValueError) as exc:
            status, text = 0, f"no answer from {url} ({exc})"
        healthy = healthy and status == 200
        print(f"{'ok  ' if status == 200 else 'FAIL'} {path}: {text.strip() or status}")
    return EXIT_OK if healthy else EXIT_FAILED


async def _enrich(settings: Settings, ids: list[str], input_file: Path | None) -> int:
    from prometheus_client import CollectorRegistry

    from worker.enricher import HOLD_AUTH, open_enricher
    from worker.observability import Metrics
    from worker.oneshot import enrich_lines

    if not ids and input_file is None:
        raise ConfigError("give ids, --input FILE, or '-' to read stdin")
    metrics = Metrics(CollectorRegistry())
    async with open_enricher(settings.cloudflare, metrics) as enricher:
        work = asyncio.ensure_future(
            enrich_lines(
                _lines(ids, input_file),
                enricher,
                default_account_id=settings.cloudflare.account_id,
                max_bytes=settings.pipeline.max_message_bytes,
                window=settings.cloudflare.max_in_flight * 4,
                out=sys.stdout.buffer,
                err=sys.stderr,
            )
        )
        # A service holds every call while the credentials are refused or the API is down,
        # and waits; a playbook waiting on one-shot mode wants an answer, so it stops.
        held = asyncio.ensure_future(enricher.held_for_good())
        try:
            await asyncio.wait({work, held}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, held):
                task.cancel()
            await asyncio.gather(work, held, return_exceptions=True)
        if not work.cancelled():
            stats = work.result()  # re-raises what ended the work, if anything did
            return EXIT_OK if stats.failed == 0 else EXIT_FAILED
        if held.result() == HOLD_AUTH:
            raise ConfigError(
                "Cloudflare refused the credentials (401/403): check the token and its "
                "permission 'Cloud Email Security: Read'; the ids after the "
                "first refused one were not tried"
            )
        print(
            "enrich: the Cloudflare API does not answer (many failed calls in a row): check "
            "cloudflare.base_url and the network; the ids not reported were not enriched",
            file=sys.stderr,
        )
        return EXIT_FAILED


async def _lines(ids: list[str], input_file: Path | None) -> AsyncIterator[str]:
    for value in ids:
        if value == "-":
            # Bytes, decoded as --input FILE is: a line that is not UTF-8 becomes an invalid
            # id with a failure line, and the lines after it are still enriched.
            while raw := await asyncio.to_thread(sys.stdin.buffer.readline):
                yield raw.decode("utf-8", errors="replace")
        else:
            yield value
    if input_file is not None:
        try:
            handle = input_file.open(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise ConfigError(f"cannot read --input {input_file}: {exc.strerror}") from None
        with handle:
            for line in handle:
                yield line


def _simulate(args: argparse.Namespace) -> int:
    from worker.httpserver import serve
    from worker.simulator import Simulator, catalog_id
    from worker.simulator.options import config_from_args

    if args.print_ids is not None:
        for i in range(args.print_ids):
            print(catalog_id(args.seed, i))
        return EXIT_OK
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"enrich-worker: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    async def serve_forever() -> None:
        try:
            server = await serve(Simulator(config), host=args.host, port=args.port)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
        print(
            f"simulator: serving http://{args.host}:{args.port}/client/v4 (seed {args.seed}; "
            f"rate limit {_rate_limit_text(config.rate_limit, config.rate_window_s)}; "
            f"faults {dict(config.fault_rates) or 'none'}); stats at /__simulator/stats",
            file=sys.stderr,
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        async with server:
            await stop.wait()

    try:
        asyncio.run(serve_forever())
    except ConfigError as exc:
        print(f"enrich-worker: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK


def _rate_limit_text(limit: int, window_s: float) -> str:
    return f"{limit} calls per {window_s:g} s" if limit else "off"
