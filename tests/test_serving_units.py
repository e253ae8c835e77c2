"""Unit tests of the serving building blocks: the TTL cache, the circuit breaker, the sticky A/B
router, the shadow sample, and PredictionService's fallback chain. No network, no Redis, no model
registry: the online reader is a stub (the integration tests read a real Redis)."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from feastflow.errors import CircuitOpen
from feastflow.online import OnlineStoreError, Row, ViewLayout
from feastflow.scoring import Scored, ScoreRequest
from feastflow.spec import DecisionSpec, load_spec
from registry.memory import InMemoryRegistry
from serving.metrics import ServingMetrics
from serving.models import ModelHolder, ServedModel
from serving.request_log import PredictionLog
from serving.resilience import (
    CircuitBreaker,
    CircuitState,
    TTLCache,
    bucket,
    in_shadow_sample,
    variant_for,
)
from serving.service import Answer, CachedReader, EventService, PredictionService, build_service
from serving.settings import ServingSettings

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def random_user_hashes(n: int, seed: int) -> list[str]:
    """n distinct 32-hex user hashes, shaped like hash_user_id's output."""
    rng = random.Random(seed)
    return list(dict.fromkeys(f"{rng.getrandbits(128):032x}" for _ in range(n)))


# --- TTLCache ---------------------------------------------------------------------------------


def test_ttl_cache_entries_expire_after_their_ttl() -> None:
    clock = FakeClock()
    cache: TTLCache[str] = TTLCache(10.0, 100, clock=clock)
    cache.put("a", "A")
    clock.now += 9.9
    assert cache.get("a") == "A"
    clock.now += 0.2
    assert cache.get("a") is None
    assert cache.get("never-put") is None



def test_ttl_cache_get_many_answers_like_get_with_one_clock_read() -> None:
    clock = FakeClock()
    reads = []
    cache: TTLCache[str] = TTLCache(10.0, 100, clock=lambda: reads.append(1) or clock())
    cache.put("old", "O")
    clock.now += 6
    cache.put("new", "N")
    clock.now += 5  # "old" is 11 s old: expired; "new" is 5 s old
    reads.clear()
    assert cache.get_many(["old", "new", "never-put", "new"]) == [None, "N", None, "N"]
    assert len(reads) == 1
    assert cache.get_many([]) == []
    assert cache.get_stale("old") == "O"  # expired, still a fallback


def test_ttl_cache_without_stale_entries_drops_the_expired_ones_as_it_puts() -> None:
    clock = FakeClock()
    cache: TTLCache[str] = TTLCache(10.0, 100, clock=clock, keep_stale=False)
    for i in range(5):
        cache.put(f"early-{i}", "E")
    clock.now += 5
    cache.put("later", "L")
    clock.now += 6  # the early ones are 11 s old, "later" 6 s
    cache.put("now", "N")
    assert len(cache) == 2
    assert cache.get_many(["early-0", "later", "now"]) == [None, "L", "N"]
    assert cache.get_stale("early-0") is None
    kept: TTLCache[str] = TTLCache(10.0, 100, clock=clock)  # the default keeps them for fallbacks
    kept.put("early", "E")
    clock.now += 11
    kept.put("now", "N")
    assert len(kept) == 2 and kept.get_stale("early") == "E"

def test_ttl_cache_jitter_spreads_the_expiry_of_entries_put_together() -> None:
    clock = FakeClock(0.0)
    cache: TTLCache[int] = TTLCache(10.0, 10_000, clock=clock, jitter=0.5)
    for i in range(2000):
        cache.put(i, i)

    def fresh() -> int:
        return sum(cache.get(i) is not None for i in range(2000))

    clock.now = 4.99
    assert fresh() == 2000  # never before (1 - jitter) x TTL
    clock.now = 7.5
    assert 700 < fresh() < 1300  # about half, uniformly in between
    clock.now = 10.01
    assert fresh() == 0  # never after the TTL
    with pytest.raises(ValueError, match="jitter"):
        TTLCache(10.0, 10, jitter=1.0)


def test_ttl_cache_a_put_may_set_its_own_ttl() -> None:
    clock = FakeClock()
    cache: TTLCache[str] = TTLCache(10.0, 100, clock=clock)
    cache.put("short", "S", ttl_seconds=1.0)
    cache.put("long", "L", ttl_seconds=60.0)
    clock.now += 30.0
    assert cache.get("short") is None
    assert cache.get("long") == "L"


def test_ttl_cache_get_stale_still_returns_expired_entries() -> None:
    clock = FakeClock()
    cache: TTLCache[str] = TTLCache(10.0, 100, clock=clock)
    cache.put("a", "A")
    clock.now += 3600.0
    assert cache.get("a") is None
    assert cache.get_stale("a") == "A"
    assert cache.get_stale("never-put") is None


def test_ttl_cache_a_fresh_put_replaces_a_stale_entry() -> None:
    clock = FakeClock()
    cache: TTLCache[str] = TTLCache(10.0, 100, clock=clock)
    cache.put("a", "old")
    clock.now += 20.0
    cache.put("a", "new")
    assert cache.get("a") == "new" and len(cache) == 1


