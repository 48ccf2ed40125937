"""Bounded load runners: fixed concurrency (closed loop) or fixed request rate (open loop), and the
sustained closed loop the throughput benchmark measures in windows.

Sustained throughput (`run_sustained`, `split_windows`, `window_mean`, `batch_median_ci`): a closed loop
keeps `concurrency` requests in flight, first for a warm-up (its first `warmup_requests` completions,
discarded), then, without draining (a loop started from empty runs its first wave in lock-step), over a
measured *span* that ends as soon as it has lasted `min_duration_s` or `min_requests` more requests have
finished (whichever comes first), never before every window has seen the in-flight set turn over
TURNOVERS_PER_WINDOW times on average (`span_floor_requests`), and never later than `max_duration_s`.
Nothing starts after the span; requests in flight then finish (nothing is cancelled), but what they
deliver after it (the drain) is not counted.

The span is cut into equal consecutive windows by time. A window's output tokens are the completion tokens
*streamed* in it: a request's usage count is spread evenly over its streamed chunks and each chunk counts
in the window it arrived in, so a request in flight at a boundary is split between the windows it streamed
in. A window's requests are request-equivalents counted the same way (a request's share = its tokens in the
window / its tokens); its finished requests are kept beside them. Whole requests counted where they finish
would make window rates jump by waves: with a fixed output length the requests of a closed loop finish
in near lock-step, one wave per e2e. A rate is the mean of the per-window rates (for equal windows, the
span's total over its length) with a t 95 % CI over the windows (batch means: the window is the unit,
n = windows). Latencies under load get the same unit for their median's CI (`batch_median_ci`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, TypeVar

import numpy as np

from pytest_vllmgrid.client import RequestRecord
from pytest_vllmgrid.stats import statistic_named, t_quantile

ARRIVALS = ("constant", "poisson", "gamma")  # gamma: gaps of shape `burstiness` (< 1 burstier than Poisson)
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
    stopped_by: str  # "count" or "duration" (run_sustained: "duration", "requests", "floor" or "max_duration")
    start: float | None = None  # perf_counter() at the first send
    span_start: float | None = None  # run_sustained: when the measured span began (the warm-up's end)
    span_end: float | None = None  # run_sustained: when it ended (nothing was sent after it)
    warmup_records: list[RequestRecord] = field(default_factory=list)  # run_sustained: the warm-up's requests

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
    burstiness: float = 1.0,
) -> LoadResult:
    """Send on an open-loop schedule at `rate` req/s until the count or the time is reached.

    Each record gets its planned_send_time; in-flight requests finish, nothing starts late.
    """
    _check_bounds(num_requests, max_duration_s)
    if rate <= 0:
        raise ValueError(f"rate must be > 0 requests per second, got {rate}")
    offsets = arrival_offsets(rate, arrival, seed, burstiness)
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


TURNOVERS_PER_WINDOW = 4  # a window must see the in-flight set replaced this many times, on average


def span_floor_requests(concurrency: int, windows: int) -> int:
    """Finished requests a sustained span needs whichever rule ends it: TURNOVERS_PER_WINDOW turnovers of the
    in-flight set per window. With a fixed output length the requests of a closed loop run in lock-step,
    one wave per e2e; a window holding a wave or two would swing by a wave's prefill gap, and at a high
    concurrency 200 requests (or 10 s) may be a single wave."""
    return TURNOVERS_PER_WINDOW * windows * concurrency


async def run_sustained(
    send: Send, *, concurrency: int, min_duration_s: float, min_requests: int, max_duration_s: float,
    floor_requests: int = 0, warmup_requests: int = 0,
) -> LoadResult:
    """Keep `concurrency` requests in flight: first until `warmup_requests` have finished (the warm-up, in
    `warmup_records`), then over a span (from `span_start`) that ends once it lasted `min_duration_s` or
    `min_requests` more requests finished (whichever first), but not before `floor_requests` (at least one)
    finished, and at the latest `max_duration_s` after its start (`stopped_by`: "duration", "requests",
    "floor" or "max_duration").

    The loop never drains between the warm-up and the span: a closed loop started from empty sends its
    first wave at once and runs it in lock-step, which the span should not see. Nothing starts after the
    span's end (`span_end`); requests in flight then are not cancelled, so `records` holds every request
    that finished after the warm-up and `wall_s` runs from the first send to the last response. A request's
    planned_send_time is the moment its slot became free, as in run_concurrency.
    """
    _check_bounds(min_requests, max_duration_s)
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if not min_duration_s > 0:
        raise ValueError(f"min_duration_s must be > 0, got {min_duration_s}")
    warmup: list[tuple[int, RequestRecord]] = []
    results: list[tuple[int, RequestRecord]] = []
    next_index = 0
    finished = 0
    start = 0.0
    span_start: float | None = None
    count_at: float | None = None  # when the min_requests-th request of the span finished
    floor_at: float | None = None  # when the floor_requests-th request of the span finished
    floor_requests = max(floor_requests, 1)

    def ended(now: float) -> tuple[float, str] | None:
        """The span's end and what ended it, once `now` is past it; else None."""
        if span_start is None:
            return None
        cap = span_start + max_duration_s
        if floor_at is None:
            return (cap, "max_duration") if now >= cap else None
        by_time = span_start + min_duration_s
        first, rule = (count_at, "requests") if count_at is not None and count_at < by_time else (by_time, "duration")
        end, rule = (floor_at, "floor") if floor_at > first else (first, rule)
        if end > cap:
            end, rule = cap, "max_duration"
        return (end, rule) if now >= end else None

    async def worker() -> None:
        nonlocal next_index, finished, span_start, count_at, floor_at
        free_at = start
        while ended(perf_counter()) is None:
            index = next_index
            next_index += 1
            record = await send(index)
            record.planned_send_time = free_at
            free_at = perf_counter()
            if span_start is None:
                warmup.append((index, record))
                if len(warmup) >= warmup_requests:
                    span_start = free_at
                continue
            results.append((index, record))
            if ended(free_at) is not None:
                continue  # finished in the drain: counts towards no rule
            finished += 1
            if finished == min_requests:
                count_at = free_at
            if finished == floor_requests:
                floor_at = free_at

    with _collector_frozen():
        start = perf_counter()
        if warmup_requests <= 0:
            span_start = start
        workers = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
        await _finish_all(workers)
        wall_s = perf_counter() - start
    assert span_start is not None  # the workers only stop once the span has ended
    span_end, stopped_by = ended(float("inf")) or (span_start + max_duration_s, "max_duration")
    records = [record for _, record in sorted(results, key=lambda pair: pair[0])]
    return LoadResult("concurrency", concurrency, records, wall_s, stopped_by, start=start, span_start=span_start,
                      span_end=span_end, warmup_records=[record for _, record in sorted(warmup, key=lambda p: p[0])])


