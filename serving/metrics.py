"""Prometheus metrics of the prediction server, in a registry of its own.

Each server owns a `ServingMetrics` (several servers live in one test process, and the global registry
refuses a second metric of the same name). The hot path calls the thin methods below; they look up
label children in plain dicts because prometheus_client's `labels()` costs several microseconds
(argument validation, a lock, a dict keyed by a tuple of strings) on every call.

Exposed series (all prefixed `feastflow_`), every one with a `use_case` label first (one server
serves every use case; `for_use_case` binds a view of the same families to another use case).
Names follow Prometheus' conventions: base units (seconds), `_total` counters, the HTTP status
in a label named `code`:

    requests_total{endpoint,code}          counter
    request_duration_seconds{endpoint}     histogram
    stage_duration_seconds{stage}          histogram, stage: feature_fetch | inference | total
    cache_requests_total{level,result}     counter, level: l1 | l2, result: hit | miss
    fallbacks_total{level}                 counter
    variant_requests_total{variant}        counter
    errors_total{type}                     counter
    model_version_info{variant,version}    gauge, 1 for the loaded version of each variant
    shadow_total{outcome}                  counter, outcome: scored | skipped | failed
    request_log_dropped_total              counter
    circuit_state{name}                    gauge, 0 closed, 1 open, 2 half-open
    events_total{outcome}                  counter, POST /v1/events: accepted | duplicate | rejected
    stream_dead_letters                    gauge, entries in the event stream's dead-letter stream

Besides, the registry holds prometheus_client's process_* (CPU, memory, open files), python_gc_*
and python_info collectors, as the default registry would.

Several workers (`feastflow serve --workers N`): the CLI points FEASTFLOW_METRICS_MULTIPROC_DIR
and PROMETHEUS_MULTIPROC_DIR at an emptied folder before the workers start, prometheus_client
then keeps every value in per-process files there, and any worker's /metrics renders all of
them (`MultiProcessCollector`): counters and histograms sum over workers, gauges follow their
`multiprocess_mode` (below), and the per-process collectors are left out (they would describe
one random worker).

Label values must come from code, never from the request (each new value is a new time series).
"""

from __future__ import annotations

import glob
import os
import re
import threading
from typing import Any, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    multiprocess,
)

from feastflow.settings import DEFAULT_USE_CASE

STAGES: Final = ("feature_fetch", "inference", "total")
CACHE_LEVELS: Final = ("l1", "l2")
SHADOW_OUTCOMES: Final = ("scored", "skipped", "failed")
CIRCUIT_STATES: Final = {"closed": 0, "open": 1, "half_open": 2, "half-open": 2}

# Sub-millisecond resolution at the bottom: a cache hit answers in ~0.2 ms and the budget is 50 ms.
LATENCY_BUCKETS: Final = (0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03,
                          0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0)


