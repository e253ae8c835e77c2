"""The prediction service: route, cache, batch, score, fall back, log. Runs on the event loop.

A request goes: sticky A/B variant -> L1 prediction cache -> micro-batch (requests that arrive
together share one pipelined online read per stage and one model call) -> ranker, within the
latency budget and behind circuit breakers. When features or the model fail or are slow the
answer comes from the fallback chain, never an error:

    cache (a stale L1 entry) -> user_hour (precomputed bundle) -> popular_at_hour (in memory)
    -> static_default (the spec's list)

A per-event use case (classification, regression: `EventService`) answers one value per request;
its L1 cache is off unless the spec turns it on, and then keyed on the whole request (entity,
time, context). Its fallback chain is: cache (a stale L1 entry) -> static_default (the spec's
`serving.default`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from feastflow.errors import CircuitOpen
from feastflow.online import OnlineReader, OnlineStoreError, Row, ViewLayout
from feastflow.retrieval_scoring import RetrievalRanker
from feastflow.scoring import (
    EventScorer,
    Ranker,
    Scored,
    ScoreRequest,
    hour_of_day,
    hourly_requests,
)
from feastflow.spec import DecisionSpec, ModelSpec
from serving.metrics import ServingMetrics
from serving.models import ModelHolder, ServedModel
from serving.request_log import PredictionLog
from serving.resilience import (
    CircuitBreaker,
    CircuitState,
    TTLCache,
    describe,
    in_shadow_sample,
    variant_for,
)
from serving.settings import ServingSettings

log = logging.getLogger(__name__)


@dataclass
class Answer:
    """What the server answers for one request."""

    items: list[str]
    scores: list[float]
    variant: str
    model_version: str | None
    known_user: bool | None  # None: a fallback answered that cannot tell
    fallback: str | None = None
    cached: bool = False
    scored: Scored | None = field(default=None, repr=False)
    decision: str | None = None  # a classifier's answer in words (spec.serving.decision)
    titles: list[str] | None = None  # the items' titles (a use case with a catalogue)


class CachedReader:
    """The online reader behind the L2 feature cache, a timeout and a circuit breaker.

    Only views fed by batch sources are cached: real-time (push) views must stay fresh.
    """

    def __init__(self, reader: OnlineReader, cache: TTLCache[Row], breaker: CircuitBreaker,
                 timeout_s: float, metrics: ServingMetrics) -> None:
        self.reader = reader
        self.cache = cache
        self.breaker = breaker
        self.timeout_s = timeout_s
        self.metrics = metrics

    async def read(self, reads: Sequence[tuple[ViewLayout, Sequence[Sequence[Any]]]]
                   ) -> list[list[Row]]:
        """Rows from the cache where fresh, the rest in one round trip to the store."""
        cache = self.cache
        out: list[list[Row | None]] = []
        missing: list[tuple[ViewLayout, list[Sequence[Any]]]] = []
        slots: list[tuple[int, list[int]]] = []
        hits = misses = 0
        for index, (view, keys) in enumerate(reads):
            if not cache.enabled or view.realtime:
                out.append([None] * len(keys))
                missing.append((view, list(keys)))
                slots.append((index, list(range(len(keys)))))
                continue
            name = view.name
            rows = cache.get_many([(name, key) for key in keys])
            positions = [position for position, row in enumerate(rows) if row is None]
            wanted = [keys[position] for position in positions]
            hits += len(keys) - len(wanted)
            misses += len(wanted)
            out.append(rows)
            if wanted:
                missing.append((view, wanted))
                slots.append((index, positions))
        if cache.enabled:
            self.metrics.cache_many("l2", hits, misses)
        if missing:
            fetched = await self._fetch(missing)
            for (view, keys), (index, positions), found in zip(missing, slots, fetched, strict=True):
                cacheable = cache.enabled and not view.realtime
                for key, position, row in zip(keys, positions, found, strict=True):
                    out[index][position] = row
                    if cacheable:
                        cache.put((view.name, key), row)
        return out  # type: ignore[return-value]

    async def _fetch(self, reads: Sequence[tuple[ViewLayout, Sequence[Sequence[Any]]]]
                     ) -> list[list[Row]]:
        if not self.breaker.allow():
            raise CircuitOpen(f"online store circuit open: {self.breaker.last_error}")
        try:
            rows = await asyncio.wait_for(self.reader.read(reads), self.timeout_s)
        except asyncio.CancelledError:
            self.breaker.failure("read cancelled")  # an unfinished trial must not wedge it
            raise
        except (OnlineStoreError, TimeoutError, OSError) as e:
            self.breaker.failure(e)
            if self.breaker.state == CircuitState.OPEN and hasattr(self.reader, "reset"):
                self.reader.reset()  # a hung connection would hold every later read
            if isinstance(e, OnlineStoreError):
                raise
            raise OnlineStoreError(describe(e)) from e
        self.breaker.success()
        return rows

    async def ping(self) -> bool:
        """Whether the store answers."""
        return await self.reader.ping()

    async def close(self) -> None:
        """Close the store's connection."""
        await self.reader.close()


