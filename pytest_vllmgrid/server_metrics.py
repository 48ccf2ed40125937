"""Scrape vLLM's Prometheus /metrics and turn two snapshots into the server's view of a run."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from pytest_vllmgrid.stats import JsonRecord

# First name present wins: vLLM renamed the V1 prefix-cache counters (gpu_ prefix dropped).
PREFIX_CACHE_QUERIES = ("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries")
PREFIX_CACHE_HITS = ("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits")
PROMPT_TOKENS_CACHED = ("vllm:prompt_tokens_cached",)
PROMPT_TOKENS = ("vllm:prompt_tokens",)
GENERATION_TOKENS = ("vllm:generation_tokens",)
REQUEST_SUCCESS = ("vllm:request_success",)
PREEMPTIONS = ("vllm:num_preemptions",)
TTFT = ("vllm:time_to_first_token_seconds",)
INTER_TOKEN_LATENCY = ("vllm:inter_token_latency_seconds",)
E2E_LATENCY = ("vllm:e2e_request_latency_seconds",)
QUEUE_TIME = ("vllm:request_queue_time_seconds",)
PREFILL_TIME = ("vllm:request_prefill_time_seconds",)
CACHE_CONFIG_INFO = "vllm:cache_config_info"
PROCESS_START = "process_start_time_seconds"

_COUNTER_SUFFIX = "_total"
_VALUE_TYPES = {"counter": ("counter", "unknown"), "gauge": ("gauge", "unknown")}


class MetricsUnavailable(Exception):
    """The server's /metrics could not be fetched or parsed."""

    def __init__(self, reason: str, url: str | None = None) -> None:
        self.reason = reason
        self.url = url
        where = f" from {url}" if url else ""
        super().__init__(f"vLLM metrics unavailable{where}: {reason}")