def test_ttl_cache_evicts_the_least_recently_put_entry_when_full() -> None:
    cache: TTLCache[str] = TTLCache(10.0, 3, clock=FakeClock())
    for key in "abc":
        cache.put(key, key.upper())
    cache.put("a", "A2")  # put again: now the most recent
    cache.put("d", "D")  # over max_size: "b" is the least recently put
    assert len(cache) == 3
    assert cache.get_stale("b") is None  # gone, not merely stale
    assert [cache.get(k) for k in "acd"] == ["A2", "C", "D"]


def test_ttl_cache_with_ttl_0_is_disabled_and_stores_nothing() -> None:
    cache: TTLCache[str] = TTLCache(0.0, 100, clock=FakeClock())
    assert cache.enabled is False
    cache.put("a", "A")
    assert len(cache) == 0
    assert cache.get("a") is None and cache.get_stale("a") is None
    assert TTLCache(0.001, 1).enabled is True


def test_ttl_cache_clear_empties_it_and_returns_the_count() -> None:
    clock = FakeClock()
    cache: TTLCache[int] = TTLCache(10.0, 100, clock=clock)
    for i in range(7):
        cache.put(i, i)
    clock.now += 100.0  # expired entries are still held, and counted
    assert cache.clear() == 7
    assert len(cache) == 0 and cache.get_stale(3) is None
    assert cache.clear() == 0


# --- CircuitBreaker ---------------------------------------------------------------------------


def make_breaker(failures: int = 3, reset_seconds: float = 2.0
                 ) -> tuple[CircuitBreaker, FakeClock, list[tuple[str, CircuitState]]]:
    clock = FakeClock()
    changes: list[tuple[str, CircuitState]] = []
    breaker = CircuitBreaker("store", failures, reset_seconds, clock=clock,
                             on_change=lambda name, state: changes.append((name, state)))
    return breaker, clock, changes


def test_breaker_opens_after_n_consecutive_failures_not_before() -> None:
    breaker, _, changes = make_breaker(failures=3)
    breaker.failure(OSError("refused"))
    breaker.failure(OSError("refused"))
    assert breaker.state == CircuitState.CLOSED and breaker.allow()
    assert changes == []
    breaker.failure(OSError("connection refused"))
    assert breaker.state == CircuitState.OPEN
    assert not breaker.allow()
    assert "connection refused" in breaker.last_error
    assert changes == [("store", CircuitState.OPEN)]


def test_breaker_a_success_in_between_resets_the_count() -> None:
    breaker, _, changes = make_breaker(failures=3)
    breaker.failure("e1")
    breaker.failure("e2")
    breaker.success()
    breaker.failure("e3")
    breaker.failure("e4")
    assert breaker.state == CircuitState.CLOSED and breaker.allow()
    assert changes == []
    breaker.failure("e5")
    assert breaker.state == CircuitState.OPEN


def test_breaker_refuses_while_open_then_lets_exactly_one_trial_through() -> None:
    breaker, clock, changes = make_breaker(failures=1, reset_seconds=2.0)
    breaker.failure(TimeoutError())
    assert breaker.last_error == "TimeoutError"  # an exception without text is named
    clock.now += 1.9
    assert [breaker.allow() for _ in range(5)] == [False] * 5
    assert breaker.state == CircuitState.OPEN
    clock.now += 0.1
    assert breaker.allow() is True  # the trial
    assert breaker.state == CircuitState.HALF_OPEN
    assert [breaker.allow() for _ in range(5)] == [False] * 5  # the trial is still out
    clock.now += 1.9
    assert breaker.allow() is False  # the trial gets reset_seconds to report back ...
    clock.now += 0.1
    assert breaker.allow() is True  # ... then it counts as lost and another trial goes
    assert [breaker.allow() for _ in range(3)] == [False] * 3
    assert changes == [("store", CircuitState.OPEN), ("store", CircuitState.HALF_OPEN)]


def test_breaker_a_successful_trial_closes_it() -> None:
    breaker, clock, changes = make_breaker(failures=2, reset_seconds=2.0)
    breaker.failure("down")
    breaker.failure("down")
    clock.now += 2.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == CircuitState.CLOSED
    assert all(breaker.allow() for _ in range(10))
    assert changes == [("store", CircuitState.OPEN), ("store", CircuitState.HALF_OPEN),
                       ("store", CircuitState.CLOSED)]
    breaker.failure("again")  # the count restarted at the close: one failure does not reopen
    assert breaker.state == CircuitState.CLOSED


def test_breaker_a_failed_trial_reopens_it_for_another_full_wait() -> None:
    breaker, clock, changes = make_breaker(failures=3, reset_seconds=2.0)
    for _ in range(3):
        breaker.failure("down")
    clock.now += 2.5
    assert breaker.allow()
    breaker.failure("still down")  # one failure is enough in half-open
    assert breaker.state == CircuitState.OPEN
    assert breaker.last_error == "still down"
    clock.now += 1.9  # the wait restarts at the failed trial, not at the first opening
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow() and breaker.state == CircuitState.HALF_OPEN
    assert changes == [("store", CircuitState.OPEN), ("store", CircuitState.HALF_OPEN),
                       ("store", CircuitState.OPEN), ("store", CircuitState.HALF_OPEN)]


