"""Replay recorded events through a running server as if they happened now, in time order.

For each event: ask the server for a prediction at the event's time and context (for a
sampled share of events), then POST the event itself, as a phone would. Events go in rounds
that hold at most one event per user, and a round waits until the stream processor has put
its events online (the spec's `realtime.freshness_feature`), so every prediction sees every
earlier event of its user, as in production where an entity's events are seconds or minutes apart.

At each day boundary `on_day(day)` runs the daily batch job (feature tables, materialize) once
the event log holds the whole previous day, as a scheduler would. This makes a replay's
served log comparable with the offline point-in-time features: the input of the skew check.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pandas as pd

from feastflow.privacy import hash_user_id
from feastflow.settings import Settings
from feastflow.spec import ModelSpec

MAX_ROUND = 200  # events per POST /v1/events (the server takes up to 500)
CONCURRENT_PREDICTIONS = 8
Progress = Callable[[int], None]


@dataclass
class ReplayStats:
    """What a replay sent and what came back."""

    events: int = 0
    predictions: int = 0
    rounds: int = 0
    days: int = 0  # daily jobs run
    fallbacks: Counter[str] = field(default_factory=Counter)
    variants: Counter[str] = field(default_factory=Counter)
    visible_ms: list[float] = field(default_factory=list)  # per round: POST -> online
    materializations: int = 0  # batch_views_as_of: rounds that brought the batch views on
    rounds_ended_by_rows: int = 0  # batch_views_as_of: rounds ended where a batch row moved
    seconds: float = 0.0
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)  # event id -> the answer


def rounds(events: pd.DataFrame, entity: str, timestamp: str, max_size: int = MAX_ROUND,
           ends_round: Callable[[int, int], bool] | None = None) -> Iterator[pd.DataFrame]:
    """Consecutive slices of the time-ordered events, each within one UTC day and holding at
    most one event per entity; `ends_round(first, i)` (positions) also starts a new one at i."""
    start = 0
    seen: set[Any] = set()
    users = events[entity].tolist()
    days = events[timestamp].dt.floor("D").tolist()
    for i, user in enumerate(users):
        if (user in seen or i - start >= max_size or days[i] != days[start]
                or (ends_round is not None and i > start and ends_round(start, i))):
            yield events.iloc[start:i]
            start, seen = i, set()
        seen.add(user)
    if start < len(users):
        yield events.iloc[start:]


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value.item() if hasattr(value, "item") else value


def event_body(row: dict[str, Any], spec: ModelSpec) -> dict[str, Any]:
    """One event as POST /v1/{use_case}/events takes it."""
    return {k: _jsonable(row[k]) for k in spec.event_log.columns
            if k in row and _jsonable(row[k]) is not None}


def predict_body(row: dict[str, Any], spec: ModelSpec, k: int) -> dict[str, Any]:
    """The prediction request a client would send at this event (`k` for a ranking only)."""
    log = spec.event_log
    context = {name: _jsonable(row[name]) for name in log.context}
    body = {log.entity: _jsonable(row[log.entity]), "timestamp": _jsonable(row[log.timestamp]),
            "context": {n: v for n, v in context.items() if v is not None}}
    return body if spec.per_event else {**body, "k": k}


def daily_job(settings: Settings, spec: ModelSpec, since: pd.Timestamp) -> None:
    """What a scheduler runs each night: feature tables from the log, then the rows stamped
    since `since` into the online store."""
    from pipelines.feast_ops import materialize
    from pipelines.features import compute_feature_tables

    compute_feature_tables(settings, spec)
    materialize(settings, spec.name, start=since.to_pydatetime())


class BatchViewsAsOf:
    """A per-event replay's batch views online as of each round, as offline reads them.

    Offline, an event reads each batch view's row as of just before it (`as_of`). A
    label-delayed view moves during the day, as labels become known, so a materialization at
    midnight serves it stale. Here `before_round(t)` writes the batch views' rows stamped up to
    just before the round's first event (the first time Feast's materialize of every view, then
    the rows read from the tables once, through the Redis writer: a materialize call per round
    costs seconds), and `ends_round` starts a new round at an event whose keys have a row that
    changed since. Not batch rows: views the stream feeds, and the features the server
    evaluates at the request's time (`realtime.at_request`). The tables must hold the replayed
    days' rows (`compute_feature_tables(through=...)`), and nothing may have materialized rows
    later than the replay's present (newer rows win).
    """

    def __init__(self, settings: Settings, spec: ModelSpec, events: pd.DataFrame) -> None:
        from feastflow.errors import InputError
        from feastflow.online_writer import RedisOnlineWriter, WriteLayout
        from feastflow.ranking import REQUEST_ID, event_rows
        from feastflow.scoring import FeaturePlan
        from feastflow.store import open_store

        self.settings, self.spec = settings, spec
        store = open_store(settings, spec.name)
        plan = FeaturePlan.from_store(store, spec)
        self.views = [v for v in (*plan.stage1, *plan.stage2) if not v.realtime]
        at_request = plan.at_request
        computed: set[str] = set()
        if at_request is not None:
            computed = set(at_request.function(dict.fromkeys(at_request.source.features), 0))
        self.compared = {v.name: [f for f in v.features
                                  if not (at_request and v.name == at_request.view
                                          and f in computed)] for v in self.views}
        feature_views = {v.name: store.get_feature_view(v.name) for v in self.views}
        self.sources: dict[str, Any] = {name: view.batch_source
                                        for name, view in feature_views.items()}
        try:
            self.writer: RedisOnlineWriter | None = RedisOnlineWriter.from_repo_config(
                store.config, connections=1)
            self.layouts = {name: WriteLayout.from_view(view, store.config)
                            for name, view in feature_views.items()}
        except InputError:  # not a single Redis server: Feast's materialize every round
            self.writer = None
        log = spec.event_log
        requests = events.assign(**{
            REQUEST_ID: range(len(events)),
            log.entity: [hash_user_id(u, settings.user_hash_secret) for u in events[log.entity]]})
        keys = event_rows(requests, spec)
        self.event_keys = {v.name: list(zip(*(keys[k].tolist() for k in v.join_keys),
                                            strict=True)) for v in self.views}
        self.event_us = (events[log.timestamp].astype("datetime64[us, UTC]")
                         .astype("int64").to_numpy())
        self.materialized_to: pd.Timestamp | None = None
        self.materializations = 0
        self.rounds_ended = 0
        self.changes: dict[str, dict[tuple[Any, ...], np.ndarray]] = {}
        self.rows: dict[str, tuple[np.ndarray, Any]] = {}  # view -> (row times, Arrow rows)
        self._load(int(self.event_us[0]), int(self.event_us[-1]))

    def _load(self, since_us: int, until_us: int) -> None:
        """Per view, its rows stamped in [since, until] and, per key, when in that span a
        compared feature (or the row's existence) changed."""
        import duckdb

        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        span = [pd.Timestamp(since_us, unit="us", tz="UTC").to_pydatetime(),
                pd.Timestamp(until_us, unit="us", tz="UTC").to_pydatetime()]
        for view in self.views:
            source = self.sources[view.name]
            ts, created = source.timestamp_field, source.created_timestamp_column
            keys = ", ".join(f'"{k}"' for k in view.join_keys)
            values = ", ".join(f'"{f}"' for f in self.compared[view.name]) or "1"
            order = f'"{ts}"' + (f', "{created}"' if created else "")
            frame = con.execute(f"""
                SELECT {keys}, epoch_us(ts) AS us FROM (
                    SELECT {keys}, "{ts}" AS ts, row({values}) IS DISTINCT FROM
                        lag(row({values})) OVER (PARTITION BY {keys} ORDER BY {order}) AS moved
                    FROM read_parquet(?) WHERE "{ts}" <= ?)
                WHERE moved AND ts >= ? ORDER BY us""", [source.path, span[1], span[0]]).df()
            grouped: dict[tuple[Any, ...], list[int]] = {}
            for *key, us in frame.itertuples(index=False):
                grouped.setdefault(tuple(key), []).append(us)
            self.changes[view.name] = {k: np.array(v, dtype=np.int64) for k, v in grouped.items()}
            rows = con.sql(f'SELECT * FROM read_parquet($1) WHERE "{ts}" BETWEEN $2 AND $3 '
                           f"ORDER BY {order}", params=[source.path, *span]).to_arrow_table()
            times = (rows.column(ts).to_pandas().astype("datetime64[us, UTC]")
                     .astype("int64").to_numpy())
            self.rows[view.name] = (times, rows)
        con.close()

    def ends_round(self, first: int, i: int) -> bool:
        """Whether event i would read a batch row that changed since event `first` (the round's
        start, up to which the views are online)."""
        since, until = self.event_us[first], self.event_us[i]
        for view in self.views:
            times = self.changes[view.name].get(self.event_keys[view.name][i])
            if times is not None:
                j = int(np.searchsorted(times, since))
                if j < len(times) and times[j] < until:
                    self.rounds_ended += 1
                    return True
        return False

    def before_round(self, first_event: pd.Timestamp) -> None:
        """The batch views online up to just before the round's first event."""
        end = first_event - pd.Timedelta(microseconds=1)
        if self.materialized_to is not None and end <= self.materialized_to:
            return
        if self.materialized_to is None or self.writer is None:
            from pipelines.feast_ops import materialize

            # the first time every view, the stream's own too (a card's payments before the
            # replay: else its first payment reads the batch windows as of the round's start)
            first = self.materialized_to is None
            materialize(self.settings, self.spec.name,
                        start=None if first else self.materialized_to.to_pydatetime(),
                        end=end.to_pydatetime(),
                        views=None if first else [v.name for v in self.views])
        else:
            after, upto = self.materialized_to.value // 1000, end.value // 1000
            for view in self.views:
                times, rows = self.rows[view.name]
                lo, hi = np.searchsorted(times, [after, upto], side="right")
                if hi > lo:  # newer wins in the writer, as in Feast's materialize
                    source = self.sources[view.name]
                    self.writer.write(self.layouts[view.name], rows.slice(lo, hi - lo),
                                      source.timestamp_field,
                                      source.created_timestamp_column or None)
        self.materialized_to = end
        self.materializations += 1

    def close(self) -> None:
        """Close the writer's connections."""
        if self.writer is not None:
            self.writer.close()


def wait_for_log(settings: Settings, spec: ModelSpec, event_ids: list[str],
                 timeout_s: float = 120.0) -> None:
    """Block until every one of these events is in the use case's offline event log (the
    processor's writer appends every couple of seconds)."""
    from pipelines.features import event_log_connection

    deadline = time.monotonic() + timeout_s
    log = spec.event_log
    # the view reads the files at each query
    con = event_log_connection(settings.events_dir(spec.name), log.timestamp)
    con.register("wanted", pd.DataFrame({"id": event_ids}))
    query = (f'SELECT count(DISTINCT "{log.event_id}") FROM events '
             f'WHERE "{log.event_id}" IN (SELECT id FROM wanted)')
    while True:
        n = con.execute(query).fetchone()[0]
        if n >= len(event_ids):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the event log holds {n} of {len(event_ids)} replayed events "
                               f"after {timeout_s:.0f} s")
        time.sleep(0.2)