@dataclass(frozen=True)
class HistogramData:
    """A Prometheus histogram: cumulative (upper bound, count) buckets up to +Inf, sum, count."""

    buckets: list[tuple[float, float]]
    sum: float
    count: float

    @property
    def mean(self) -> float | None:
        """Return sum / count, or None when empty."""
        return self.sum / self.count if self.count > 0 else None

    def _locate(self, q: float) -> tuple[float, float, float, float] | None:
        """Return (lower bound, upper bound, count below, cumulative count) of q's bucket."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {q}")
        if self.count <= 0 or not self.buckets:
            return None
        rank = q * self.count
        lower, below = 0.0, 0.0
        for upper, cumulative in self.buckets:
            if cumulative >= rank:
                return lower, upper, below, cumulative
            lower, below = upper, cumulative
        return None

    def quantile(self, q: float) -> float | None:
        """Estimate the q-quantile by linear interpolation inside its bucket (Prometheus' method).

        The first bucket's lower edge is 0; a quantile in the +Inf bucket returns the highest
        finite bound. None when the histogram is empty. Only as precise as the bucket bounds.
        """
        located = self._locate(q)
        if located is None:
            return None
        lower, upper, below, cumulative = located
        inside = cumulative - below
        if math.isinf(upper) or inside <= 0:
            return lower
        return lower + (upper - lower) * (q * self.count - below) / inside

    def bucket_of(self, q: float) -> tuple[float, float] | None:
        """Return the (lower, upper] bucket bounds the q-quantile lies in: its true resolution."""
        located = self._locate(q)
        return located[:2] if located is not None else None

    def minus(self, earlier: HistogramData) -> HistogramData | None:
        """Return self - earlier bucket by bucket, or None when their bucket bounds differ."""
        bounds = [le for le, _ in self.buckets]
        if bounds != [le for le, _ in earlier.buckets]:
            return None
        return HistogramData(
            buckets=[
                (le, now - before)
                for (le, now), (_, before) in zip(self.buckets, earlier.buckets, strict=True)
            ],
            sum=self.sum - earlier.sum,
            count=self.count - earlier.count,
        )


def _labels_match(labels: dict[str, str], label_filter: dict[str, Any]) -> bool:
    """Return True when every filter label has the given value (compared as strings)."""
    return all(labels.get(key) == str(value) for key, value in label_filter.items())


@dataclass
class MetricsSnapshot:
    """Parsed metric families of one /metrics scrape, keyed by the parser's family name."""

    families: Mapping[str, Metric]
    captured_at: float

    def _family(self, name: str) -> Metric | None:
        """Find a family by name, with or without the `_total` the parser strips off counters."""
        candidates = [name]
        if name.endswith(_COUNTER_SUFFIX):
            candidates.append(name[: -len(_COUNTER_SUFFIX)])
        else:
            candidates.append(name + _COUNTER_SUFFIX)
        for candidate in candidates:
            if candidate in self.families:
                return self.families[candidate]
        return None

    def has(self, name: str) -> bool:
        """Return True when the scrape contains a family of this name."""
        return self._family(name) is not None

    def _values(self, name: str, kind: str, label_filter: dict[str, Any]) -> list[float] | None:
        """Return the values of a counter or gauge family's samples matching the filter."""
        family = self._family(name)
        if family is None:
            return None
        if family.type not in _VALUE_TYPES[kind]:
            raise ValueError(f"{name} is a {family.type}, not a {kind}")
        sample_names = {family.name, family.name + _COUNTER_SUFFIX}
        matched = [
            s.value
            for s in family.samples
            if s.name in sample_names and _labels_match(s.labels, label_filter)
        ]
        return matched or None

    def counter(self, name: str, /, **label_filter: Any) -> float | None:
        """Sum a counter over matching label sets; None when absent or nothing matches."""
        values = self._values(name, "counter", label_filter)
        return float(sum(values)) if values is not None else None

    def gauge(self, name: str, /, **label_filter: Any) -> float | None:
        """Sum a gauge over matching label sets; None when absent or nothing matches."""
        values = self._values(name, "gauge", label_filter)
        return float(sum(values)) if values is not None else None

    def histogram(self, name: str, /, **label_filter: Any) -> HistogramData | None:
        """Merge the histograms of all label sets matching the filter; None when absent."""
        family = self._family(name)
        if family is None:
            return None
        if family.type != "histogram":
            raise ValueError(f"{name} is a {family.type}, not a histogram")
        buckets: dict[float, float] = {}
        total = count = 0.0
        matched = False
        for s in family.samples:
            if not _labels_match(s.labels, label_filter):
                continue
            matched = True
            if s.name == family.name + "_bucket":
                upper = float(s.labels["le"])
                buckets[upper] = buckets.get(upper, 0.0) + s.value
            elif s.name == family.name + "_sum":
                total += s.value
            elif s.name == family.name + "_count":
                count += s.value
        if not matched:
            return None
        return HistogramData(buckets=sorted(buckets.items()), sum=total, count=count)

    def labels_of(self, name: str) -> list[dict[str, str]]:
        """Return the distinct label sets of a family's samples (without `le`)."""
        family = self._family(name)
        if family is None:
            return []
        seen: list[dict[str, str]] = []
        for s in family.samples:
            labels = {k: v for k, v in s.labels.items() if k != "le"}
            if labels not in seen:
                seen.append(labels)
        return seen

    def created(self, name: str, /, **label_filter: Any) -> float | None:
        """Return the earliest `<name>_created` timestamp of matching label sets, if exposed."""
        base = self._family(name)
        if base is None:
            return None
        created = self.families.get(base.name + "_created")
        if created is None:
            return None
        stamps = [s.value for s in created.samples if _labels_match(s.labels, label_filter)]
        return min(stamps) if stamps else None

    def cache_config(self) -> dict[str, str] | None:
        """Return the labels of vllm:cache_config_info (block_size, enable_prefix_caching, ...)."""
        label_sets = self.labels_of(CACHE_CONFIG_INFO)
        return label_sets[0] if label_sets else None


def parse_metrics(text: str, *, captured_at: float | None = None) -> MetricsSnapshot:
    """Parse Prometheus text exposition format into a snapshot.

    prometheus-client parses a family when it is first asked for: a scrape of vLLM (630 lines) costs ~14 ms
    to parse whole and a benchmark reads a dozen of its ~60 families. The text is split into families here
    the way prometheus-client's parser splits it; text this splitter does not follow line by line (quoted
    names, odd lines) is parsed whole at once, as is anything that fails to parse."""
    blocks = _split_families(text)
    families: Mapping[str, Metric] = _LazyFamilies(blocks) if blocks is not None else _parse_all(text)
    return MetricsSnapshot(
        families=families, captured_at=time.time() if captured_at is None else captured_at
    )


def _parse_all(text: str) -> dict[str, Metric]:
    """Every family of the text, same-named ones merged; MetricsUnavailable when it does not parse."""
    families: dict[str, Metric] = {}
    try:
        for family in text_string_to_metric_families(text):
            if family.name in families:
                families[family.name].samples.extend(family.samples)
            else:
                families[family.name] = family
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise MetricsUnavailable(f"unparseable exposition text: {error}") from error
    return families


# A sample line: name, optional labels, value, optional timestamp (checked loosely; the parser checks again).
_SAMPLE_LINE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?[ \t]+[^ \t]+([ \t]+[^ \t]+)?")
_SAMPLE_SUFFIXES = {"counter": ("",), "gauge": ("",), "summary": ("_count", "_sum", ""),
                    "histogram": ("_count", "_sum", "_bucket")}


def _split_families(text: str) -> dict[str, list[str]] | None:
    """Lines of each family, keyed by the name prometheus-client's text parser gives it (a counter loses
    `_total`; a sample outside its family's allowed names is a family of its own). None when a line needs
    the real parser to be understood."""
    blocks: dict[str, list[str]] = {}
    name, kind, lines, allowed = "", "untyped", [], ()

    def close() -> None:
        if name:
            key = name[: -len(_COUNTER_SUFFIX)] if kind == "counter" and name.endswith(_COUNTER_SUFFIX) else name
            blocks.setdefault(key, []).extend(lines)

    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) < 3 or parts[1] not in ("HELP", "TYPE"):
                continue
            candidate = parts[2]
            if '"' in candidate or not _SAMPLE_LINE.fullmatch(f"{candidate} 0"):
                return None
            if parts[1] == "HELP":
                if candidate != name:
                    close()
                    name, kind, lines, allowed = candidate, "untyped", [], (candidate,)
            else:
                if len(parts) < 4:
                    return None
                if candidate != name:
                    close()
                    name, lines = candidate, []
                kind = parts[3]
                allowed = tuple(name + suffix for suffix in _SAMPLE_SUFFIXES.get(kind, ("",)))
            lines.append(line)
            continue
        match = _SAMPLE_LINE.fullmatch(line)
        if match is None:
            return None
        if match.group(1) in allowed:
            lines.append(line)
        else:  # the parser yields it as an untyped family of its own
            close()
            name, kind, lines, allowed = "", "untyped", [], ()
            blocks.setdefault(match.group(1), []).append(line)
    close()
    return blocks


