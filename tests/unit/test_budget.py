"""worker.budget.Budget on a fake clock: the sliding-window limit and the 429 lockout.

The clock and sleep are injected (see conftest.FakeClock), so the tests run instantly:
time only moves when the budget awaits its sleep. The invariant checked from the recorded
acquisition times is that no window of ``window_s`` seconds ever holds more than ``calls``
acquisitions, however many coroutines compete.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from worker.budget import Budget
from worker.cloudflare.answers import parse_ratelimit

# A budget that stops making progress would spin on the fake clock: fail fast instead.
pytestmark = pytest.mark.timeout(10)


def make(clock: Any, *, calls: int, window_s: float) -> Budget:
    return Budget(calls=calls, window_s=window_s, clock=clock, sleep=clock.sleep)


async def acquire_all(budget: Budget, clock: Any, n: int) -> list[float]:
    """Start n acquirers at once; return the clock time at which each one got through."""
    stamps: list[float] = []

    async def one() -> None:
        await budget.acquire()
        stamps.append(clock.now)

    await asyncio.gather(*(one() for _ in range(n)))
    return stamps


def assert_window_respected(stamps: list[float], calls: int, window_s: float) -> None:
    ordered = sorted(stamps)
    for i in range(len(ordered) - calls):
        assert ordered[i + calls] - ordered[i] >= window_s, (i, ordered[i], ordered[i + calls])


@pytest.mark.parametrize("window_s", [60, 0.5])
async def test_concurrent_acquirers_never_exceed_the_window(clock: Any, window_s: float) -> None:
    budget = make(clock, calls=10, window_s=window_s)
    stamps = await acquire_all(budget, clock, 50)
    assert len(stamps) == 50
    assert_window_respected(stamps, 10, window_s)
    # ...and it is not slower than needed: 10 per window, the last batch at 4 windows.
    assert sorted(stamps) == [window_s * (i // 10) for i in range(50)]


async def test_staggered_arrivals_never_exceed_the_window(clock: Any) -> None:
    rng = random.Random(7)
    budget = make(clock, calls=5, window_s=10)
    stamps: list[float] = []

    async def one(arrival: float) -> None:
        # Arrivals are binary fractions, so the clock arithmetic is exact.
        while clock.now < arrival:
            await clock.sleep(arrival - clock.now)
        await budget.acquire()
        stamps.append(clock.now)

    arrivals = [rng.randrange(0, 160) / 4 for _ in range(40)]
    await asyncio.gather(*(one(a) for a in arrivals))
    assert len(stamps) == 40
    assert_window_respected(stamps, 5, 10)


async def test_acquire_returns_seconds_waited(clock: Any) -> None:
    budget = make(clock, calls=2, window_s=30)
    assert await budget.acquire() == 0
    clock.now = 10
    assert await budget.acquire() == 0
    assert await budget.acquire() == 20  # the first call leaves the window at t=30
    assert clock.now == 30


async def test_call_leaves_window_exactly_after_window_s(clock: Any) -> None:
    budget = make(clock, calls=1, window_s=60)
    await budget.acquire()
    clock.now = 59.75
    assert budget.remaining() == 0
    clock.now = 60
    assert budget.remaining() == 1


async def test_remaining(clock: Any) -> None:
    budget = make(clock, calls=3, window_s=60)
    assert budget.remaining() == 3
    await budget.acquire()
    clock.now = 20
    await budget.acquire()
    assert budget.remaining() == 1
    clock.now = 60  # the first call expired
    assert budget.remaining() == 2
    clock.now = 80  # both expired
    assert budget.remaining() == 3
    assert clock.sleeps == []


async def test_block_for_holds_every_acquirer_until_the_block_ends(clock: Any) -> None:
    budget = make(clock, calls=100, window_s=60)
    budget.block_for(300)
    assert budget.blocked_for_s == 300
    assert budget.remaining() == 100  # blocked is not the same as spent
    stamps = await acquire_all(budget, clock, 20)
    assert min(stamps) >= 300
    assert budget.blocked_for_s == 0


async def test_block_for_only_extends(clock: Any) -> None:
    budget = make(clock, calls=10, window_s=60)
    budget.block_for(100)
    budget.block_for(10)
    assert budget.blocked_for_s == 100
    clock.now = 50
    budget.block_for(100)
    assert budget.blocked_for_s == 100  # now until 150
    clock.now = 200
    assert budget.blocked_for_s == 0


async def test_block_that_arrives_while_waiting_for_the_window_is_honoured(clock: Any) -> None:
    async def sleep_then_429(seconds: float) -> None:
        # While this caller waits for the window, another call gets a 429 for 500 s.
        if not clock.sleeps:
            budget.block_for(500)
        await clock.sleep(seconds)

    budget = Budget(calls=1, window_s=60, clock=clock, sleep=sleep_then_429)
    await budget.acquire()
    waited = await budget.acquire()
    assert clock.sleeps == [60, 440]  # woke for the window, then waited out the block
    assert waited == clock.now == 500


@pytest.mark.parametrize(("calls", "window_s"), [(0, 60), (-1, 60), (1, 0), (1, -5)])
def test_invalid_budget(calls: int, window_s: float) -> None:
    with pytest.raises(ValueError, match="budget"):
        Budget(calls=calls, window_s=window_s)


# --- the server's Ratelimit header tightens the budget -----------------------------------


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        ('"default";r=50;t=30', (50, 30.0)),
        ("default;t=7;r=0", (0, 7.0)),
        ('"burst";q=100;w=60', None),
        ("", None),
        (None, None),
    ],
)
def test_parse_ratelimit(header: str | None, parsed: tuple[int, float] | None) -> None:
    assert parse_ratelimit(header) == parsed


async def test_server_reporting_fewer_calls_left_tightens_the_budget(clock: Any) -> None:
    budget = Budget(calls=100, window_s=300, clock=clock, sleep=clock.sleep)
    for _ in range(9):
        await budget.acquire()
    call = await budget.reserve()
    assert budget.remaining() == 90
    # Another tool spent most of the user's limit (105, 5 of it left for other tools): the
    # server counted 80 calls, 10 of them ours, so 70 are another tool's.
    budget.observe_server_remaining(25, call=call, reserve=5)
    assert budget.remaining() == 20
    for _ in range(20):
        assert await budget.acquire() == 0
    # The 21st waits: another tool's calls are held a whole window at most (unless a later
    # figure frees them, see below), like ours of the same time.
    assert await budget.acquire() == pytest.approx(300)


async def test_server_reporting_more_calls_left_changes_nothing(clock: Any) -> None:
    budget = Budget(calls=100, window_s=300, clock=clock, sleep=clock.sleep)
    call = await budget.reserve()
    budget.observe_server_remaining(1000, call=call)
    assert budget.remaining() == 99


async def test_calls_sent_after_the_one_reported_on_are_not_taken_for_counted(
    clock: Any,
) -> None:
    """The server counts a call when it arrives: our calls still on their way are not in its
    figure. Taken for counted, they hid as many of another tool's calls (found by a fresh
    tester: 16 calls in flight let the worker itself trip a small limit)."""
    budget = Budget(calls=18, window_s=60, clock=clock, sleep=clock.sleep)
    first = await budget.reserve()
    for _ in range(15):  # in flight when the first answer comes back
        await budget.reserve()
    # Another tool had spent 5 of the limit of 20; the server counted those and our first.
    budget.settle(first)
    budget.observe_server_remaining(14, call=first, reserve=2)
    assert budget.remaining() == 0  # 16 of ours + 5 of another tool's: nothing left


async def test_a_later_figure_frees_what_another_tool_no_longer_spends(clock: Any) -> None:
    budget = Budget(calls=100, window_s=300, clock=clock, sleep=clock.sleep)
    call = await budget.reserve()
    budget.observe_server_remaining(50, call=call)  # 49 of another tool's calls
    assert budget.remaining() == 50
    clock.now = 30.0  # they have left the server's window
    later = await budget.reserve()
    budget.observe_server_remaining(98, call=later)  # it counts our 2 and nothing else
    assert budget.remaining() == 98


async def test_an_older_figure_than_one_already_read_is_ignored(clock: Any) -> None:
    budget = Budget(calls=100, window_s=300, clock=clock, sleep=clock.sleep)
    older = await budget.reserve()
    newer = await budget.reserve()
    budget.observe_server_remaining(98, call=newer)
    budget.observe_server_remaining(50, call=older)  # the answer that took longer
    assert budget.remaining() == 98


async def test_a_figure_counting_fewer_of_our_calls_than_we_sent_frees_nothing(
    clock: Any,
) -> None:
    """Such a count started afresh (a lockout another tool caused) or let our calls go
    sooner than we do: another tool's calls cannot be told from ours in it."""
    budget = Budget(calls=100, window_s=300, clock=clock, sleep=clock.sleep)
    for _ in range(10):
        await budget.acquire()
    call = await budget.reserve()
    budget.observe_server_remaining(79, call=call)  # 21 counted: 11 ours, 10 another's
    assert budget.remaining() == 79
    later = await budget.reserve()
    budget.observe_server_remaining(97, call=later)  # 3 counted, though we sent 12
    assert budget.remaining() == 78