class OnlineWatcher:
    """Reads the spec's freshness feature to see when events have reached the online store."""

    def __init__(self, settings: Settings, spec: ModelSpec) -> None:
        from feastflow.store import open_store

        if spec.realtime is None or spec.realtime.freshness_feature is None:
            raise ValueError(f"{spec.name}: replay needs realtime.freshness_feature in the spec")
        self.feature = spec.realtime.freshness_feature
        self.name = self.feature.split(":", 1)[1]
        self.entity = spec.event_log.entity
        self.timestamp = spec.event_log.timestamp
        self.secret = settings.user_hash_secret
        self.store = open_store(settings, spec.name)

    def wait(self, round_: pd.DataFrame, timeout_s: float = 60.0) -> None:
        """Block until each user's last event time online is at least the round's event."""
        users = [hash_user_id(u, self.secret) for u in round_[self.entity]]
        wanted = [int(ts.timestamp()) for ts in round_[self.timestamp]]
        deadline = time.monotonic() + timeout_s
        while True:
            values = self.store.get_online_features(
                [self.feature], [{self.entity: u} for u in users]).to_dict()[self.name]
            if all(v is not None and v >= w for v, w in zip(values, wanted, strict=True)):
                return
            if time.monotonic() > deadline:
                raise TimeoutError("replayed events did not reach the online store in "
                                   f"{timeout_s:.0f} s")
            time.sleep(0.005)