class _LazyFamilies(Mapping[str, Metric]):
    """Families by parser name, each parsed by prometheus-client on first access."""

    def __init__(self, blocks: dict[str, list[str]]) -> None:
        self._blocks = blocks
        self._parsed: dict[str, Metric] = {}

    def __getitem__(self, name: str) -> Metric:
        if name not in self._parsed:
            parsed = _parse_all("\n".join(self._blocks[name]) + "\n")
            if name not in parsed:
                raise MetricsUnavailable(f"unparseable exposition text: family {name!r} did not parse as itself")
            self._parsed[name] = parsed[name]
        return self._parsed[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._blocks)

    def __len__(self) -> int:
        return len(self._blocks)


def fetch_metrics(
    metrics_url: str, *, api_key: str | None = None, timeout: float = 10.0, client: httpx.Client | None = None
) -> MetricsSnapshot:
    """GET the server's /metrics and parse it; raise MetricsUnavailable on any failure. Pass a kept-alive
    `client` when scraping repeatedly."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        get = client.get if client is not None else httpx.get
        response = get(metrics_url, headers=headers, timeout=timeout, follow_redirects=True)
    except httpx.HTTPError as error:
        raise MetricsUnavailable(f"{type(error).__name__}: {error}", metrics_url) from error
    if response.status_code != 200:
        raise MetricsUnavailable(f"HTTP {response.status_code}", metrics_url)
    try:
        return parse_metrics(response.text)
    except MetricsUnavailable as error:
        raise MetricsUnavailable(error.reason, metrics_url) from error


@dataclass
class HistogramDelta:
    """Observations of a server histogram between two scrapes.

    mean_s is exact (sum / count); the quantiles are interpolated inside buckets whose bounds
    are given alongside, and are no more precise than those bounds.
    """

    count: float
    sum: float
    mean_s: float | None
    p50_s: float | None
    p90_s: float | None
    p50_bucket_s: tuple[float, float] | None
    p90_bucket_s: tuple[float, float] | None

    @classmethod
    def from_histogram(cls, histogram: HistogramData) -> HistogramDelta:
        """Summarise a (delta) histogram."""
        return cls(
            count=histogram.count,
            sum=histogram.sum,
            mean_s=histogram.mean,
            p50_s=histogram.quantile(0.5),
            p90_s=histogram.quantile(0.9),
            p50_bucket_s=histogram.bucket_of(0.5),
            p90_bucket_s=histogram.bucket_of(0.9),
        )


@dataclass
class ServerDelta(JsonRecord):
    """What the server counted between two scrapes; None where this vLLM lacks the metric."""

    interval_s: float
    prefix_cache_queries: float | None
    prefix_cache_hits: float | None
    prefix_cache_hit_rate: float | None
    prompt_tokens_cached: float | None
    prompt_tokens: float | None
    generation_tokens: float | None
    requests_finished: float | None
    requests_finished_by_reason: dict[str, float] | None
    preemptions: float | None
    ttft: HistogramDelta | None
    inter_token_latency: HistogramDelta | None
    e2e_latency: HistogramDelta | None
    queue_time: HistogramDelta | None
    prefill_time: HistogramDelta | None = None  # first scheduled -> first token, per finished request
    counter_reset: bool = False
    reset_evidence: list[str] = field(default_factory=list)


def _first_present(snapshot: MetricsSnapshot, names: tuple[str, ...]) -> str | None:
    """Return the first of the alternative names the snapshot has."""
    return next((name for name in names if snapshot.has(name)), None)


_TRACKED_COUNTERS = (
    PREFIX_CACHE_QUERIES,
    PREFIX_CACHE_HITS,
    PROMPT_TOKENS_CACHED,
    PROMPT_TOKENS,
    GENERATION_TOKENS,
    REQUEST_SUCCESS,
    PREEMPTIONS,
)
_TRACKED_HISTOGRAMS = (TTFT, INTER_TOKEN_LATENCY, E2E_LATENCY, QUEUE_TIME, PREFILL_TIME)


def _running_total(
    snapshot: MetricsSnapshot, name: str, is_histogram: bool, label_filter: dict[str, Any]
) -> float | None:
    """Return a counter's value or a histogram's observation count."""
    if not is_histogram:
        return snapshot.counter(name, **label_filter)
    histogram = snapshot.histogram(name, **label_filter)
    return histogram.count if histogram is not None else None


def _reset_evidence(
    before: MetricsSnapshot, after: MetricsSnapshot, label_filter: dict[str, Any]
) -> list[str]:
    """List signs that the server restarted between the scrapes (any one means a reset)."""
    evidence = []
    start_before, start_after = before.gauge(PROCESS_START), after.gauge(PROCESS_START)
    if start_before is not None and start_after is not None and start_after != start_before:
        evidence.append(f"{PROCESS_START} changed")
    for names in _TRACKED_COUNTERS + _TRACKED_HISTOGRAMS:
        name = _first_present(after, names)
        if name is None or not before.has(name):
            continue
        is_histogram = names in _TRACKED_HISTOGRAMS
        old_value = _running_total(before, name, is_histogram, label_filter)
        new_value = _running_total(after, name, is_histogram, label_filter)
        if old_value is not None and new_value is not None and new_value < old_value:
            evidence.append(f"{name} decreased")
            continue
        old_created = before.created(name, **label_filter)
        new_created = after.created(name, **label_filter)
        if old_created is not None and new_created is not None and new_created > old_created:
            evidence.append(f"{name} re-created")
    return evidence


def diff(before: MetricsSnapshot, after: MetricsSnapshot, /, **label_filter: Any) -> ServerDelta:
    """Return what the server counted between two scrapes, restricted to matching label sets.

    A restart between the scrapes (process start time changed, a counter decreased or a series
    was re-created) sets counter_reset and makes every delta the after-value alone.
    """
    evidence = _reset_evidence(before, after, label_filter)
    reset = bool(evidence)

    def counter_delta(names: tuple[str, ...], **labels: Any) -> float | None:
        name = _first_present(after, names)
        if name is None:
            return None
        now = after.counter(name, **label_filter, **labels)
        if now is None:
            return None
        then = None if reset else before.counter(name, **label_filter, **labels)
        return now - (then or 0.0)

    def histogram_delta(names: tuple[str, ...]) -> HistogramDelta | None:
        name = _first_present(after, names)
        now = after.histogram(name, **label_filter) if name else None
        if now is None:
            return None
        then = None if reset else before.histogram(name, **label_filter)
        delta = now if then is None else now.minus(then)
        return HistogramDelta.from_histogram(delta) if delta is not None else None

    queries = counter_delta(PREFIX_CACHE_QUERIES)
    hits = counter_delta(PREFIX_CACHE_HITS)
    success_name = _first_present(after, REQUEST_SUCCESS)
    by_reason = None
    if success_name is not None:
        reasons = sorted(
            {
                labels["finished_reason"]
                for labels in after.labels_of(success_name)
                if "finished_reason" in labels and _labels_match(labels, label_filter)
            }
        )
        by_reason = {
            reason: counter_delta(REQUEST_SUCCESS, finished_reason=reason) or 0.0
            for reason in reasons
        }
    return ServerDelta(
        interval_s=after.captured_at - before.captured_at,
        prefix_cache_queries=queries,
        prefix_cache_hits=hits,
        prefix_cache_hit_rate=hits / queries if queries and hits is not None else None,
        prompt_tokens_cached=counter_delta(PROMPT_TOKENS_CACHED),
        prompt_tokens=counter_delta(PROMPT_TOKENS),
        generation_tokens=counter_delta(GENERATION_TOKENS),
        requests_finished=counter_delta(REQUEST_SUCCESS),
        requests_finished_by_reason=by_reason,
        preemptions=counter_delta(PREEMPTIONS),
        ttft=histogram_delta(TTFT),
        inter_token_latency=histogram_delta(INTER_TOKEN_LATENCY),
        e2e_latency=histogram_delta(E2E_LATENCY),
        queue_time=histogram_delta(QUEUE_TIME),
        prefill_time=histogram_delta(PREFILL_TIME),
        counter_reset=reset,
        reset_evidence=evidence,
    )