_Waiter = tuple[ScoreRequest, "asyncio.Future[Scored]"]


class MicroBatcher:
    """Requests that arrive in the same loop turn are scored together, one batch per model."""

    def __init__(self, reader: CachedReader, k: int, metrics: ServingMetrics) -> None:
        self.reader = reader
        self.k = k
        self.metrics = metrics
        self._pending: dict[int, tuple[Ranker | EventScorer | RetrievalRanker, list[_Waiter]]] = {}
        self._scheduled = False
        self._running: set[asyncio.Future[None]] = set()

    def submit(self, ranker: Ranker | EventScorer | RetrievalRanker, request: ScoreRequest
               ) -> asyncio.Future[Scored]:
        """A future of the request's Scored; the batch runs on the next loop turn."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Scored] = loop.create_future()
        self._pending.setdefault(id(ranker), (ranker, []))[1].append((request, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        pending, self._pending, self._scheduled = self._pending, {}, False
        for ranker, items in pending.values():
            task = asyncio.ensure_future(self._run(ranker, items))
            self._running.add(task)  # the loop holds tasks weakly: keep them until done
            task.add_done_callback(self._running.discard)

    async def _run(self, ranker: Ranker | EventScorer | RetrievalRanker, items: list[_Waiter]) -> None:
        self.metrics.observe_batch(len(items))
        timings: dict[str, float] = {}
        try:
            results = await ranker.score([r for r, _ in items], self.reader, self.k, timings)
        except Exception as e:  # every waiter gets the failure and falls back
            for _, future in items:
                if not future.done():
                    future.set_exception(e)
            return
        for stage, seconds in timings.items():  # a batch's stage time is each request's wait
            self.metrics.observe_stage(stage, seconds)
        memo = [r.stage1_memo for r in results if r.stage1_memo is not None]
        if memo:  # retrieval: stage 1 from the memo of unchanged histories, as a cache level
            self.metrics.cache_many("stage1", sum(memo), len(memo) - sum(memo))
        for (_, future), result in zip(items, results, strict=True):
            if not future.done():
                future.set_result(result)


class PredictionService:
    """Everything behind the predict endpoint of a ranking use case and its bundle endpoint."""

    def __init__(self, settings: ServingSettings, spec: ModelSpec, holder: ModelHolder,
                 reader: OnlineReader, metrics: ServingMetrics, prediction_log: PredictionLog
                 ) -> None:
        self.settings = settings
        self.spec = spec
        self.holder = holder
        self.metrics = metrics
        self.prediction_log = prediction_log
        cache_on = spec.serving.cache if spec.serving.cache is not None else not spec.per_event
        self.l1: TTLCache[Answer] = TTLCache(settings.prediction_cache_ttl_seconds if cache_on else 0,
                                             settings.prediction_cache_size,
                                             jitter=settings.cache_ttl_jitter)
        breaker = CircuitBreaker("online_store", settings.breaker_failures,
                                 settings.breaker_reset_seconds,
                                 on_change=metrics.set_circuit_state)
        self.budget_s = settings.latency_budget_ms / 1000
        self.features = CachedReader(
            reader, TTLCache(settings.feature_cache_ttl_seconds, settings.feature_cache_size,
                             jitter=settings.cache_ttl_jitter, keep_stale=False),
            breaker, self.budget_s, metrics)
        self.batcher = MicroBatcher(self.features, settings.max_k, metrics)
        self.model_breaker = CircuitBreaker("model", settings.breaker_failures,
                                            settings.breaker_reset_seconds,
                                            on_change=metrics.set_circuit_state)
        self.popular: dict[int, list[str]] = {}
        self.bundles: dict[str, tuple[int, list[list[str]]]] = {}  # user -> (first hour, 24 lists)
        self.static_default = list(spec.candidates.static_default) if spec.candidates else []
        self.context_bucket = [n for n in ("location",) if n in spec.event_log.context]
        holder.on_swap.append(self._on_swap)
        self.warmed: set[str] = set()  # model versions that have scored once (see warm_up)
        self._background: set[asyncio.Task[Any]] = set()
        self._static_warned_at = float("-inf")

    # --- warm-up ----------------------------------------------------------------------------
    async def warm_up(self, models: Sequence[ServedModel] | None = None) -> bool:
        """Score one made-up request with each model (default: those loaded) before it takes
        traffic; True if every one scored.

        A cold first call (the store's connection, the model's first predict) fell past the
        latency budget under CPU load and was answered by a fallback. Not counted in the
        metrics; it reads the store directly, so a failure does not count against the breaker.
        """
        todo = list(self.holder.models.values()) if models is None else list(models)
        log_spec = self.spec.event_log
        entity: Any = {"int": 0, "float": 0.0}.get(log_spec.columns[log_spec.entity].type,
                                                   "warm-up")
        request = ScoreRequest(entity, int(time.time() * 1e6), log_spec.example_context)
        ok = True
        for model in todo:
            try:
                await asyncio.wait_for(model.scorer.score([request], self.features.reader, 1),
                                       self.settings.warmup_timeout_seconds)
            except Exception as e:  # the server starts all the same; /readyz says not_warm
                log.warning("warm-up of %s v%s failed: %s", model.variant, model.version,
                            describe(e))
                ok = False
                continue
            self.warmed.add(model.version)
        return ok

    # --- the request path ---------------------------------------------------------------
    async def predict(self, user_hash: str, unix_us: int, context: Mapping[str, Any], k: int,
                      request_id: str) -> Answer:
        """Answer one request; never raises for a valid request."""
        started = time.perf_counter()
        variant = variant_for(user_hash, self.settings.challenger_share, self.settings.ab_salt)
        model = self.holder.get(variant) or self.holder.get("champion")
        if model is not None:
            variant = model.variant
        self.metrics.variant(variant)
        hour = hour_of_day(unix_us)
        cache_key = (user_hash, model.version if model else None, hour,
                     *(context.get(n) for n in self.context_bucket))
        if model is not None and self.l1.enabled:
            cached = self.l1.get(cache_key)
            self.metrics.cache("l1", cached is not None)
            if cached is not None:
                return _top(cached, k, cached=True)
        answer = await self._score(model, user_hash, unix_us, context, k, hour, cache_key)
        total = time.perf_counter() - started
        self.metrics.observe_stage("total", total)
        if answer.fallback:
            self.metrics.fallback(answer.fallback)
        self._after(model, answer, user_hash, unix_us, context, request_id, total)
        return _top(answer, k)

    async def _score(self, model: ServedModel | None, user_hash: str, unix_us: int,
                     context: Mapping[str, Any], k: int, hour: int, cache_key: tuple[Any, ...]
                     ) -> Answer:
        if model is None:
            return self._fallback(None, "champion", user_hash, hour, cache_key, "no model loaded")
        if not self.model_breaker.allow():
            return self._fallback(model, model.variant, user_hash, hour, cache_key,
                                  "model circuit open")
        request = ScoreRequest(user_hash, unix_us, context)
        try:
            scored = await asyncio.wait_for(self.batcher.submit(model.scorer, request),
                                            self.budget_s)
        except (OnlineStoreError, CircuitOpen, TimeoutError) as e:
            self.metrics.error(type(e).__name__)
            return self._fallback(model, model.variant, user_hash, hour, cache_key, describe(e))
        except Exception as e:  # the model itself failed: count it against the model breaker
            log.exception("scoring failed")
            self.model_breaker.failure(e)
            self.metrics.error(type(e).__name__)
            return self._fallback(model, model.variant, user_hash, hour, cache_key, describe(e))
        self.model_breaker.success()
        self.warmed.add(model.version)  # a warm-up that failed at start is done now
        if not scored.items:  # an unknown user and no popular list online (e.g. a stale day)
            return self._fallback(model, model.variant, user_hash, hour, cache_key,
                                  "no candidates online", known=scored.known)
        answer = Answer(scored.items, [round(float(s), 6) for s in scored.scores], model.variant,
                        model.version, scored.known, None if scored.known else "popular_at_hour",
                        scored=scored, titles=scored.titles)
        if scored.known and scored.items:
            self.l1.put(cache_key, answer)
        return answer

    def _fallback(self, model: ServedModel | None, variant: str, user_hash: str, hour: int,
                  cache_key: tuple[Any, ...], reason: str, known: bool | None = None) -> Answer:
        # `known` is None unless the model itself said: a timeout must not call a user new.
        version = model.version if model else None
        stale = self.l1.get_stale(cache_key)
        if stale is not None:  # only known users' answers are cached
            return Answer(stale.items, stale.scores, variant, version, True, "cache")
        bundle = self.bundles.get(user_hash)
        if bundle is not None:
            first_hour, hours = bundle
            index = (hour - first_hour) % 24
            if hours[index]:
                return _ranked(hours[index], variant, version, True, "user_hour")
        popular = self.popular.get(hour)
        if popular:
            return _ranked(popular, variant, version, known, "popular_at_hour")
        self._warn_static_default(reason)
        return _ranked(self.static_default, variant, version, known, "static_default")

    def _warn_static_default(self, reason: str) -> None:
        now = time.monotonic()
        if now - self._static_warned_at > 10:  # one line per 10 s, not one per request
            self._static_warned_at = now
            log.warning("static default answered (counted in feastflow_fallbacks_total): %s",
                        reason)

    def _after(self, model: ServedModel | None, answer: Answer, user_hash: str, unix_us: int,
               context: Mapping[str, Any], request_id: str, latency_s: float) -> None:
        challenger = self.holder.get("challenger")
        if (challenger is not None and model is not None and model.variant == "champion"
                and in_shadow_sample(request_id, self.settings.shadow_share)):
            task = asyncio.ensure_future(self._shadow(challenger, user_hash, unix_us, context,
                                                      request_id))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        if self.prediction_log.sampled():
            self.prediction_log.record(self._record(answer, user_hash, unix_us, context,
                                                    request_id, latency_s, shadow=False))

    async def _shadow(self, challenger: ServedModel, user_hash: str, unix_us: int,
                      context: Mapping[str, Any], request_id: str) -> None:
        # Scored after the champion answered; the result is logged, never returned.
        try:
            scored = await asyncio.wait_for(
                self.batcher.submit(challenger.scorer, ScoreRequest(user_hash, unix_us, context)),
                self.budget_s)
        except Exception:  # a failing shadow must never touch the served answer
            self.metrics.shadow_outcome("failed")
            return
        self.metrics.shadow_outcome("scored")
        answer = self._shadow_answer(challenger, scored)
        self.prediction_log.record(self._record(answer, user_hash, unix_us, context, request_id,
                                                0.0, shadow=True))

    def _shadow_answer(self, challenger: ServedModel, scored: Scored) -> Answer:
        return Answer(scored.items[:self.settings.max_k], [float(s) for s in scored.scores],
                      "challenger", challenger.version, scored.known, None, scored=scored)

    def _record(self, answer: Answer, user_hash: str, unix_us: int, context: Mapping[str, Any],
                request_id: str, latency_s: float, shadow: bool) -> dict[str, Any]:
        features: dict[str, list[Any]] = {}
        scored = answer.scored
        if scored is not None and scored.inputs is not None:
            model = self.holder.get(answer.variant)
            names = model.scorer.feature_names if model else []
            features = {name: [None if np.isnan(v) else float(v) for v in scored.inputs[:, j]]
                        for j, name in enumerate(names)}
            if not self.spec.per_event:
                features = {"candidates": scored.candidates, **features}
        return {
            "request_id": request_id, "served_at": datetime.now(UTC),
            "request_ts": datetime.fromtimestamp(unix_us / 1e6, UTC), "user_hash": str(user_hash),
            "variant": answer.variant, "model_version": answer.model_version or "",
            "fallback": answer.fallback, "items": [str(i) for i in answer.items],  # ids as text
            "scores": answer.scores,
            "features": json.dumps(features), "latency_ms": latency_s * 1000, "shadow": shadow,
            "context": json.dumps(dict(context), default=str),
        }

    # --- bundles, popular lists, cache control ----------------------------------------------
    async def bundle(self, user_hash: str, start_us: int, k: int) -> tuple[Answer, list[list[str]]]:
        """The user's top items for each of the 24 hours from `start_us` (precomputed if loaded).

        An hour the model cannot rank (unknown user, store down) gets the popular items of that
        hour, then the static default; the answer's `fallback` names the weakest level used.
        """
        model = self.holder.get("champion")
        version = model.version if model else None
        first_hour = hour_of_day(start_us)
        precomputed = self.bundles.get(user_hash)
        if precomputed is not None:
            hours = [precomputed[1][(first_hour + h - precomputed[0]) % 24][:k] for h in range(24)]
            return Answer([], [], "champion", version, True, None, cached=True), hours
        ranked: list[list[str]] = [[] for _ in range(24)]
        known: bool | None = None  # unless the model answers, nobody can tell
        if model is not None:
            context = self.spec.event_log.example_context
            requests = hourly_requests(user_hash, start_us, context)
            try:
                scored = await asyncio.wait_for(model.ranker.score(requests, self.features, k),
                                                self.budget_s * 4)
                known = any(s.known for s in scored)
                ranked = [s.items[:k] if s.known else [] for s in scored]
            except Exception as e:  # the bundle falls back like a prediction
                log.warning("bundle scoring failed: %s", describe(e))
        levels = set()
        for h in range(24):
            if not ranked[h]:
                popular = self.popular.get((first_hour + h) % 24)
                levels.add("popular_at_hour" if popular else "static_default")
                ranked[h] = list(popular or self.static_default)[:k]
        fallback = ("static_default" if "static_default" in levels
                    else "popular_at_hour" if levels else None)
        return Answer([], [], "champion", version, known, fallback), ranked

    async def refresh_popular(self) -> None:
        """Load the fallback list for every hour into memory (from the online store)."""
        model = self.holder.get("champion")
        if model is None:
            return
        today = int(time.time() // 86400 * 86400 * 1_000_000)
        requests = hourly_requests("", today, self.spec.event_log.example_context)
        try:
            stage1 = await model.ranker.stage1(requests, self.features, enforce_ttl=False)
        except Exception as e:  # keep the lists we have
            log.warning("could not refresh popular items: %s", describe(e))
            return
        name = self.spec.ranking_candidates.fallback_list
        found = {h: list(s.get(name) or []) for h, s in enumerate(stage1) if s.get(name)}
        if found:
            self.popular = found

    def load_precomputed(self, directory: Path) -> int:
        """Load `feastflow precompute` output for the champion's version; return users loaded."""
        model = self.holder.get("champion")
        path = directory / "bundles.json"
        if model is None or not path.exists():
            return 0
        data = json.loads(path.read_text())
        if data.get("model_version") != model.version:
            log.info("precomputed bundles are for v%s, serving v%s: ignored",
                     data.get("model_version"), model.version)
            return 0
        self.bundles = {user: (int(data["first_hour"]), hours)
                        for user, hours in data["users"].items()}
        return len(self.bundles)

    def flush_caches(self) -> dict[str, int]:
        """Empty L1 and L2; return how many entries each held."""
        return {"l1": self.l1.clear(), "l2": self.features.cache.clear()}

    def _on_swap(self, new: ServedModel, old: ServedModel | None) -> None:
        self.metrics.set_model_version(new.variant, new.version)
        if old is not None and old.version != new.version:
            self.l1.clear()  # predictions of the old model must not be served as the new one's

    async def close(self) -> None:
        """Wait for shadow work, close the store connection."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.features.close()


def _top(answer: Answer, k: int, cached: bool = False) -> Answer:
    if len(answer.items) <= k and answer.cached == cached:
        return answer
    return Answer(answer.items[:k], answer.scores[:k], answer.variant, answer.model_version,
                  answer.known_user, answer.fallback, cached, answer.scored,
                  titles=answer.titles[:k] if answer.titles is not None else None)


def _ranked(items: Sequence[str], variant: str, version: str | None, known: bool | None,
            fallback: str) -> Answer:
    items = list(items)
    return Answer(items, [round(1.0 / (r + 1), 6) for r in range(len(items))], variant, version,
                  known, fallback)


class EventService(PredictionService):
    """Everything behind the predict endpoint of a per-event use case (classification: the
    positive class's probability and a decision; regression: the prediction).

    The answer depends on the whole request, so the L1 cache is off unless `serving.cache` is
    true, and then keyed on (entity, model version, time, every context value): never on
    (entity, hour). No bundles, no popular lists: the fallbacks are a stale L1 entry, then the
    spec's `serving.default`.
    """

    def __init__(self, settings: ServingSettings, spec: ModelSpec, holder: ModelHolder,
                 reader: OnlineReader, metrics: ServingMetrics, prediction_log: PredictionLog
                 ) -> None:
        super().__init__(settings, spec, holder, reader, metrics, prediction_log)
        self.context_names = tuple(spec.event_log.context)
        self.classifier = spec.task == "binary_classification"
        self.decision_rule = spec.serving.decision or DecisionSpec()
        default = spec.serving.default
        if self.classifier:
            score = default.get("score")
            value = None if score is None else float(score)
            decision = default.get("decision") or (None if value is None else self.decide(value))
            self.default = ([] if value is None else [value], decision)
        else:
            prediction = default.get("prediction")
            self.default = ([] if prediction is None else [float(prediction)], None)

    def decide(self, score: float, model: ServedModel | None = None) -> str:
        """The classifier's answer in words: `review` inside the review band (narrowed to the
        model version's daily review budget), else `above` at or over the threshold, `below`
        under it."""
        return self.decision_rule.answer(score, model.review_from if model else None)

    async def predict(self, user_hash: Any, unix_us: int, context: Mapping[str, Any], k: int,
                      request_id: str) -> Answer:
        """Answer one request; never raises for a valid request (`user_hash`: the entity,
        hashed when the contract hashes it)."""
        started = time.perf_counter()
        variant = variant_for(str(user_hash), self.settings.challenger_share, self.settings.ab_salt)
        model = self.holder.get(variant) or self.holder.get("champion")
        if model is not None:
            variant = model.variant
        self.metrics.variant(variant)
        cache_key = None
        if self.l1.enabled:
            cache_key = (user_hash, model.version if model else None, unix_us,
                         *(context.get(n) for n in self.context_names))
            if model is not None:
                cached = self.l1.get(cache_key)
                self.metrics.cache("l1", cached is not None)
                if cached is not None:
                    return replace(cached, cached=True)
        answer = await self._score_event(model, user_hash, unix_us, context, cache_key)
        total = time.perf_counter() - started
        self.metrics.observe_stage("total", total)
        if answer.fallback:
            self.metrics.fallback(answer.fallback)
        self._after(model, answer, user_hash, unix_us, context, request_id, total)
        return answer

    async def _score_event(self, model: ServedModel | None, entity: Any, unix_us: int,
                           context: Mapping[str, Any], cache_key: tuple[Any, ...] | None
                           ) -> Answer:
        if model is None:
            return self._default(None, "champion", cache_key, "no model loaded")
        if not self.model_breaker.allow():
            return self._default(model, model.variant, cache_key, "model circuit open")
        request = ScoreRequest(entity, unix_us, context)
        try:
            scored = await asyncio.wait_for(self.batcher.submit(model.scorer, request),
                                            self.budget_s)
        except (OnlineStoreError, CircuitOpen, TimeoutError) as e:
            self.metrics.error(type(e).__name__)
            return self._default(model, model.variant, cache_key, describe(e))
        except Exception as e:  # the model itself failed: count it against the model breaker
            log.exception("scoring failed")
            self.model_breaker.failure(e)
            self.metrics.error(type(e).__name__)
            return self._default(model, model.variant, cache_key, describe(e))
        self.model_breaker.success()
        self.warmed.add(model.version)  # a warm-up that failed at start is done now
        value = round(float(scored.scores[0]), 6)
        answer = Answer([], [value], model.variant, model.version, scored.known, None,
                        scored=scored,
                        decision=self.decide(value, model) if self.classifier else None)
        if cache_key is not None:
            self.l1.put(cache_key, answer)
        return answer

    def _default(self, model: ServedModel | None, variant: str,
                 cache_key: tuple[Any, ...] | None, reason: str) -> Answer:
        version = model.version if model else None
        if cache_key is not None:
            stale = self.l1.get_stale(cache_key)
            if stale is not None:
                return Answer([], stale.scores, variant, version, stale.known_user, "cache",
                              decision=stale.decision)
        self._warn_static_default(reason)
        scores, decision = self.default
        return Answer([], list(scores), variant, version, None, "static_default",
                      decision=decision)

    def _shadow_answer(self, challenger: ServedModel, scored: Scored) -> Answer:
        value = float(scored.scores[0])
        return Answer([], [value], "challenger", challenger.version, scored.known, None,
                      scored=scored,
                      decision=self.decide(value, challenger) if self.classifier else None)

    async def bundle(self, user_hash: str, start_us: int, k: int
                     ) -> tuple[Answer, list[list[str]]]:
        """Bundles are ranked lists: a per-event use case has none."""
        raise NotImplementedError(f"use case {self.spec.name!r} is not a ranking: no bundles")

    async def refresh_popular(self) -> None:
        """No popular lists outside a ranking."""
        return None

    def load_precomputed(self, directory: Path) -> int:
        """No precomputed bundles outside a ranking."""
        return 0


class RetrievalService(PredictionService):
    """Everything behind the predict endpoint of a retrieval-then-rank use case: the model
    version's artifacts in memory (its scorer), the entity's history and the features online.

    No L1 cache unless the spec asks (a rating posted as an event must change the next answer);
    no bundles. Fallbacks: a stale L1 entry, then the most popular items (the popularity
    generator's online counts, refreshed in the background), then nothing.
    """

    async def refresh_popular(self) -> None:
        """Every served model's popularity counts from the online store; the champion's top
        items become the fallback list of every hour.

        Read from the store directly, under its own timeout: the whole catalogue's counts
        (9,742 movies: 0.2-0.6 s on a loaded machine) never fit the per-request budget, and a
        background read must not trip the request path's breaker.
        """
        for model in list(self.holder.models.values()):
            try:
                await asyncio.wait_for(model.retrieval.refresh_popularity(self.features.reader),
                                       self.settings.popular_refresh_timeout_seconds)
            except Exception as e:  # keep the counts we have
                log.warning("could not refresh popularity: %s", describe(e))
        champion = self.holder.get("champion")
        if champion is not None:
            items, _, _ = champion.retrieval.popular(self.settings.max_k)
            if items:
                self.popular = dict.fromkeys(range(24), items)

    def _fallback(self, model: ServedModel | None, variant: str, user_hash: str, hour: int,
                  cache_key: tuple[Any, ...], reason: str, known: bool | None = None) -> Answer:
        answer = super()._fallback(model, variant, user_hash, hour, cache_key, reason, known)
        served = model or self.holder.get("champion")
        if served is not None:
            artifacts = served.retrieval.artifacts
            codes = artifacts.codes_of(answer.items)
            answer.titles = [artifacts.titles[c] if c >= 0 else "" for c in codes.tolist()]
        return answer

    async def bundle(self, user_hash: str, start_us: int, k: int
                     ) -> tuple[Answer, list[list[str]]]:
        """No hourly bundles: a recommendation does not depend on the hour."""
        raise NotImplementedError(f"use case {self.spec.name!r} has no hourly bundles")

    def load_precomputed(self, directory: Path) -> int:
        """No precomputed bundles."""
        return 0


def build_service(settings: ServingSettings, spec: ModelSpec, holder: ModelHolder,
                  reader: OnlineReader, metrics: ServingMetrics, prediction_log: PredictionLog
                  ) -> PredictionService:
    """The service of the spec's task (and shape)."""
    kind = (EventService if spec.per_event else
            RetrievalService if spec.retrieval is not None else PredictionService)
    return kind(settings, spec, holder, reader, metrics, prediction_log)