async def _post(client: httpx.AsyncClient, limit: asyncio.Semaphore, path: str,
                body: dict[str, Any]) -> httpx.Response:
    async with limit:
        return await client.post(path, json=body)


async def _replay(client: httpx.AsyncClient, settings: Settings, spec: ModelSpec,
                  events: pd.DataFrame, api_key: str, predict_share: float, seed: int,
                  on_day: Callable[[pd.Timestamp], None] | None, progress: Progress | None,
                  k: int, max_round: int, before_round: Callable[[pd.Timestamp], None] | None,
                  keep_answers: bool, ends_round: Callable[[int, int], bool] | None
                  ) -> ReplayStats:
    stats = ReplayStats()
    started = time.perf_counter()
    limit = asyncio.Semaphore(CONCURRENT_PREDICTIONS)
    draw = random.Random(seed)
    watcher = OnlineWatcher(settings, spec)
    headers = {"x-api-key": api_key}
    ts = spec.event_log.timestamp
    day: pd.Timestamp | None = None
    day_ids: list[str] = []
    for round_ in rounds(events, spec.event_log.entity, ts, max_round, ends_round):
        round_day = round_[ts].iloc[0].floor("D")
        if day is not None and round_day > day:
            # the daily job runs once the log holds the whole finished day
            wait_for_log(settings, spec, day_ids)
            if on_day is not None:
                on_day(round_day)
                stats.days += 1
            day_ids = []
        day = round_day
        if before_round is not None:
            await asyncio.to_thread(before_round, round_[ts].iloc[0])
        rows = round_.to_dict("records")
        asked = [r for r in rows if draw.random() < predict_share]
        answers = await asyncio.gather(*(
            _post(client, limit, f"/v1/{spec.name}/predict", predict_body(r, spec, k))
            for r in asked))
        for row, response in zip(asked, answers, strict=True):
            if response.status_code != 200:
                raise RuntimeError(f"/v1/{spec.name}/predict answered {response.status_code}: "
                                   f"{response.text[:300]}")
            body = response.json()
            if keep_answers:
                stats.answers[str(row[spec.event_log.event_id])] = body
            stats.fallbacks[body.get("fallback") or "model"] += 1
            stats.variants[body.get("variant", "?")] += 1
        sent = time.perf_counter()
        response = await client.post(f"/v1/{spec.name}/events", headers=headers,
                                     json={"events": [event_body(r, spec) for r in rows]})
        if response.status_code != 202 or response.json().get("rejected"):
            raise RuntimeError(f"/v1/{spec.name}/events answered {response.status_code}: "
                               f"{response.text[:300]}")
        await asyncio.to_thread(watcher.wait, round_)
        stats.visible_ms.append((time.perf_counter() - sent) * 1000)
        stats.events += len(rows)
        stats.predictions += len(asked)
        stats.rounds += 1
        day_ids.extend(str(r[spec.event_log.event_id]) for r in rows)
        if progress is not None:
            progress(len(rows))
    stats.seconds = time.perf_counter() - started
    return stats


