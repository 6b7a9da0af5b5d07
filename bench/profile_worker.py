"""Where the worker's CPU goes: py-spy on ``enrich-worker run --burst`` draining N ids.

The same setup as measure 1 of bench/run.py (real broker, simulator at zero latency in its
own process, fresh topics, budget lifted), with the worker started under ``py-spy record``
(sampling, so it costs the worker little). Prints, and writes to
bench/results/profile.txt, the share of samples per function: "self" (the function's own
code) and "total" (the function and everything it calls). bench/README.md quotes it.

py-spy is not a dependency of the project: ``.venv/bin/pip install py-spy`` first.
``PROFILE_RAW=FILE`` keeps py-spy's raw (collapsed) stacks in FILE for a closer look.

    .venv/bin/python bench/profile_worker.py [--bootstrap 127.0.0.1:19092] [--ids 10000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness as h

NO_LIMIT = {"CLOUDFLARE__BUDGET_CALLS": str(10**9), "CLOUDFLARE__BUDGET_WINDOW_S": "1"}


def summarize(collapsed: Path, top_self: int, top_total: int) -> str:
    """Self and total shares of the samples of a py-spy ``raw`` (collapsed stacks) file."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    lines = [f"{samples} samples", "", "self:"]
    lines += [f"{100 * n / samples:5.1f} %  {f[:140]}" for f, n in own.most_common(top_self)]
    lines += ["", "total (with callees):"]
    lines += [f"{100 * n / samples:5.1f} %  {f[:140]}" for f, n in total.most_common(top_total)]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("BENCH_BOOTSTRAP", "127.0.0.1:19092"))
    parser.add_argument("--ids", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=h.ROOT / "bench" / "results" / "profile.txt")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy not found: .venv/bin/pip install py-spy")
    topics = h.Topics.fresh(time.strftime("%Y%m%d-%H%M%S"), "profile")
    h.create_topics(args.bootstrap, topics)
    h.feed(args.bootstrap, topics.input, h.distinct_ids(args.ids))
    with tempfile.TemporaryDirectory() as tmp, h.Simulator("--rate-limit", "0") as sim:
        collapsed = Path(os.environ.get("PROFILE_RAW", Path(tmp) / "worker.txt"))
        argv = [py_spy, "record", "-r", str(args.rate), "-f", "raw", "-o", str(collapsed)]
        measured = h.run_measured(
            [*argv, "--", *h.ENRICH_WORKER, "run", "--burst"],
            env=h.worker_env(args.bootstrap, topics, sim, **NO_LIMIT),
            timeout_s=1800,
        )
        if measured.returncode != 0:
            raise SystemExit(f"py-spy/worker exited {measured.returncode}:\n{measured.stderr_tail}")
        span = h.topic_span(args.bootstrap, topics.output)
        head = (
            f"worker under py-spy, {span.records:,} ids at zero latency, "
            f"{span.rate():,.0f} events/s while sampled (commit {h.git_commit()})\n"
        )
        text = head + summarize(collapsed, 30, 60)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
