"""The flags of ``enrich-worker simulate``: one per SimulatorConfig field, in groups."""

from __future__ import annotations

import argparse
from typing import cast

from worker.errors import ConfigError
from worker.simulator.config import (
    DEFAULT_TOKEN,
    FAULT_KINDS,
    LATENCY_DISTS,
    LatencyDist,
    SimulatorConfig,
    parse_fault_spec,
)

DESCRIPTION = """\
Serve a local stand-in for the Cloudflare Email Security API on HOST:PORT:

  GET /client/v4/accounts/{account}/email-security/investigate/{id}/detections
  GET /client/v4/accounts/{account}/email-security/investigate?per_page=N&cursor=C
  GET /__simulator/stats        its counters (not rate limited)
  GET|POST /__simulator/reset   zero the counters, the rate limit and the fault draws
  GET|POST /__simulator/lockout start a lockout now (as if another tool went over the limit)

Answers are deterministic per id and --seed, in Cloudflare's envelope, in both schema
shapes. Known ids are those of the catalogue (--print-ids N lists them) unless
--accept-any-id. Every call under /client/v4 passes the rate limit, then a possible fault,
then auth.
"""

EPILOG = """\
fault kinds (for --fault and --fault-id):
  json_500 json_502 json_503   that status with Cloudflare's JSON error envelope
  html_502 html_520 ... html_524
                               that status with a text/html edge error page
  reset                        the connection is aborted (TCP RST), no answer
  reset_reused                 a fresh connection is answered, then the next request
                               on it is aborted: the stale keep-alive race
  timeout                      the answer comes after --slow-s seconds
  truncate                     content-length announced, half the body sent, then close

examples:
  enrich-worker simulate --rate-limit 20 --rate-window-s 2 --lockout-s 3
  enrich-worker simulate --fault json_503=0.05 --fault reset=0.01 --latency-ms 40 \\
      --latency-dist longtail --latency-max-ms 2000
  enrich-worker simulate --fault-id "$(enrich-worker simulate --print-ids 1)=html_522*2"
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's flags to the ``simulate`` sub-parser."""
    d = SimulatorConfig()
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=18787, help="port (default 18787)")
    parser.add_argument(
        "--print-ids", type=int, metavar="N", help="print the first N known ids and exit"
    )

    g = parser.add_argument_group("payloads")
    g.add_argument("--seed", type=int, default=d.seed, help="id, payload and draw seed (default 1)")
    g.add_argument(
        "--catalog-size",
        metavar="N",
        type=int,
        default=d.catalog_size,
        help="number of known ids (default 1e6)",
    )
    g.add_argument("--accept-any-id", action="store_true", help="answer every id instead of 7003")
    g.add_argument(
        "--shape-2025-ratio",
        metavar="R",
        type=float,
        default=d.shape_2025_ratio,
        help="share of ids answered in the older 2025 schema shape (default %(default)s)",
    )
    g.add_argument(
        "--null-ratio",
        metavar="R",
        type=float,
        default=d.null_ratio,
        help="chance that a nullable field is null or an optional one absent "
        "(default %(default)s; 0 gives complete payloads)",
    )
    g.add_argument(
        "--extra-keys-ratio",
        metavar="R",
        type=float,
        default=d.extra_keys_ratio,
        help="share of ids whose payload carries keys the schema does not list "
        "(default %(default)s)",
    )
    g.add_argument(
        "--payload-variants",
        metavar="N",
        type=int,
        default=d.payload_variants,
        help="distinct payloads per schema shape, shared by the ids, each answer with its "
        "own id in its headers (default %(default)s; 0: every id its own payload, ~70 us "
        "per new id instead of a few)",
    )
    g.add_argument(
        "--unknown-status",
        type=int,
        choices=(400, 404),
        default=d.unknown_status,
        help="HTTP status for unknown ids (code 7003; default 404)",
    )

    g = parser.add_argument_group("auth")
    g.add_argument(
        "--token", default=DEFAULT_TOKEN, help="accepted Bearer token (default %(default)s)"
    )
    g.add_argument(
        "--auth-email", metavar="EMAIL", help="accepted X-Auth-Email (legacy pair; with --auth-key)"
    )
    g.add_argument(
        "--auth-key", metavar="KEY", help="accepted X-Auth-Key (legacy pair; with --auth-email)"
    )

    g = parser.add_argument_group(
        "rate limit",
        "Cloudflare's: at most N calls in any sliding window of --rate-window-s; the call\n"
        "that exceeds it blocks every call for --lockout-s with 429, code 971 and\n"
        "retry-after (calls during the block neither count nor extend it).",
    )
    g.add_argument(
        "--rate-limit",
        type=int,
        default=d.rate_limit,
        metavar="N",
        help="calls per window (default %(default)s; 0 turns the limit off)",
    )
    g.add_argument(
        "--rate-window-s",
        metavar="S",
        type=float,
        default=d.rate_window_s,
        help="window (default %(default)s)",
    )
    g.add_argument(
        "--lockout-s",
        metavar="S",
        type=float,
        default=d.lockout_s,
        help="block length (default %(default)s)",
    )
    g.add_argument(
        "--no-ratelimit-headers",
        action="store_true",
        help="do not send Ratelimit / Ratelimit-Policy on answers",
    )

    g = parser.add_argument_group("faults", "Kinds are listed below.")
    g.add_argument(
        "--fault",
        action="append",
        default=[],
        type=_fault_rate,
        metavar="KIND=RATE",
        help="probability per call of a fault kind (repeatable; seeded, so a seed gives the "
        "same sequence)",
    )
    g.add_argument(
        "--fault-id",
        action="append",
        default=[],
        type=_fault_id,
        metavar="ID=KIND[*N]",
        help="this id always gets this fault, or only its first N calls (repeatable)",
    )
    g.add_argument(
        "--slow-s",
        metavar="S",
        type=float,
        default=d.slow_s,
        help="how long a 'timeout' fault waits before answering (default %(default)s)",
    )
    g.add_argument(
        "--x-should-retry",
        choices=("true", "false"),
        help="send x-should-retry with this value on every 5xx/52x fault answer",
    )

    g = parser.add_argument_group("latency")
    g.add_argument(
        "--latency-ms",
        metavar="MS",
        type=float,
        default=0.0,
        help="fixed latency; uniform: lower bound; longtail: median (default 0)",
    )
    g.add_argument(
        "--latency-dist",
        choices=LATENCY_DISTS,
        default=d.latency_dist,
        help="fixed, uniform in [latency, max], or longtail: log-normal (default fixed)",
    )
    g.add_argument(
        "--latency-max-ms",
        metavar="MS",
        type=float,
        default=0.0,
        help="uniform: upper bound; longtail: cap, 0 for none (default 0)",
    )
    g.add_argument(
        "--latency-id",
        action="append",
        default=[],
        type=_latency_id,
        metavar="ID=MS",
        help="this id always waits MS milliseconds, whatever the distribution (repeatable)",
    )
    g.add_argument(
        "--latency-sigma",
        metavar="SIGMA",
        type=float,
        default=d.latency_sigma,
        help="longtail: shape of the log-normal; 1.0 puts p99 near 10x the median "
        "(default %(default)s)",
    )

    g = parser.add_argument_group("search")
    g.add_argument(
        "--search-202-ratio",
        metavar="R",
        type=float,
        default=d.search_202_ratio,
        help="share of search calls answered 202 + Location (default 0)",
    )
    g.add_argument(
        "--search-pending-polls",
        type=int,
        default=d.search_pending_polls,
        metavar="N",
        help="the first N calls of each distinct search answer 202 + Location (default 0)",
    )


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """The SimulatorConfig the parsed flags describe (raises ConfigError if invalid)."""
    return SimulatorConfig(
        seed=args.seed,
        catalog_size=args.catalog_size,
        accept_any_id=args.accept_any_id,
        shape_2025_ratio=args.shape_2025_ratio,
        null_ratio=args.null_ratio,
        extra_keys_ratio=args.extra_keys_ratio,
        payload_variants=args.payload_variants,
        unknown_status=args.unknown_status,
        token=args.token,
        auth_email=args.auth_email,
        auth_key=args.auth_key,
        rate_limit=args.rate_limit,
        rate_window_s=args.rate_window_s,
        lockout_s=args.lockout_s,
        ratelimit_headers=not args.no_ratelimit_headers,
        fault_rates=dict(args.fault),
        fault_by_id=dict(args.fault_id),
        slow_s=args.slow_s,
        x_should_retry=args.x_should_retry,
        latency_s=args.latency_ms / 1000,
        latency_dist=cast(LatencyDist, args.latency_dist),
        latency_max_s=args.latency_max_ms / 1000,
        latency_sigma=args.latency_sigma,
        latency_by_id=dict(args.latency_id),
        search_202_ratio=args.search_202_ratio,
        search_pending_polls=args.search_pending_polls,
    )


def _fault_rate(value: str) -> tuple[str, float]:
    kind, sep, rate = value.partition("=")
    if not sep or kind not in FAULT_KINDS:
        raise argparse.ArgumentTypeError(f"expected KIND=RATE with KIND one of {FAULT_KINDS}")
    try:
        return kind, float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"RATE must be a number, not {rate!r}") from None


def _fault_id(value: str) -> tuple[str, str]:
    investigate_id, sep, spec = value.rpartition("=")
    if not sep or not investigate_id:
        raise argparse.ArgumentTypeError("expected ID=KIND or ID=KIND*N")
    try:
        parse_fault_spec(spec)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return investigate_id, spec


def _latency_id(value: str) -> tuple[str, float]:
    investigate_id, sep, millis = value.rpartition("=")
    try:
        if not sep or not investigate_id:
            raise ValueError
        return investigate_id, float(millis) / 1000
    except ValueError:
        raise argparse.ArgumentTypeError("expected ID=MS, e.g. some-id=250") from None