def test_breaker_feeds_the_circuit_state_gauge() -> None:
    metrics = ServingMetrics()
    clock = FakeClock()
    breaker = CircuitBreaker("online_store", 1, 2.0, clock=clock, on_change=metrics.set_circuit_state)

    def gauge() -> float | None:
        return metrics.registry.get_sample_value("feastflow_circuit_state", {"use_case": "next_app",
                                                                     "name": "online_store"})

    breaker.failure("down")
    assert gauge() == 1
    clock.now += 2.0
    breaker.allow()
    assert gauge() == 2
    breaker.success()
    assert gauge() == 0


# --- variant_for, in_shadow_sample -----------------------------------------------------------


def test_variant_for_is_deterministic_for_a_user_and_salt() -> None:
    users = random_user_hashes(500, seed=1)
    first = [variant_for(u, 0.3, "ab-1") for u in users]
    assert first == [variant_for(u, 0.3, "ab-1") for u in users]
    assert set(first) == {"champion", "challenger"}


def test_variant_for_share_0_is_all_champion_and_share_1_all_challenger() -> None:
    users = random_user_hashes(5000, seed=2)
    assert {variant_for(u, 0.0, "ab-1") for u in users} == {"champion"}
    assert {variant_for(u, 1.0, "ab-1") for u in users} == {"challenger"}


def test_variant_for_gives_the_challenger_its_share_of_users() -> None:
    users = random_user_hashes(20_000, seed=3)
    share = sum(variant_for(u, 0.05, "ab-1") == "challenger" for u in users) / len(users)
    # binomial sd = sqrt(0.05 * 0.95 / 20000) = 0.0015: +-0.006 is ~4 sd
    assert share == pytest.approx(0.05, abs=0.006)


def test_variant_for_raising_the_share_keeps_the_challengers_users() -> None:
    users = random_user_hashes(5000, seed=4)
    at_5 = {u for u in users if variant_for(u, 0.05, "ab-1") == "challenger"}
    at_20 = {u for u in users if variant_for(u, 0.20, "ab-1") == "challenger"}
    assert at_5 and at_5 < at_20  # a ramp-up never moves a user back to the champion


def test_variant_for_a_new_salt_reshuffles_the_users() -> None:
    users = random_user_hashes(20_000, seed=5)
    a = {u for u in users if variant_for(u, 0.05, "ab-1") == "challenger"}
    b = {u for u in users if variant_for(u, 0.05, "ab-2") == "challenger"}
    # independent splits: ~5% of a's ~1000 users are also in b (sd ~0.007); same split: 100%
    assert len(a & b) / len(a) == pytest.approx(0.05, abs=0.025)
    agree = sum(variant_for(u, 0.5, "ab-1") == variant_for(u, 0.5, "ab-2") for u in users)
    assert agree / len(users) == pytest.approx(0.5, abs=0.02)


def test_variant_for_is_stable_across_processes() -> None:
    users = random_user_hashes(50, seed=6)
    here = [repr(bucket(u, "ab-1")) for u in users]
    code = ("import sys; from serving.resilience import bucket; "
            "print('\\n'.join(repr(bucket(u, 'ab-1')) for u in sys.argv[1:]))")
    # A different hash seed: the split must not depend on Python's per-process hash().
    env = {"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code, *users], capture_output=True, text=True,
                          cwd=PROJECT_ROOT, env=env, timeout=60, check=True)
    assert done.stdout.split() == here
    variants = [variant_for(u, 0.3, "ab-1") for u in users]
    assert variants == ["challenger" if float(b) < 0.3 else "champion" for b in done.stdout.split()]


def test_in_shadow_sample_share_0_never_share_1_always() -> None:
    keys = [f"req-{i}" for i in range(5000)]
    assert not any(in_shadow_sample(k, 0.0) for k in keys)
    assert all(in_shadow_sample(k, 1.0) for k in keys)


def test_in_shadow_sample_takes_its_share_of_requests() -> None:
    keys = [f"{random.Random(7).getrandbits(64):016x}-{i}" for i in range(20_000)]
    share = sum(in_shadow_sample(k, 0.2) for k in keys) / len(keys)
    assert share == pytest.approx(0.2, abs=0.012)  # sd 0.0028
    assert [in_shadow_sample(k, 0.2) for k in keys[:200]] == [in_shadow_sample(k, 0.2)
                                                              for k in keys[:200]]


# --- PredictionService: the fallback chain ---------------------------------------------------

USER = "a" * 32
AT_0805_UTC = 1_772_438_700_000_000  # 2026-03-02T08:05:00Z: hour_of_day 8
HOUR = 8
CONTEXT = {"location": "home", "battery": 80, "charging": False, "network": "wifi",
           "secs_since_prev_unlock": 30.0}
VIEW = ViewLayout(name="user_stats", join_keys=("user_id",), key_types=(), features=("n",),
                  ttl_seconds=None, realtime=False, key_prefix=b"", hmget_fields=b"")


