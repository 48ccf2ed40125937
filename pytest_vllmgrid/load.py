"""Bounded load runners: fixed concurrency (closed loop) or fixed request rate (open loop)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from time import perf_counter
from typing import Any, TypeVar

import numpy as np

from pytest_vllmgrid.client import RequestRecord
from pytest_vllmgrid.stats import statistic_named

ARRIVALS = ("constant", "poisson")
# Event-loop timers have ~1 ms granularity, so a send is paced by waking shortly before it and
# yielding to the loop in a tight loop until the moment. A Linux timerfd wakes within ~0.2 ms;
# the loop's own timers (elsewhere) need a wider, costlier spinning window.
_SPIN_WINDOW_TIMERFD_S = 0.0003
_SPIN_WINDOW_LOOP_TIMER_S = 0.002
_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = 0o4000
_TFD_CLOEXEC = 0o2000000
_TFD_TIMER_ABSTIME = 1

Send = Callable[[int], Awaitable[RequestRecord]]
T = TypeVar("T")


@dataclass
class LoadResult:
    """Records of one load run with its wall time and the load generator's own scheduling lag."""

    mode: str  # "concurrency" or "rate"
    target: float  # the concurrency or the request rate asked for
    records: list[RequestRecord]
    wall_s: float
    stopped_by: str  # "count" or "duration"

    @property
    def request_rate(self) -> float:
        """Completed requests (successful or not) per second of wall time."""
        return len(self.records) / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def output_tok_s(self) -> float:
        """Completion tokens of successful requests per second of wall time."""
        tokens = sum(r.completion_tokens or 0 for r in self.records if r.ok)
        return tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def error_count(self) -> int:
        """Number of failed requests."""
        return sum(1 for r in self.records if not r.ok)

    @property
    def lags(self) -> list[float]:
        """Per-request scheduling lag in seconds: send_time - planned_send_time."""
        return [lag for lag in (r.scheduling_lag for r in self.records) if lag is not None]

    @property
    def lag_p50_s(self) -> float | None:
        """Median scheduling lag in seconds."""
        return self._lag_statistic("p50")

    @property
    def lag_p99_s(self) -> float | None:
        """99th-percentile scheduling lag in seconds."""
        return self._lag_statistic("p99")

    @property
    def lag_max_s(self) -> float | None:
        """Largest scheduling lag in seconds."""
        lags = self.lags
        return max(lags) if lags else None

    def _lag_statistic(self, name: str) -> float | None:
        """Return a named statistic of the lags, None without any."""
        lags = self.lags
        return float(statistic_named(name)(np.asarray(lags))) if lags else None

    def summary(self) -> dict[str, Any]:
        """Return the run's figures as a JSON-ready dict (records excluded)."""
        return {
            "mode": self.mode,
            "target": self.target,
            "num_requests": len(self.records),
            "wall_s": self.wall_s,
            "stopped_by": self.stopped_by,
            "request_rate": self.request_rate,
            "output_tok_s": self.output_tok_s,
            "error_count": self.error_count,
            "lag_p50_s": self.lag_p50_s,
            "lag_p99_s": self.lag_p99_s,
            "lag_max_s": self.lag_max_s,
        }


class _Interruptible:
    """The main task of the event loop run_event_loop is running, so a signal handler can stop it gracefully."""

    task: asyncio.Task[Any] | None = None
    interrupted = False


def interrupt_running_loop() -> bool:
    """From a signal handler: cancel the running benchmark's main task so it unwinds through its `finally`s
    and closes its connections, and make run_event_loop raise KeyboardInterrupt; True when that was started.
    False when no loop runs or an interrupt is already under way (then the caller raises KeyboardInterrupt
    itself). Raising from the handler while a loop runs is not safe: it lands at an arbitrary point, and
    uvloop turns one raised inside a protocol callback into a lost connection, i.e. swallows the signal."""
    task = _Interruptible.task
    if task is None or task.done() or _Interruptible.interrupted:
        return False
    _Interruptible.interrupted = True
    task.cancel()
    task.get_loop().call_soon_threadsafe(lambda: None)  # wake a loop blocked in its selector
    return True


def run_event_loop(main: Coroutine[Any, Any, T], *, use_uvloop: bool = True) -> T:
    """Run `main` on a fresh event loop (uvloop when importable and wanted, else asyncio's); interruptible by
    interrupt_running_loop, after which it raises KeyboardInterrupt."""
    loop_factory = None
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            loop_factory = uvloop.new_event_loop

    async def tracked() -> T:
        _Interruptible.task = asyncio.current_task()
        return await main

    _Interruptible.interrupted = False
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(tracked())
    except asyncio.CancelledError:
        if _Interruptible.interrupted:
            raise KeyboardInterrupt("SIGTERM") from None
        raise
    finally:
        _Interruptible.task = None
        _Interruptible.interrupted = False


async def run_concurrency(
    send: Send, *, concurrency: int, num_requests: int, max_duration_s: float
) -> LoadResult:
    """Keep `concurrency` requests in flight until `num_requests` were sent or the time is up.

    A request's planned_send_time is the moment its slot became free, so its lag is the
    generator's own dispatch overhead. Nothing is cancelled; nothing starts after the deadline.
    """
    _check_bounds(num_requests, max_duration_s)
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    results: list[tuple[int, RequestRecord]] = []
    next_index = 0
    start = deadline = 0.0

    async def worker() -> None:
        nonlocal next_index
        free_at = start
        while next_index < num_requests and perf_counter() < deadline:
            index = next_index
            next_index += 1
            record = await send(index)
            record.planned_send_time = free_at
            results.append((index, record))
            free_at = perf_counter()

    with _collector_frozen():
        start = perf_counter()
        deadline = start + max_duration_s
        workers = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, num_requests))]
        await _finish_all(workers)
        wall_s = perf_counter() - start
    stopped_by = "count" if next_index >= num_requests else "duration"
    records = [record for _, record in sorted(results, key=lambda pair: pair[0])]
    return LoadResult("concurrency", concurrency, records, wall_s, stopped_by)