def replay_events(url: str, api_key: str, settings: Settings, spec: ModelSpec,
                  events: pd.DataFrame, predict_share: float = 1.0, seed: int = 0,
                  on_day: Callable[[pd.Timestamp], None] | None = None,
                  progress: Progress | None = None, k: int = 4, max_round: int = MAX_ROUND,
                  before_round: Callable[[pd.Timestamp], None] | None = None,
                  keep_answers: bool = False, batch_views_as_of: bool = False) -> ReplayStats:
    """Replay raw events (raw user ids) through the server at `url` in time order; see above.

    `before_round(t)` runs before each round's predictions (t: its first event's time);
    `keep_answers` keeps every answer by event id (online metrics, skew against offline);
    `batch_views_as_of` serves the batch views as of each event (`BatchViewsAsOf`, after
    `before_round`)."""
    if not 0.0 <= predict_share <= 1.0:
        raise ValueError(f"predict_share must be in [0, 1], got {predict_share}")
    ts = spec.event_log.timestamp
    events = events.sort_values([ts, spec.event_log.event_id], ignore_index=True)
    events[ts] = pd.to_datetime(events[ts], utc=True)
    ends_round = None
    if batch_views_as_of and len(events):
        as_of = BatchViewsAsOf(settings, spec, events)
        ends_round = as_of.ends_round
        before_round = _then(before_round, as_of.before_round)

    async def run() -> ReplayStats:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            return await _replay(client, settings, spec, events, api_key, predict_share, seed,
                                 on_day, progress, k, max_round, before_round, keep_answers,
                                 ends_round)

    try:
        stats = asyncio.run(run())
    finally:
        if ends_round is not None:
            as_of.close()
    if ends_round is not None:
        stats.materializations = as_of.materializations
        stats.rounds_ended_by_rows = as_of.rounds_ended
    return stats