@dataclass(frozen=True)
class Window:
    """One window of a sustained span: what was delivered in [start, end) (perf_counter seconds)."""

    start: float
    end: float
    tokens: float  # completion tokens streamed in the window (usage spread over the request's chunks)
    requests: float  # request-equivalents: each request's share of its tokens streamed in the window
    good_requests: float  # the same, of requests that met the SLOs
    finished: int  # successful requests whose response ended in the window

    @property
    def seconds(self) -> float:
        """The window's length."""
        return self.end - self.start

    @property
    def output_tok_s(self) -> float:
        """Completion tokens streamed per second."""
        return self.tokens / self.seconds

    @property
    def request_rate(self) -> float:
        """Request-equivalents completed per second."""
        return self.requests / self.seconds

    @property
    def goodput_req_s(self) -> float:
        """Request-equivalents that met the SLOs, per second."""
        return self.good_requests / self.seconds

    def to_dict(self, origin: float = 0.0) -> dict[str, float | int]:
        """JSON-ready: times relative to `origin`, rates per second."""
        return {"start_s": round(self.start - origin, 6), "end_s": round(self.end - origin, 6),
                "tokens": round(self.tokens, 3), "requests": round(self.requests, 3),
                "finished": self.finished, "output_tok_s": self.output_tok_s,
                "request_rate": self.request_rate, "goodput_req_s": self.goodput_req_s}