class ServingMetrics:
    """The server's metrics with their own CollectorRegistry and cached label children."""

    registry: CollectorRegistry
    multiprocess_dir: str | None  # prometheus_client's multiprocess folder (several workers)

    def __init__(self, registry: CollectorRegistry | None = None,
                 use_case: str = DEFAULT_USE_CASE,
                 *, _families: ServingMetrics | None = None) -> None:
        self.use_case = use_case
        if _families is not None:  # a view of the same families, for another use case
            self.registry = _families.registry
            self.multiprocess_dir = _families.multiprocess_dir
            for name in _FAMILIES:
                setattr(self, name, getattr(_families, name))
        else:
            self.registry = registry if registry is not None else CollectorRegistry()
            self.multiprocess_dir = multiprocess_dir()
            self._create_families()
            if self.multiprocess_dir is None:
                _add_runtime_collectors(self.registry)
        self._create_children()

    def for_use_case(self, use_case: str) -> ServingMetrics:
        """The same series (same registry) labelled with another use case."""
        return ServingMetrics(use_case=use_case, _families=self)

    def _create_families(self) -> None:
        r = self.registry
        u = "use_case"
        self.requests = Counter("feastflow_requests", "HTTP requests answered, by endpoint and status code",
                                [u, "endpoint", "code"], registry=r)
        self.request_latency = Histogram("feastflow_request_duration_seconds", "time to answer a request",
                                         [u, "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage_latency = Histogram("feastflow_stage_duration_seconds", "time spent in a stage of predict",
                                       [u, "stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.cache_requests = Counter("feastflow_cache_requests", "cache look-ups by level and result",
                                      [u, "level", "result"], registry=r)
        self.fallbacks = Counter("feastflow_fallbacks", "answers served by a fallback, by level",
                                 [u, "level"], registry=r)
        self.variant_requests = Counter("feastflow_variant_requests", "predictions answered by each variant",
                                        [u, "variant"], registry=r)
        self.errors = Counter("feastflow_errors", "errors by type", [u, "type"], registry=r)
        # Across workers (multiprocess mode): a version is 1 if a live worker serves it, a circuit
        # is as open as its most open worker's, the dead letters are the last count read.
        self.model_version_info = Gauge("feastflow_model_version_info", "1 for the loaded model version",
                                        [u, "variant", "version"], registry=r,
                                        multiprocess_mode="livemax")
        self.shadow = Counter("feastflow_shadow", "shadow scorings by outcome", [u, "outcome"], registry=r)
        self.batch_size = Histogram("feastflow_batch_size", "requests scored together in one batch",
                                    [u], buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.request_log_dropped_total = Counter("feastflow_request_log_dropped",
                                                 "sampled predictions the request log could not keep",
                                                 [u], registry=r)
        self.circuit_state = Gauge("feastflow_circuit_state", "0 closed, 1 open, 2 half-open", [u, "name"],
                                   registry=r, multiprocess_mode="livemax")

        self.events = Counter("feastflow_events", "events received on POST /v1/events, by outcome",
                              [u, "outcome"], registry=r)
        self.stream_dead_letters = Gauge("feastflow_stream_dead_letters",
                                         "event stream entries the processor could not decode, kept "
                                         "in the dead-letter stream", [u], registry=r,
                                         multiprocess_mode="livemostrecent")

    def _create_children(self) -> None:
        # Children by label values; a miss builds the child once (dict writes are atomic under the GIL,
        # and labels() returns the same child for the same values, so a race only repeats the lookup).
        self._requests: dict[tuple[str, ...], Any] = {}
        self._request_latency: dict[tuple[str, ...], Any] = {}
        self._stage: dict[tuple[str, ...], Any] = {}
        self._cache: dict[tuple[str, ...], Any] = {}
        self._fallbacks: dict[tuple[str, ...], Any] = {}
        self._variants: dict[tuple[str, ...], Any] = {}
        self._errors: dict[tuple[str, ...], Any] = {}
        self._shadow: dict[tuple[str, ...], Any] = {}
        self._circuits: dict[tuple[str, ...], Any] = {}
        self._batch = self.batch_size.labels(self.use_case)
        self._dropped = self.request_log_dropped_total.labels(self.use_case)
        self._versions: dict[str, str] = {}
        self._versions_lock = threading.Lock()

        # Create the known series up front so they read 0 from the start (rate() needs a first sample).
        for stage in STAGES:
            _child(self._stage, self.stage_latency, self.use_case, stage)
        for level in CACHE_LEVELS:
            for result in ("hit", "miss"):
                _child(self._cache, self.cache_requests, self.use_case, level, result)
        for outcome in SHADOW_OUTCOMES:
            _child(self._shadow, self.shadow, self.use_case, outcome)

    # -- hot path ---------------------------------------------------------------------------------

    def observe_request(self, endpoint: str, code: int | str, seconds: float) -> None:
        """Count a request by endpoint and HTTP status code and observe its duration."""
        _child(self._requests, self.requests, self.use_case, endpoint, str(code)).inc()
        _child(self._request_latency, self.request_latency, self.use_case, endpoint).observe(seconds)

    def observe_stage(self, stage: str, seconds: float) -> None:
        """Observe the latency of a stage: feature_fetch, inference or total."""
        _child(self._stage, self.stage_latency, self.use_case, stage).observe(seconds)

    def cache(self, level: str, hit: bool) -> None:
        """Count a cache look-up at level l1 or l2 as a hit or a miss."""
        _child(self._cache, self.cache_requests, self.use_case, level, "hit" if hit else "miss").inc()

    def cache_many(self, level: str, hits: int, misses: int) -> None:
        """Count a batch of look-ups at one level: `hits` hits and `misses` misses."""
        if hits:
            _child(self._cache, self.cache_requests, self.use_case, level, "hit").inc(hits)
        if misses:
            _child(self._cache, self.cache_requests, self.use_case, level, "miss").inc(misses)

    def fallback(self, level: str) -> None:
        """Count an answer served by the fallback at this level."""
        _child(self._fallbacks, self.fallbacks, self.use_case, level).inc()

    def variant(self, name: str) -> None:
        """Count a prediction answered by this variant (champion, challenger, ...)."""
        _child(self._variants, self.variant_requests, self.use_case, name).inc()

    def error(self, type: str) -> None:
        """Count an error of this type (keep the set of types small and fixed)."""
        _child(self._errors, self.errors, self.use_case, type).inc()

    def shadow_outcome(self, outcome: str) -> None:
        """Count a shadow scoring as scored, skipped or failed."""
        _child(self._shadow, self.shadow, self.use_case, outcome).inc()

    def observe_batch(self, size: int) -> None:
        """Observe how many requests one micro-batch scored."""
        self._batch.observe(size)

    def request_log_dropped(self, n: int = 1) -> None:
        """Count sampled predictions the request log had to drop (fits PredictionLog's on_drop)."""
        self._dropped.inc(n)

    def count_events(self, accepted: int, duplicates: int, rejected: int) -> None:
        """Count the events of one POST /v1/events by outcome."""
        for outcome, n in (("accepted", accepted), ("duplicate", duplicates), ("rejected", rejected)):
            if n:
                self.events.labels(self.use_case, outcome).inc(n)

    # -- state ------------------------------------------------------------------------------------

    def set_model_version(self, variant: str, version: str | int) -> None:
        """Mark `version` as the one loaded for `variant`, removing the variant's previous version."""
        version = str(version)
        with self._versions_lock:  # two reloads racing must not leave two versions at 1
            old = self._versions.get(variant)
            if old is not None and old != version:
                _remove_gauge(self.model_version_info, self.use_case, variant, old)
            self.model_version_info.labels(self.use_case, variant, version).set(1)
            self._versions[variant] = version

    def clear_model_version(self, variant: str) -> None:
        """Forget the variant's version (e.g. the challenger was unloaded)."""
        with self._versions_lock:
            old = self._versions.pop(variant, None)
            if old is not None:
                _remove_gauge(self.model_version_info, self.use_case, variant, old)

    def set_circuit_state(self, name: str, state: int | str) -> None:
        """Set a circuit breaker's state: 0/"closed", 1/"open", 2/"half_open"."""
        value = CIRCUIT_STATES[state] if isinstance(state, str) else int(state)
        if value not in (0, 1, 2):
            raise ValueError(f"circuit state must be 0, 1 or 2, got {state!r}")
        _child(self._circuits, self.circuit_state, self.use_case, name).set(value)

    def set_dead_letters(self, n: int) -> None:
        """Set how many entries the event stream's dead-letter stream holds."""
        self.stream_dead_letters.labels(self.use_case).set(n)

    def render(self) -> tuple[bytes, str]:
        """The exposition text of this registry (of every worker's, in multiprocess mode) and
        its content type, for GET /metrics."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        forget_dead_workers(self.multiprocess_dir)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
        return generate_latest(registry), CONTENT_TYPE_LATEST


MULTIPROCESS_DIR_VARIABLE: Final = "FEASTFLOW_METRICS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The workers' metrics folder when `serve --workers N` set one, else None.

    Not PROMETHEUS_MULTIPROC_DIR itself: importing `feast.metrics` sets that variable to a
    temporary folder of its own in every process, which would make one server read another's.
    """
    return os.environ.get(MULTIPROCESS_DIR_VARIABLE) or None


def start_multiprocess_dir(folder: str) -> None:
    """Make `folder` the workers' metrics folder, emptied of a previous run's values (its *.db
    files: nothing else in it is touched), before any worker starts."""
    os.makedirs(folder, exist_ok=True)
    for path in glob.glob(os.path.join(folder, "*.db")):
        os.remove(path)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder  # where prometheus_client keeps values
    os.environ[MULTIPROCESS_DIR_VARIABLE] = folder


def forget_dead_workers(path: str) -> None:
    """Drop the live-mode gauges of workers that have exited (a restarted worker's old pid)."""
    pids = {int(m.group(1)) for f in glob.glob(os.path.join(path, "gauge_live*_*.db"))
            if (m := re.search(r"_(\d+)\.db$", f))}
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, path)
        except PermissionError:  # alive, another user's
            pass


def _remove_gauge(gauge: Gauge, *labels: str) -> None:
    # Zero first: in multiprocess mode the value stays in this process' file after remove().
    gauge.labels(*labels).set(0)
    gauge.remove(*labels)


_FAMILIES: Final = ("requests", "request_latency", "stage_latency", "cache_requests", "fallbacks",
                     "variant_requests", "errors", "model_version_info", "shadow", "batch_size",
                     "request_log_dropped_total", "circuit_state", "events",
                     "stream_dead_letters")


def _add_runtime_collectors(registry: CollectorRegistry) -> None:
    """Register the process, GC and platform collectors the default registry carries."""
    # The server's own registry starts empty (see the module docstring); without these the
    # dashboards lack the process' CPU, memory and file descriptors and the GC's pauses.
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)


def _child(children: dict[tuple[str, ...], Any], metric: Any, *labels: str) -> Any:
    """The metric's child for these label values, built by labels() once and then kept."""
    child = children.get(labels)
    if child is None:
        child = children[labels] = metric.labels(*labels)
    return child