class StubReader:
    """The online store: fails with OnlineStoreError while `down`, else one row per key."""

    def __init__(self, down: bool = True) -> None:
        self.down = down
        self.calls = 0

    async def read(self, reads: Sequence[tuple[ViewLayout, Sequence[Sequence[Any]]]]
                   ) -> list[list[Row]]:
        self.calls += 1
        if self.down:
            raise OnlineStoreError("connection refused")
        return [[(0.0, (1,)) for _ in keys] for _, keys in reads]

    async def ping(self) -> bool:
        return not self.down

    async def close(self) -> None:
        return None


class FakeRanker:
    """Reads the store through the service's reader, then ranks a fixed list (known user)."""

    feature_names: ClassVar[list[str]] = []

    async def score(self, requests: Sequence[ScoreRequest], reader: Any, k: int,
                    timings: dict[str, float] | None = None) -> list[Scored]:
        await reader.read([(VIEW, [(r.entity,) for r in requests])])
        return [Scored(["mail", "maps", "chat"][:k], [0.9, 0.5, 0.1][:k], True) for _ in requests]


def make_service(home: Path, reader: StubReader, **overrides: Any) -> PredictionService:
    values = {"latency_budget_ms": 5000.0, **overrides}  # no timeouts on a busy CI box
    settings = ServingSettings(home=home, user_hash_secret="unit-secret", log_json=False,
                               registry_poll_seconds=0, request_log_sample=0.0, **values)
    spec = load_spec(settings.use_case, settings.feature_repo)
    holder = ModelHolder(spec, None, {"champion": "champion", "challenger": "challenger"},  # type: ignore[arg-type]
                         settings.models_dir, InMemoryRegistry())
    metrics = ServingMetrics()
    prediction_log = PredictionLog(settings.served_log_dir, 0.0, 5.0, on_drop=metrics.request_log_dropped)
    return PredictionService(settings, spec, holder, reader, metrics, prediction_log)


@pytest.fixture()
def reader() -> StubReader:
    return StubReader(down=True)


@pytest.fixture()
def service(tmp_path: Path, reader: StubReader) -> Iterator[PredictionService]:
    svc = make_service(tmp_path, reader, breaker_failures=3)
    yield svc
    svc.prediction_log.close()


def install_fake_model(service: PredictionService, version: str = "7") -> ServedModel:
    model = ServedModel("champion", version, "run-1", FakeRanker(), "registry", 0.0)  # type: ignore[arg-type]
    service.holder.install([model])
    return model


def fallback_counts(metrics: ServingMetrics) -> dict[str, float]:
    """feastflow_fallbacks_total by level, parsed from the /metrics text."""
    body, _ = metrics.render()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        if family.name == "feastflow_fallbacks":
            for sample in family.samples:
                if sample.name == "feastflow_fallbacks_total":
                    counts[sample.labels["level"]] = sample.value
    return counts


def hour_lists(first_hour: int) -> list[list[str]]:
    """A precomputed bundle whose list i names the hour it is for: first_hour + i."""
    return [[f"for-{(first_hour + i) % 24}", "x", "y"] for i in range(24)]


def test_fallback_chain_goes_cache_then_user_hour_then_popular_then_static(
        service: PredictionService) -> None:
    clock = FakeClock()
    service.l1.clock = clock
    key = (USER, "7", HOUR, "home")
    service.l1.put(key, Answer(["stale-1", "stale-2"], [0.8, 0.4], "champion", "7", True))
    clock.now += 10 * service.l1.ttl_seconds  # expired: a miss for get, still there for get_stale
    assert service.l1.get(key) is None
    service.bundles[USER] = (20, hour_lists(20))  # hour 8 is list 12 of a bundle starting at 20:00
    service.popular[HOUR] = ["pop-8a", "pop-8b"]
    service.popular[HOUR + 1] = ["pop-9"]

    answer = service._fallback(None, "champion", USER, HOUR, key, "store down")
    assert (answer.fallback, answer.items) == ("cache", ["stale-1", "stale-2"])
    assert answer.scores == [0.8, 0.4] and answer.known_user is True

    service.l1.clear()
    answer = service._fallback(None, "champion", USER, HOUR, key, "store down")
    assert (answer.fallback, answer.items[0]) == ("user_hour", "for-8")
    assert answer.known_user is True
    assert answer.scores == sorted(answer.scores, reverse=True)
    assert service._fallback(None, "champion", USER, 19, key, "").items[0] == "for-19"  # wraps

    service.bundles[USER][1][12] = []  # no list precomputed for this hour: next level
    answer = service._fallback(None, "champion", USER, HOUR, key, "store down")
    assert (answer.fallback, answer.items) == ("popular_at_hour", ["pop-8a", "pop-8b"])
    assert answer.known_user is None  # the store failed: nobody knows whether the user is new

    del service.bundles[USER]
    assert service._fallback(None, "champion", USER, HOUR + 1, key, "").items == ["pop-9"]
    service.popular.clear()
    answer = service._fallback(None, "champion", USER, HOUR, key, "store down")
    assert answer.fallback == "static_default"
    assert answer.items == list(service.spec.candidates.static_default)
    assert answer.model_version is None and answer.variant == "champion"


