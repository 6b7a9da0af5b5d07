"""The budget against the simulator's rate limiter, in virtual time.

Many concurrent callers share one ``Budget``; each call is counted by the simulator's
``RateLimiter`` (the server) as it arrives, its answer is read a little later, and the
answer's ``Ratelimit`` header is fed back as the client does. Virtual time makes minutes of
calls run in a fraction of a second and repeat exactly (seeded latencies). Checked: the
server never refuses a call (we never trip the lockout), alone or beside another tool of
the same user, and alone the headers never make a call wait longer than without them.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections.abc import Awaitable

import pytest

from worker.budget import Budget
from worker.cloudflare.answers import parse_ratelimit
from worker.simulator.ratelimit import RateLimiter

pytestmark = pytest.mark.timeout(60)

ARRIVAL_S = 0.0005
MAX_READ_S = 0.03


class VirtualTime:
    """A clock and a sleep for asyncio code: time jumps to the next wake-up once every
    task is blocked, so waits cost nothing and the order of events is exact."""

    def __init__(self) -> None:
        self.now = 0.0
        self._wakes: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._wakes, (self.now + max(0.0, seconds), next(self._order), future))
        await future

    async def run(self, *work: Awaitable[None]) -> None:
        """Run ``work`` to the end, moving time forward whenever nothing else can run."""
        tasks = [asyncio.ensure_future(w) for w in work]
        while not all(t.done() for t in tasks):
            for _ in range(20):  # let every runnable task reach its next sleep
                await asyncio.sleep(0)
            if self._wakes:
                at, _, future = heapq.heappop(self._wakes)
                self.now = max(self.now, at)
                future.set_result(None)
            elif not all(t.done() for t in tasks):
                raise AssertionError("every task is blocked and nothing will wake it")
        for task in tasks:
            task.result()  # raise what a task raised


class Run:
    """The worker's calls and the server that counts them."""

    def __init__(
        self,
        vt: VirtualTime,
        *,
        limit: int,
        window_s: float,
        reserve: int,
        read_headers: bool = True,
    ) -> None:
        self.vt = vt
        self.read_headers = read_headers
        self.server = RateLimiter(limit=limit, window_s=window_s, lockout_s=300, clock=vt)
        self.budget = Budget(calls=limit - reserve, window_s=window_s, clock=vt, sleep=vt.sleep)
        self.reserve = reserve
        self.refused = 0
        self.answered: list[float] = []

    async def caller(self, calls: int, rng: random.Random) -> None:
        for _ in range(calls):
            call = await self.budget.reserve()
            # The server counts the call as it arrives; the worker reads the answer up to
            # 30 ms later (a busy event loop), and by then calls may have left the window.
            await self.vt.sleep(ARRIVAL_S)
            verdict = self.server.check()
            await self.vt.sleep(rng.uniform(0.001, MAX_READ_S))
            self.budget.settle(call)
            if not verdict.allowed:
                self.refused += 1
                continue
            self.answered.append(self.vt.now)
            if not self.read_headers:
                continue
            server = parse_ratelimit(dict(verdict.headers).get("ratelimit"))
            assert server is not None
            self.budget.observe_server_remaining(server[0], call=call, reserve=self.reserve)

    async def other_tool(self, bursts: list[tuple[float, int]]) -> None:
        """Another tool of the same user: ``count`` calls at once at each time."""
        for at, count in bursts:
            await self.vt.sleep(at - self.vt.now)
            for _ in range(count):
                assert self.server.check().allowed, "the other tool was refused: we tripped it"


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_alone_the_headers_never_hold_a_call_back_and_nothing_is_refused(
    seed: int,
) -> None:
    async def answered(*, read_headers: bool) -> list[float]:
        vt = VirtualTime()
        run = Run(vt, limit=100, window_s=10, reserve=0, read_headers=read_headers)
        rng = random.Random(seed)
        await vt.run(*(run.caller(125, rng) for _ in range(4)))  # 500 calls: 5 windows
        assert run.refused == 0
        return run.answered

    # Alone, the server counts only our calls: its figure must never make the budget wait
    # longer than the budget would by itself. Read against the window of the read instead
    # of the send, it held calls back for up to a second per window (40.8 to 41.9 s for
    # the 5 windows instead of 40.2 to 40.3).
    assert await answered(read_headers=True) == await answered(read_headers=False)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_beside_a_tool_that_spends_more_than_the_reserve_it_is_never_tripped(
    seed: int,
) -> None:
    vt = VirtualTime()
    run = Run(vt, limit=100, window_s=10, reserve=10)
    rng = random.Random(seed)
    # The other tool takes 40 calls at 0 (before us) and bursts again later; the reserve
    # leaves it 10 per window, the server's header tells us about the rest.
    bursts = [(0.0, 40), (25.0, 10), (47.5, 10)]
    await vt.run(run.other_tool(bursts), *(run.caller(20, rng) for _ in range(8)))
    assert run.refused == 0
    assert len(run.answered) == 160


async def test_beside_a_steady_tool_within_the_reserve_nobody_is_refused() -> None:
    """Another tool calls all the time, within the reserve, while 16 of our calls are in
    flight: the server's figures must show its calls to the budget, none hidden by ours."""
    vt = VirtualTime()
    run = Run(vt, limit=100, window_s=10, reserve=10)
    rng = random.Random(7)
    every = 10 / 8  # 8 calls per window
    steady = [(i * every, 1) for i in range(int(60 / every))]
    await vt.run(run.other_tool(steady), *(run.caller(30, rng) for _ in range(16)))
    assert run.refused == 0
    assert len(run.answered) == 480