def split_windows(
    records: Sequence[RequestRecord], start: float, end: float, count: int,
    good: Callable[[RequestRecord], bool] | None = None,
) -> list[Window]:
    """Cut [start, end) into `count` equal windows and count what successful `records` delivered in each:
    a chunk's tokens (the request's completion tokens / its chunks) in the window the chunk arrived in (a
    request without chunk times: all of them at its end); tokens outside [start, end) are not counted.
    `good(record)` picks the requests that count towards goodput."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if not end > start:
        raise ValueError(f"the span must have a positive length, got [{start}, {end})")
    width = (end - start) / count
    tokens = [0.0] * count
    shares = [0.0] * count
    good_shares = [0.0] * count
    finished = [0] * count

    def slot(moment: float) -> int | None:
        if not start <= moment < end:
            return None
        return min(int((moment - start) / width), count - 1)

    for record in records:
        if not record.ok or record.end_time is None:
            continue
        is_good = good is not None and good(record)
        if (done := slot(record.end_time)) is not None:
            finished[done] += 1
        total = record.completion_tokens or 0
        times = record.chunk_times if record.chunk_times and total else [record.end_time]
        per_chunk = total / len(times)
        share = 1.0 / len(times)
        for moment in times:
            index = slot(moment)
            if index is None:
                continue
            tokens[index] += per_chunk
            shares[index] += share
            if is_good:
                good_shares[index] += share
    return [Window(start + i * width, end if i == count - 1 else start + (i + 1) * width, tokens[i], shares[i],
                   good_shares[i], finished[i]) for i in range(count)]


WINDOW_METHOD = "mean of per-window rates, t 95% CI over windows (batch means; n = windows)"


def window_mean(rates: Sequence[float]) -> tuple[float, tuple[float, float] | None]:
    """The mean of per-window rates with its t 95 % CI over windows (None with fewer than two windows).
    Rates are kept non-negative: the interval's lower end is clipped at 0."""
    if not rates:
        raise ValueError("no window")
    n = len(rates)
    mean = sum(rates) / n
    if n < 2:
        return mean, None
    sd = (sum((r - mean) ** 2 for r in rates) / (n - 1)) ** 0.5
    half = t_quantile(0.975, n - 1) * sd / n ** 0.5
    return mean, (max(0.0, mean - half), mean + half)


def by_window(records: Sequence[RequestRecord], start: float, end: float, count: int,
              moment: Callable[[RequestRecord], float | None]) -> list[list[RequestRecord]]:
    """Successful `records` grouped into the `count` equal windows of [start, end) by `moment(record)` (e.g. its
    first token time); a moment before the span counts in the first window, one after it in the last."""
    if count < 1 or not end > start:
        raise ValueError(f"need count >= 1 and a positive span, got {count} windows over [{start}, {end})")
    width = (end - start) / count
    groups: list[list[RequestRecord]] = [[] for _ in range(count)]
    for record in records:
        at = moment(record) if record.ok else None
        if at is not None:
            groups[min(max(int((at - start) / width), 0), count - 1)].append(record)
    return groups


BATCH_MEDIAN_METHOD = ("median CI: the wider of a bootstrap over requests and median +- t x SE of the per-window "
                       "medians (batch means over windows: requests of one wave are not independent)")


def batch_median_ci(point: float, groups: Sequence[Sequence[float]],
                    bootstrap: tuple[float, float] | None) -> tuple[float, float] | None:
    """A pooled median's 95 % CI with the window as the unit: `point` +- t(W-1) x sd(window medians) / sqrt(W)
    over the non-empty windows, widened to the request-level `bootstrap` interval where that is wider;
    the bootstrap interval alone with fewer than two non-empty windows."""
    medians = [float(np.median(g)) for g in groups if len(g)]
    if len(medians) < 2:
        return bootstrap
    n = len(medians)
    mean = sum(medians) / n
    sd = (sum((m - mean) ** 2 for m in medians) / (n - 1)) ** 0.5
    half = t_quantile(0.975, n - 1) * sd / n ** 0.5
    low, high = point - half, point + half
    if bootstrap is not None:
        low, high = min(low, bootstrap[0]), max(high, bootstrap[1])
    return max(low, 0.0), high


def arrival_offsets(rate: float, arrival: str, seed: int = 0, burstiness: float = 1.0) -> Iterator[float]:
    """Return planned send offsets in seconds from the run start: 0 first, then spaced by rate (gamma: gaps
    of shape `burstiness` and mean 1/rate, as vLLM bench's --burstiness; 1 is a Poisson process)."""
    if arrival not in ARRIVALS:
        raise ValueError(f"unknown arrival {arrival!r}; allowed: {', '.join(ARRIVALS)}")
    if not burstiness > 0:
        raise ValueError(f"burstiness must be > 0, got {burstiness}")
    shape = 1.0 if arrival == "poisson" else burstiness
    return _offsets(rate, None if arrival == "constant" else shape, random.Random(seed))


def _offsets(rate: float, shape: float | None, rng: random.Random) -> Iterator[float]:
    """Yield constant-spaced offsets (`shape` None), or offsets with gamma gaps of that shape and mean 1/rate
    (shape 1: exponential gaps, a Poisson process)."""
    offset = 0.0
    index = 0
    while True:
        yield offset
        index += 1
        if shape is None:
            offset = index / rate
        elif shape == 1.0:
            offset += rng.expovariate(rate)
        else:
            offset += rng.gammavariate(shape, 1.0 / (rate * shape))


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