class SlowRanker(FakeRanker):
    """Ranks a known user, but only after the latency budget has passed (a busy machine)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def score(self, requests: Sequence[ScoreRequest], reader: Any, k: int,
                    timings: dict[str, float] | None = None) -> list[Scored]:
        await self.release.wait()
        return await super().score(requests, reader, k, timings)


def test_a_fallback_never_calls_a_known_user_unknown(tmp_path: Path) -> None:
    # Under CPU load the first answers fell to the latency budget's popular list and said
    # known_user: false for users the model knows; only the model can say a user is new.
    service = make_service(tmp_path, StubReader(down=False), latency_budget_ms=1.0)
    ranker = SlowRanker()
    service.holder.install([ServedModel("champion", "7", "run-1", ranker, "registry", 0.0)])  # type: ignore[arg-type]
    service.popular[HOUR] = ["pop-1", "pop-2"]

    async def run() -> tuple[Answer, Answer]:
        late = await service.predict(USER, AT_0805_UTC, CONTEXT, 2, "r1")  # budget passes
        ranker.release.set()
        unknown = service._fallback(None, "champion", USER, HOUR, (USER,), "no candidates",
                                    known=False)  # the model said so: it may be told
        return late, unknown

    late, told = asyncio.run(run())
    assert (late.fallback, late.items, late.known_user) == ("popular_at_hour", ["pop-1", "pop-2"],
                                                            None)
    assert told.known_user is False
    service.prediction_log.close()


class SlowReader(StubReader):
    """The online store, answering every read after `delay_s` (a large read, a loaded box)."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(down=False)
        self.delay_s = delay_s

    async def read(self, reads: Sequence[tuple[ViewLayout, Sequence[Sequence[Any]]]]
                   ) -> list[list[Row]]:
        await asyncio.sleep(self.delay_s)
        return await super().read(reads)


class FakePopularity:
    """A retrieval scorer's popularity half: one read of every catalogue item's count."""

    def __init__(self, items: int) -> None:
        self.items = [f"movie-{i}" for i in range(items)]
        self.counts: list[float] = []

    async def refresh_popularity(self, reader: Any) -> None:
        rows = (await reader.read([(VIEW, [(i,) for i in self.items])]))[0]
        self.counts = [float(values[0]) if values else 0.0 for _, values in rows]

    def popular(self, k: int) -> tuple[list[Any], list[float], list[str]]:
        top = self.items[:k] if self.counts else []  # nothing before a read succeeded
        return top, self.counts[:k], top


def test_a_retrieval_service_loads_popularity_past_the_request_budget(tmp_path: Path) -> None:
    # The whole catalogue's counts took 194-622 ms under load, read under the 50 ms budget of
    # one request: they never loaded, and every fallback answered an empty list.
    settings = ServingSettings(home=tmp_path, user_hash_secret="unit-secret", log_json=False,
                               registry_poll_seconds=0, request_log_sample=0.0,
                               latency_budget_ms=1.0, use_case="movielens")
    spec = load_spec("movielens", settings.feature_repo)
    holder = ModelHolder(spec, None, {"champion": "champion"},  # type: ignore[arg-type]
                         settings.models_dir, InMemoryRegistry())
    metrics = ServingMetrics(use_case="movielens")
    prediction_log = PredictionLog(settings.served_dir("movielens"), 0.0, 5.0,
                                   on_drop=metrics.request_log_dropped)
    service = build_service(settings, spec, holder, SlowReader(0.05), metrics, prediction_log)
    scorer = FakePopularity(items=9742)
    holder.install([ServedModel("champion", "1", "run-1", scorer, "registry", 0.0)])  # type: ignore[arg-type]

    asyncio.run(service.refresh_popular())
    assert service.popular[HOUR] == scorer.items[:settings.max_k]
    assert service.features.breaker.state == CircuitState.CLOSED  # not the request path's failure
    service.prediction_log.close()


def test_warm_up_scores_each_model_once_off_the_books(service: PredictionService) -> None:
    reader = StubReader(down=False)
    service.features.reader = reader  # type: ignore[assignment]
    install_fake_model(service, "7")
    assert service.warmed == set()
    assert asyncio.run(service.warm_up()) is True
    assert service.warmed == {"7"} and reader.calls == 1
    assert fallback_counts(service.metrics) == {}  # not a request: nothing counted
    assert service.features.breaker.state == CircuitState.CLOSED
    reader.down = True  # a store that fails at start: logged, the breaker untouched
    assert asyncio.run(service.warm_up([install_fake_model(service, "8")])) is False
    assert service.warmed == {"7"} and service.features.breaker.consecutive == 0


def test_predict_without_a_model_answers_from_the_fallbacks_and_counts_them(
        service: PredictionService) -> None:
    static = list(service.spec.candidates.static_default)

    async def run() -> list[Any]:
        out = [await service.predict(USER, AT_0805_UTC, CONTEXT, 3, "r1")]  # static_default
        service.popular[HOUR] = ["pop-1", "pop-2", "pop-3", "pop-4"]
        out += [await service.predict(USER, AT_0805_UTC, CONTEXT, 2, f"r{i}") for i in (2, 3)]
        service.bundles[USER] = (5, hour_lists(5))  # hour 8 is list 3
        out += [await service.predict(USER, AT_0805_UTC, CONTEXT, 4, f"r{i}") for i in (4, 5, 6)]
        out.append(await service.predict("b" * 32, AT_0805_UTC + 3_600_000_000, CONTEXT, 4, "r7"))
        return out

    answers = asyncio.run(run())
    assert [a.fallback for a in answers] == (["static_default"] + ["popular_at_hour"] * 2
                                             + ["user_hour"] * 3 + ["static_default"])
    assert answers[0].items == static[:3] and len(answers[0].scores) == 3
    assert answers[1].items == ["pop-1", "pop-2"]
    assert answers[3].items == ["for-8", "x", "y"]
    assert answers[6].items == static[:4]  # another user at 09:00: no bundle, no popular list
    assert all(a.model_version is None and a.variant == "champion" for a in answers)
    assert fallback_counts(service.metrics) == {"static_default": 2, "popular_at_hour": 2,
                                                "user_hour": 3}