async def run_rate(
    send: Send,
    *,
    rate: float,
    num_requests: int,
    max_duration_s: float,
    arrival: str = "constant",
    seed: int = 0,
) -> LoadResult:
    """Send on an open-loop schedule at `rate` req/s until the count or the time is reached.

    Each record gets its planned_send_time; in-flight requests finish, nothing starts late.
    """
    _check_bounds(num_requests, max_duration_s)
    if rate <= 0:
        raise ValueError(f"rate must be > 0 requests per second, got {rate}")
    offsets = arrival_offsets(rate, arrival, seed)
    tasks: list[asyncio.Future[RequestRecord]] = []
    timer = _TimerFd.open()
    window = _SPIN_WINDOW_TIMERFD_S if timer is not None else _SPIN_WINDOW_LOOP_TIMER_S
    stopped_by = "count"
    with _collector_frozen():
        start = perf_counter()
        deadline = start + max_duration_s
        try:
            for index in range(num_requests):
                planned = start + next(offsets)
                if planned >= deadline:
                    stopped_by = "duration"
                    break
                # Wake a little early and let the request's own task spin to its moment, so no
                # task switch sits between the planned moment and the send.
                await _sleep_until(planned - window, timer)
                tasks.append(asyncio.ensure_future(_send_at(send, index, planned)))
        finally:
            if timer is not None:
                timer.close()
        records = await _finish_all(tasks)
        wall_s = perf_counter() - start
    return LoadResult("rate", rate, records, wall_s, stopped_by)


def arrival_offsets(rate: float, arrival: str, seed: int = 0) -> Iterator[float]:
    """Return planned send offsets in seconds from the run start: 0 first, then spaced by rate."""
    if arrival not in ARRIVALS:
        raise ValueError(f"unknown arrival {arrival!r}; allowed: {', '.join(ARRIVALS)}")
    return _offsets(rate, arrival == "poisson", random.Random(seed))


def _offsets(rate: float, poisson: bool, rng: random.Random) -> Iterator[float]:
    """Yield constant-spaced offsets, or offsets with exponential gaps (a Poisson process)."""
    offset = 0.0
    index = 0
    while True:
        yield offset
        index += 1
        offset = offset + rng.expovariate(rate) if poisson else index / rate


async def _send_at(send: Send, index: int, planned: float) -> RequestRecord:
    """Yield to the loop until `planned`, then send request `index` and stamp its planned time."""
    while perf_counter() < planned:
        await asyncio.sleep(0)
    record = await send(index)
    record.planned_send_time = planned
    return record


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _TimerFd:
    """A Linux timerfd on CLOCK_MONOTONIC (perf_counter's clock), awaited through the event loop."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")

    @staticmethod
    def open() -> _TimerFd | None:
        """Return a timer where the platform has one on perf_counter's clock, else None."""
        clock = time.get_clock_info("perf_counter").implementation
        if not sys.platform.startswith("linux") or "CLOCK_MONOTONIC)" not in clock:
            return None
        try:
            return _TimerFd()
        except (OSError, AttributeError):
            return None

    async def sleep_until(self, moment: float) -> None:
        """Return once perf_counter() has reached `moment` (kernel timer precision)."""
        seconds = int(moment)
        value = _Timespec(seconds, int((moment - seconds) * 1e9))
        spec = _Itimerspec(_Timespec(0, 0), value)
        if self._libc.timerfd_settime(self.fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")
        loop = asyncio.get_running_loop()
        fired: asyncio.Future[None] = loop.create_future()
        loop.add_reader(self.fd, self._on_fire, fired)
        try:
            await fired
        finally:
            loop.remove_reader(self.fd)

    def _on_fire(self, fired: asyncio.Future[None]) -> None:
        """Consume the expiration and wake the waiter."""
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            return
        if not fired.done():
            fired.set_result(None)

    def close(self) -> None:
        """Release the file descriptor."""
        os.close(self.fd)


async def _sleep_until(moment: float, timer: _TimerFd | None) -> None:
    """Return at about `moment`: on the timerfd when there is one, else on the loop's timer."""
    if moment <= perf_counter():
        return
    if timer is not None:
        await timer.sleep_until(moment)
    else:
        await asyncio.sleep(moment - perf_counter())


async def _finish_all(tasks: list[asyncio.Future[T]]) -> list[T]:
    """Await every task; if one fails or we are cancelled, cancel the rest and re-raise."""
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


@contextlib.contextmanager
def _collector_frozen() -> Iterator[None]:
    """Collect once, then keep existing objects out of the garbage collector during a run.

    Full collections over everything a process holds stall the loop for 20-60 ms mid-run;
    frozen, they scan only what the run allocates.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _check_bounds(num_requests: int, max_duration_s: float) -> None:
    """Reject a run that is not bounded by a positive count and a positive duration."""
    if num_requests < 1:
        raise ValueError(f"num_requests must be >= 1, got {num_requests}")
    if not max_duration_s > 0:
        raise ValueError(f"max_duration_s must be > 0, got {max_duration_s}")