def _then(first: Callable[[pd.Timestamp], None] | None, second: Callable[[pd.Timestamp], None]
          ) -> Callable[[pd.Timestamp], None]:
    """`first` (if any), then `second`, with the same argument."""
    def both(moment: pd.Timestamp) -> None:
        if first is not None:
            first(moment)
        second(moment)
    return both


def online_beside_offline(settings: Settings, spec: ModelSpec, stats: ReplayStats,
                          top_k: int = 100) -> dict[str, Any]:
    """A classifier's replay: the served scores beside the same model's scores on Feast's
    point-in-time rows of the same events (feature tables recomputed from the log the processor
    wrote first: `compute_feature_tables`), with average precision and card precision@k per
    day of each, and how far the scores differ.

    The model is the champion, which must be the version that answered (else ValueError).
    """
    from sklearn import metrics as skm

    from feastflow.ranking import REQUEST_ID
    from feastflow.store import open_store
    from pipelines.datasets import build_event_set
    from pipelines.features import event_log_connection
    from pipelines.protocols import precision_at_k_per_day
    from pipelines.training import score
    from registry import lifecycle

    log = spec.event_log
    versions = {body.get("model_version") for body in stats.answers.values()}
    if len(versions) != 1 or None in versions:
        raise ValueError(f"the replay was answered by model versions {sorted(map(str, versions))}"
                         ": compare one version at a time")
    version = str(versions.pop())
    con = event_log_connection(settings.events_dir(spec.name), log.timestamp)
    con.register("answered", pd.DataFrame({"id": list(stats.answers)}))
    events = con.execute(f'SELECT * FROM all_events WHERE "{log.event_id}" IN '
                         f'(SELECT id FROM answered) ORDER BY "{log.timestamp}", '
                         f'"{log.event_id}"').df()
    events[log.timestamp] = pd.to_datetime(events[log.timestamp], utc=True).astype(
        "datetime64[us, UTC]")
    events.insert(0, REQUEST_ID, range(len(events)))
    rows = build_event_set(open_store(settings, spec.name), events, spec)
    registry = lifecycle.Registry(settings.tracking_uri, settings.artifacts_uri)
    loaded = registry.load_by_alias(spec.registered_model_name, lifecycle.CHAMPION)
    if loaded.version != version:
        raise ValueError(f"the replay was answered by v{version}, the champion is now "
                         f"v{loaded.version}")
    booster = loaded.booster
    offline = score(booster, rows, spec.model.categorical)["score"].to_numpy()
    ordered = events.set_index(REQUEST_ID).loc[rows[REQUEST_ID]]
    online = np.array([stats.answers[str(e)]["score"] for e in ordered[log.event_id]])
    labels = ordered[log.label_column].to_numpy()
    cards = ordered[log.entity].to_numpy()
    days = ordered[log.timestamp].dt.floor("D").to_numpy()

    def figures(scores: np.ndarray) -> dict[str, float]:
        return {"ap": round(float(skm.average_precision_score(labels, scores)), 6),
                f"cp{top_k}": round(precision_at_k_per_day(cards, days, labels, scores, top_k),
                                    6)}

    gap = np.abs(online - offline)
    return {"use_case": spec.name, "model_version": version, "events": len(rows),
            "start": str(ordered[log.timestamp].min()), "end": str(ordered[log.timestamp].max()),
            "online": figures(online), "offline": figures(offline),
            "max_abs_score_difference": float(gap.max()),
            "share_over_1e-6": round(float((gap > 1e-6).mean()), 6)}