class NoCandidatesRanker(FakeRanker):
    """An unknown user whose online popular list is missing: nothing to rank."""

    async def score(self, requests: Sequence[ScoreRequest], reader: Any, k: int,
                    timings: dict[str, float] | None = None) -> list[Scored]:
        return [Scored([], [], False) for _ in requests]


def test_no_candidates_online_is_answered_by_the_fallbacks_never_empty(
        service: PredictionService) -> None:
    service.holder.install([ServedModel("champion", "7", "run-1", NoCandidatesRanker(),  # type: ignore[arg-type]
                                        "registry", 0.0)])
    first = asyncio.run(service.predict(USER, AT_0805_UTC, CONTEXT, 3, "r1"))
    service.popular[HOUR] = ["pop-1", "pop-2"]
    second = asyncio.run(service.predict("c" * 32, AT_0805_UTC, CONTEXT, 3, "r2"))
    assert (first.fallback, first.items) == ("static_default",
                                             list(service.spec.candidates.static_default)[:3])
    assert (second.fallback, second.items, second.model_version) == (
        "popular_at_hour", ["pop-1", "pop-2"], "7")


def test_predict_with_the_store_down_serves_a_stale_prediction_then_the_chain(
        service: PredictionService, reader: StubReader) -> None:
    install_fake_model(service, "7")
    clock = FakeClock()
    service.l1.clock = service.features.cache.clock = clock  # L1 predictions and L2 features
    service.popular[HOUR] = ["pop-1", "pop-2"]

    async def run() -> list[Any]:
        reader.down = False
        out = [await service.predict(USER, AT_0805_UTC, CONTEXT, 2, "r1")]  # scored, cached
        reader.down = True
        out.append(await service.predict(USER, AT_0805_UTC, CONTEXT, 2, "r2"))  # a fresh L1 hit
        clock.now += service.l1.ttl_seconds + 1
        out.append(await service.predict(USER, AT_0805_UTC, CONTEXT, 2, "r3"))  # store down: stale
        out.append(await service.predict("b" * 32, AT_0805_UTC, CONTEXT, 2, "r4"))  # never cached
        return out

    scored, hit, stale, other = asyncio.run(run())
    assert (scored.fallback, scored.items, scored.model_version) == (None, ["mail", "maps"], "7")
    assert hit.cached is True and hit.items == ["mail", "maps"] and hit.fallback is None
    assert (stale.fallback, stale.items, stale.model_version) == ("cache", ["mail", "maps"], "7")
    assert (other.fallback, other.items) == ("popular_at_hour", ["pop-1", "pop-2"])
    assert fallback_counts(service.metrics) == {"cache": 1, "popular_at_hour": 1}
    errors = service.metrics.registry.get_sample_value("feastflow_errors_total",
                                                       {"use_case": "next_app",
                                                        "type": "OnlineStoreError"})
    assert errors == 2


def test_predict_never_raises_and_an_open_circuit_stops_calling_the_store(
        service: PredictionService, reader: StubReader) -> None:
    install_fake_model(service, "7")
    failures = service.settings.breaker_failures

    async def run() -> list[Any]:
        return [await service.predict(f"{i:032x}", AT_0805_UTC, CONTEXT, 4, f"r{i}")
                for i in range(failures + 5)]

    answers = asyncio.run(run())
    assert all(a.fallback == "static_default" and a.model_version == "7" for a in answers)
    assert reader.calls == failures  # once open, the breaker refuses without trying the store
    assert service.features.breaker.state == CircuitState.OPEN
    assert fallback_counts(service.metrics) == {"static_default": failures + 5}
    assert service.metrics.registry.get_sample_value(
        "feastflow_errors_total", {"use_case": "next_app", "type": "CircuitOpen"}) == 5
    assert service.metrics.registry.get_sample_value(
        "feastflow_circuit_state", {"use_case": "next_app", "name": "online_store"}) == 1