async def test_after_a_lockout_calls_sent_before_it_are_not_taken_for_counted(
    clock: Any,
) -> None:
    """A lockout may end with the server's count started afresh; our calls from before it
    would otherwise hide another tool's calls made since."""
    budget = Budget(calls=100, window_s=300, clock=clock, sleep=clock.sleep)
    for _ in range(10):
        await budget.acquire()
    budget.block_for(5)
    call = await budget.reserve()
    assert clock.now == 5
    budget.observe_server_remaining(96, call=call)  # 4 counted: this call, 3 another's
    assert budget.remaining() == 100 - 11 - 3


async def test_calls_that_left_our_window_since_the_send_are_not_taken_for_another_tools(
    clock: Any,
) -> None:
    """The server's figure is from when it answered; our calls that left our window since
    then were in it. Read against the window of the read they looked like another tool's
    calls and held back as many calls as had just expired (1 % of bench measure 4)."""
    budget = Budget(calls=10, window_s=10, clock=clock, sleep=clock.sleep)
    for i in range(10):  # a full window, answered at once: 0.0, 0.1, ... 0.9
        clock.now = i / 10
        budget.settle(await budget.reserve())
    clock.now = 10.05  # the call of 0.0 has left both windows
    call = await budget.reserve()
    assert call.waited == 0
    # The server counts 0.1 ... 0.9 and this call: 0 left.
    clock.now = 10.55  # the answer is read half a second later: 0.1 ... 0.5 have expired
    budget.settle(call)
    budget.observe_server_remaining(0, call=call)
    assert budget.remaining() == 5
    # Another tool's calls are still seen: it spends 3, the server counts 0.6 ... 0.9, the
    # call of 10.05, the next one and those 3: 1 left.
    second = await budget.reserve()
    clock.now = 10.58
    budget.settle(second)
    budget.observe_server_remaining(1, call=second)
    assert budget.remaining() == 1


async def test_a_settled_call_counts_from_its_answer(clock: Any) -> None:
    """Cloudflare counts a call when it arrives; dating ours at the answer is never early."""
    budget = Budget(calls=1, window_s=60, clock=clock, sleep=clock.sleep)
    call = await budget.reserve()
    assert (call.sent_at, call.waited) == (0, 0)
    clock.now = 5.0  # the answer took 5 s
    budget.settle(call)
    waited = (await budget.reserve()).waited
    assert waited == 60  # free at 65 (answer + window), not at 60 (send + window)
    assert clock.now == 65