def test_a_cancelled_half_open_trial_does_not_wedge_the_store_breaker() -> None:
    """The half-open breaker lets one trial through and then refuses everything until that trial
    reports. A trial cancelled while it reads (the bundle endpoint's outer `wait_for`, shutdown)
    reports neither success nor failure, so the breaker must not wait for it forever."""
    hanging = StubReader(down=False)

    async def never(reads: Any) -> Any:
        await asyncio.sleep(3600)

    hanging.read = never  # type: ignore[method-assign]
    clock = FakeClock()
    breaker = CircuitBreaker("online_store", 1, 2.0, clock=clock)
    cached = CachedReader(hanging, TTLCache(0.0, 1), breaker, 60.0, ServingMetrics())  # type: ignore[arg-type]
    breaker.failure("down")
    clock.now += 2.0

    async def run() -> None:
        trial = asyncio.ensure_future(cached.read([(VIEW, [("u",)])]))
        await asyncio.sleep(0.01)
        assert breaker.state == CircuitState.HALF_OPEN
        trial.cancel()
        with pytest.raises(asyncio.CancelledError):
            await trial

    asyncio.run(run())
    clock.now += 60.0  # long after: the store would be tried again by now
    assert breaker.allow(), f"breaker stuck {breaker.state.name} after its trial was cancelled"


def test_the_circuit_open_error_names_the_last_store_error() -> None:
    breaker = CircuitBreaker("online_store", 1, 2.0, clock=FakeClock())
    cached = CachedReader(StubReader(down=True), TTLCache(0.0, 1), breaker, 60.0,  # type: ignore[arg-type]
                          ServingMetrics())

    async def run() -> None:
        with pytest.raises(OnlineStoreError):
            await cached.read([(VIEW, [("u",)])])
        with pytest.raises(CircuitOpen, match="connection refused"):
            await cached.read([(VIEW, [("u",)])])

    asyncio.run(run())


def test_a_registry_poll_asks_each_alias_and_nothing_else(service: PredictionService) -> None:
    # A poll runs on a thread and competes with the event loop for the GIL: it asks each alias's
    # version and nothing else while the aliases do not move.
    registry = InMemoryRegistry()
    registry.aliases[service.spec.registered_model_name, "champion"] = "7"
    holder = service.holder
    holder.registry = registry
    install_fake_model(service, "7")
    registry.down = True
    assert holder.check_registry() == []
    assert holder.registry_error is not None and "down" in holder.registry_error
    registry.down = False
    for _ in range(3):
        assert holder.check_registry() == []  # the alias still points at the loaded version
    assert holder.registry_error is None
    assert registry.calls == ["alias_version", *["alias_version"] * 2 * 3]


# --- per-event use cases (classification, regression) -----------------------------------------

LOAN = {"zipcode": 11930, "person_age": 26, "person_income": 52000, "person_home_ownership": "RENT",
        "person_emp_length": 3.0, "loan_intent": "EDUCATION", "loan_amnt": 8000, "loan_int_rate": 11.49}


class FakeEventScorer:
    """Reads the store through the service's reader, then scores loan_amnt / 20000 (a value the
    whole request decides: two amounts, two answers)."""

    feature_names: ClassVar[list[str]] = ["loan_amnt"]

    def __init__(self) -> None:
        self.scored = 0

    async def score(self, requests: Sequence[ScoreRequest], reader: Any, k: int = 1,
                    timings: dict[str, float] | None = None) -> list[Scored]:
        await reader.read([(VIEW, [(r.entity,) for r in requests])])
        self.scored += len(requests)
        return [Scored([], [r.context["loan_amnt"] / 20000], True,
                       np.array([[float(r.context["loan_amnt"])]])) for r in requests]


def make_event_service(home: Path, reader: StubReader, use_case: str = "credit_score",
                       serving: dict[str, Any] | None = None, **overrides: Any) -> EventService:
    settings = ServingSettings(home=home, user_hash_secret="unit-secret", log_json=False,
                               registry_poll_seconds=0, request_log_sample=0.0,
                               latency_budget_ms=5000.0, use_case=use_case, **overrides)
    spec = load_spec(use_case, settings.feature_repo)
    if serving is not None:
        spec = spec.model_copy(update={"serving": spec.serving.model_copy(update=serving)})
    holder = ModelHolder(spec, None, {"champion": "champion", "challenger": "challenger"},  # type: ignore[arg-type]
                         settings.models_dir, InMemoryRegistry())
    metrics = ServingMetrics(use_case=use_case)
    prediction_log = PredictionLog(settings.served_dir(use_case), 0.0, 5.0,
                                   on_drop=metrics.request_log_dropped)
    service = build_service(settings, spec, holder, reader, metrics, prediction_log)
    assert isinstance(service, EventService)
    return service


def test_a_per_event_service_decides_from_the_score_and_never_caches_by_default(tmp_path: Path) -> None:
    reader = StubReader(down=False)
    service = make_event_service(tmp_path, reader)
    scorer = FakeEventScorer()
    service.holder.install([ServedModel("champion", "3", "run-1", scorer, "registry", 0.0)])  # type: ignore[arg-type]
    assert not service.l1.enabled  # per-event: off unless the spec turns it on

    async def run() -> list[Answer]:
        return [await service.predict("dob-hash", AT_0805_UTC, {**LOAN, "loan_amnt": amount}, 1, "r")
                for amount in (8000, 8000, 12000)]

    low, again, high = asyncio.run(run())
    assert (low.scores, low.decision, low.fallback, low.known_user) == ([0.4], "approve", None, True)
    assert again.cached is False and scorer.scored == 3  # scored every time: no L1
    assert (high.scores, high.decision) == ([0.6], "deny")  # threshold 0.5: above -> deny
    service.prediction_log.close()


def test_a_review_band_answers_review(tmp_path: Path) -> None:
    service = make_event_service(tmp_path, StubReader(down=False), serving={
        "decision": DecisionSpec(threshold=0.5, above="deny", below="approve", review_band=(0.35, 0.65))})
    assert [service.decide(s) for s in (0.1, 0.35, 0.5, 0.649, 0.65, 0.9)] == [
        "approve", "review", "review", "review", "deny", "deny"]
    service.prediction_log.close()


def test_a_per_event_cache_is_keyed_on_the_whole_request(tmp_path: Path) -> None:
    reader = StubReader(down=False)
    service = make_event_service(tmp_path, reader, serving={"cache": True})
    scorer = FakeEventScorer()
    service.holder.install([ServedModel("champion", "3", "run-1", scorer, "registry", 0.0)])  # type: ignore[arg-type]
    assert service.l1.enabled

    async def run() -> list[Answer]:
        same_hour = AT_0805_UTC + 60_000_000  # a minute later: same entity, same hour
        return [await service.predict("dob-hash", AT_0805_UTC, LOAN, 1, "r1"),
                await service.predict("dob-hash", same_hour, {**LOAN, "loan_amnt": 12000}, 1, "r2"),
                await service.predict("dob-hash", AT_0805_UTC, LOAN, 1, "r3")]

    first, other_amount, repeat = asyncio.run(run())
    assert first.scores == [0.4] and first.cached is False
    assert other_amount.scores == [0.6] and other_amount.cached is False  # never the cached one
    assert repeat.scores == [0.4] and repeat.cached is True  # the very same request: a hit
    assert scorer.scored == 2
    service.prediction_log.close()


def test_a_per_event_service_answers_its_default_when_the_store_is_down(tmp_path: Path) -> None:
    reader = StubReader(down=True)
    service = make_event_service(tmp_path, reader, breaker_failures=2)
    service.holder.install([ServedModel("champion", "3", "run-1", FakeEventScorer(), "registry", 0.0)])  # type: ignore[arg-type]

    async def run() -> list[Answer]:
        return [await service.predict(f"{i:032x}", AT_0805_UTC, LOAN, 1, f"r{i}") for i in range(4)]

    answers = asyncio.run(run())
    for answer in answers:  # the spec's serving.default: score 0.22, decision review
        assert (answer.scores, answer.decision, answer.fallback) == ([0.22], "review", "static_default")
        assert answer.model_version == "3" and answer.known_user is None  # cannot tell
    assert reader.calls == 2  # the breaker opened after two failures
    assert fallback_counts(service.metrics) == {"static_default": 4}
    service.prediction_log.close()


def test_a_stale_per_event_answer_beats_the_default_when_caching_is_on(tmp_path: Path) -> None:
    reader = StubReader(down=False)
    service = make_event_service(tmp_path, reader, serving={"cache": True})
    clock = FakeClock()
    service.l1.clock = service.features.cache.clock = clock  # L1 predictions and L2 features
    service.holder.install([ServedModel("champion", "3", "run-1", FakeEventScorer(), "registry", 0.0)])  # type: ignore[arg-type]

    async def run() -> list[Answer]:
        out = [await service.predict("dob-hash", AT_0805_UTC, LOAN, 1, "r1")]
        clock.now += 10 * service.l1.ttl_seconds
        reader.down = True
        out.append(await service.predict("dob-hash", AT_0805_UTC, LOAN, 1, "r2"))
        out.append(await service.predict("dob-hash", AT_0805_UTC, {**LOAN, "loan_amnt": 9000}, 1, "r3"))
        return out

    fresh, stale, other = asyncio.run(run())
    assert (stale.scores, stale.decision, stale.fallback) == (fresh.scores, fresh.decision, "cache")
    assert (other.scores, other.fallback) == ([0.22], "static_default")
    service.prediction_log.close()


def test_a_regression_service_answers_its_prediction_or_its_default(tmp_path: Path) -> None:
    reader = StubReader(down=False)
    service = make_event_service(tmp_path, reader, use_case="taxi_eta")
    trip = {"dropoff_community_area": 8, "pickup_latitude": None, "pickup_longitude": None,
            "dropoff_latitude": None, "dropoff_longitude": None, "company": None}

    class Eta(FakeEventScorer):
        async def score(self, requests: Sequence[ScoreRequest], reader: Any, k: int = 1,
                        timings: dict[str, float] | None = None) -> list[Scored]:
            await reader.read([(VIEW, [(r.entity,) for r in requests])])
            return [Scored([], [600.0 + r.entity], False, np.array([[1.0]])) for r in requests]

    async def run() -> list[Answer]:
        out = [await service.predict(76, AT_0805_UTC, trip, 1, "r1")]  # no model: the default
        service.holder.install([ServedModel("champion", "5", "run-1", Eta(), "registry", 0.0)])  # type: ignore[arg-type]
        out.append(await service.predict(76, AT_0805_UTC, trip, 1, "r2"))
        return out

    default, predicted = asyncio.run(run())
    assert (default.scores, default.fallback, default.decision) == ([540.0], "static_default", None)
    assert (predicted.scores, predicted.fallback, predicted.known_user) == ([676.0], None, False)
    service.prediction_log.close()
