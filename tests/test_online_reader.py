"""The fast online path equals Feast's public API, on the real Redis of `served_world`.

`feastflow.online` reads Feast's Redis layout directly and `feastflow.scoring` scores from it
without pandas. Every test here compares that path with what Feast itself answers
(`_redis_key`, `get_online_features`, on-demand views computed by Feast) and with the training
code (`candidate_rows`, `model_matrix`): no mocks, the world's real Redis and model.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest
import redis
from feast import FeatureStore
from feast.infra.online_stores.helpers import _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import feast_value_type_to_python_type
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

import feastflow.online as online
from feastflow.online import (
    MISSING,
    FeastReader,
    KeyEncoder,
    OnlineReader,
    RedisReader,
    Row,
    ValueDecoder,
    ViewLayout,
    view_layouts,
)
from feastflow.privacy import hash_user_id
from feastflow.ranking import (
    REQUEST_ID,
    candidate_rows,
    entity_rows,
    model_array,
    model_categories,
    model_matrix,
    top_k,
)
from feastflow.scoring import FeaturePlan, Ranker, Scored, ScoreRequest
from feastflow.store import open_store
from registry import lifecycle

if TYPE_CHECKING:
    from conftest import ServedWorld

pytestmark = pytest.mark.redis

TIMESTAMP_SUFFIX = "__ts"
# Awkward but valid entity key values: empty, unicode (multi-byte), long, spaces, digits.
STRING_KEYS = ["", "user-ü日本é", "x" * 300, " a b ", "0123"]
INT_KEYS = [0, 23, -1, 2**40, 7]


# --- shared fixtures ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(served_world: ServedWorld) -> FeatureStore:
    """The world's Feast store (registry and Redis online store)."""
    return open_store(served_world.settings, served_world.spec.name)


@pytest.fixture(scope="module")
def layouts(store: FeatureStore) -> dict[str, ViewLayout]:
    return view_layouts(store)


@pytest.fixture(scope="module")
def booster(served_world: ServedWorld) -> Any:
    """The world's champion, loaded from the registry like the server loads it."""
    settings, spec = served_world.settings, served_world.spec
    registry = lifecycle.Registry(settings.tracking_uri, settings.artifacts_uri)
    return registry.load_by_alias(spec.registered_model_name).booster


@pytest.fixture(scope="module")
def ranker(served_world: ServedWorld, store: FeatureStore, booster: Any) -> Ranker:
    return Ranker(served_world.spec, FeaturePlan.from_store(store, served_world.spec), booster)


@pytest.fixture(scope="module")
def hashed_users(served_world: ServedWorld) -> list[str]:
    """Every user of the world, hashed with the world's secret as ingest hashed them."""
    secret = served_world.settings.user_hash_secret
    return sorted(hash_user_id(u, secret) for u in served_world.raw["user_id"].unique())


def run(make_reader: Callable[[], OnlineReader],
        use: Callable[[OnlineReader], Awaitable[Any]]) -> Any:
    """Run `use(reader)` on a fresh event loop with a fresh reader, closing it afterwards."""
    async def main() -> Any:
        reader = make_reader()
        try:
            return await use(reader)
        finally:
            await reader.close()

    return asyncio.run(main())


def redis_reader(served_world: ServedWorld, store: FeatureStore) -> Callable[[], OnlineReader]:
    return lambda: RedisReader(served_world.settings.redis_url, store.project)


# --- 1. keys --------------------------------------------------------------------------------

def _value_proto(value_type: ValueType, value: Any) -> ValueProto:
    if value_type == ValueType.STRING:
        return ValueProto(string_val=value)
    assert value_type == ValueType.INT64, value_type
    return ValueProto(int64_val=value)


def test_key_encoder_is_feasts_redis_key_for_every_view(store: FeatureStore,
                                                         layouts: dict[str, ViewLayout]) -> None:
    views = store.list_feature_views()
    assert set(layouts) == {view.name for view in views}
    encoder = KeyEncoder(store.project)
    shapes: set[tuple[int, tuple[ValueType, ...]]] = set()
    checked = 0
    for view in views:
        layout = layouts[view.name]
        # The view's entities as the registry declares them (declaration order, not sorted).
        declared = [(store.get_entity(name).join_key, store.get_entity(name).value_type)
                    for name in view.entities]
        types = dict(declared)
        assert layout.join_keys == tuple(sorted(types)), view.name
        assert layout.key_types == tuple(types[k] for k in layout.join_keys), view.name
        shapes.add((len(declared), tuple(sorted(set(types.values()), key=lambda t: t.value))))
        choices = [STRING_KEYS if value_type == ValueType.STRING else INT_KEYS
                   for _, value_type in declared]
        for combo in itertools.product(*choices):
            by_key = dict(zip(types, combo, strict=True))
            feast_key = _redis_key(store.project, EntityKeyProto(
                join_keys=[k for k, _ in declared],
                entity_values=[_value_proto(t, v) for (_, t), v in zip(declared, combo, strict=True)],
            ), 3)
            values = [by_key[k] for k in layout.join_keys]
            assert encoder.encode(layout, values) == feast_key, (view.name, by_key)
            assert encoder.encode(layout, values) == feast_key, (view.name, by_key)  # cached parts
            # numpy scalars (what frames hold) encode like Python values
            as_numpy = [np.int64(v) if isinstance(v, int) else np.str_(v) for v in values]
            assert encoder.encode(layout, as_numpy) == feast_key, (view.name, by_key)
            in_declared_order = [by_key[k] for k, _ in declared]
            if in_declared_order != values:  # the order matters: values follow layout.join_keys
                try:
                    wrong = encoder.encode(layout, in_declared_order)
                except ValueError:  # a string where the layout expects an integer
                    wrong = None
                assert wrong != feast_key, (view.name, by_key)
            checked += 1
    assert {n for n, _ in shapes} == {1, 2, 3}  # one, two and three join keys
    assert (1, (ValueType.STRING,)) in shapes and (1, (ValueType.INT64,)) in shapes
    assert (3, (ValueType.STRING, ValueType.INT64)) in shapes  # mixed key types
    assert checked > 500


# --- 2. rows --------------------------------------------------------------------------------

def _strict(value: Any) -> Any:
    """A value with its type spelled out: 1 == 1.0 == True must not hide a type difference."""
    if isinstance(value, list | tuple):
        return (type(value).__name__, [_strict(v) for v in value])
    if isinstance(value, float) and math.isnan(value):
        return ("float", "nan")
    return (type(value).__name__, value)


def _comparable(row: Row) -> tuple[Any, Any]:
    # Feast's to_dict truncates event times to whole seconds; compare those, values exactly.
    stamp, values = row
    return (None if stamp is None else int(stamp),
            None if values is None else [_strict(v) for v in values])


def _feast_rows(store: FeatureStore, layout: ViewLayout, view_features: Sequence[str],
                keys: Sequence[Sequence[Any]]) -> tuple[list[tuple[int | None, Any]], list[float]]:
    """Feast's own answer through `get_online_features`: rows as `to_dict()` gives them
    (stamp in whole seconds, values), and each row's exact event time from the response proto."""
    response = store.get_online_features(
        features=[f"{layout.name}:{f}" for f in view_features],
        entity_rows=[dict(zip(layout.join_keys, key, strict=True)) for key in keys],
    )
    as_dict = response.to_dict(include_event_timestamps=True)
    position = list(response.proto.metadata.feature_names.val).index(view_features[0])
    exact = [t.seconds + t.nanos / 1e9 for t in response.proto.results[position].event_timestamps]
    rows = []
    for i in range(len(keys)):
        stamps = {as_dict[f + TIMESTAMP_SUFFIX][i] for f in view_features}
        assert len(stamps) == 1, (layout.name, keys[i], stamps)  # one event time per view row
        stamp = stamps.pop()
        values = [as_dict[f][i] for f in view_features]
        if stamp == 0 and all(v is None for v in values):
            rows.append((None, None))  # Feast's answer for a key it does not hold
        else:
            rows.append((stamp, [_strict(v) for v in values]))
    return rows, exact


Keys = list[tuple[Any, ...]]
Reference = tuple[list[dict[str, Any]], pd.DataFrame]  # per-request answers, scored rows


@pytest.fixture(scope="module")
def view_keys(served_world: ServedWorld, layouts: dict[str, ViewLayout],
              hashed_users: list[str]) -> dict[str, tuple[Keys, Keys, Keys]]:
    """Per view, values in `layout.join_keys` order: keys of its feature table (materialized,
    so all in the store), a grid of real values (all users x apps x hours, locations, day types:
    some in the store, many not), and keys that cannot be in the store."""
    rng = np.random.default_rng(7)
    tables = served_world.settings.features_dir / served_world.spec.name
    apps = sorted(str(a) for a in served_world.raw["app"].unique())
    sample_apps = [apps[i] for i in rng.choice(len(apps), size=8, replace=False)]
    grid_values: dict[str, list[Any]] = {
        "user_id": hashed_users,
        "app": sample_apps,
        "prev_app": [*sample_apps[:4], ""],
        "hour_of_day": [0, 7, 13, 22],
        "is_weekend": [0, 1],
        "location": ["home", "work", "commute", "other"],
    }
    absent_values: dict[str, list[Any]] = {
        "user_id": ["", "no-such-user", "üñí©ødé"],
        "app": ["no-such-app", "日本"],
        "prev_app": ["no-such-app"],
        "hour_of_day": [24, -1],
        "is_weekend": [2],
        "location": ["moon"],
    }
    out = {}
    for name, layout in layouts.items():
        path = tables / f"{name.removesuffix('_fv')}.parquet"
        frame = pd.read_parquet(path, columns=list(layout.join_keys)).drop_duplicates()
        distinct = [tuple(v.item() if isinstance(v, np.generic) else v for v in key)
                    for key in frame.itertuples(index=False, name=None)]
        table = [distinct[i] for i in sorted(rng.choice(len(distinct), size=min(150, len(distinct)),
                                                        replace=False))]
        grid = list(itertools.product(*(grid_values[k] for k in layout.join_keys)))
        if len(grid) > 400:
            grid = [grid[i] for i in sorted(rng.choice(len(grid), size=400, replace=False))]
        absent = [tuple(absent_values[k][i % len(absent_values[k])] for k in layout.join_keys)
                  for i in range(3)]
        out[name] = (table, grid, absent)
    return out


def test_redis_reader_rows_equal_get_online_features_for_every_view(
        served_world: ServedWorld, store: FeatureStore, layouts: dict[str, ViewLayout],
        view_keys: dict[str, tuple[Keys, Keys, Keys]]) -> None:
    names = sorted(layouts)
    reads = [(layouts[n], [key for keys in view_keys[n] for key in keys]) for n in names]
    # One pipelined round trip for all views: replies must come back to the right view and key.
    fast = run(redis_reader(served_world, store), lambda reader: reader.read(reads))
    via_feast = FeastReader(store).read_sync(reads)
    grid_found = grid_total = 0
    for name, (layout, keys), fast_rows, feast_rows in zip(names, reads, fast, via_feast, strict=True):
        view_features = [f.name for f in store.get_feature_view(name).features]
        assert list(layout.features) == view_features, name
        oracle, exact_stamps = _feast_rows(store, layout, view_features, keys)
        assert len(fast_rows) == len(feast_rows) == len(keys)
        for key, fast_row, feast_row, expected, exact in zip(keys, fast_rows, feast_rows, oracle,
                                                             exact_stamps, strict=True):
            assert _comparable(fast_row) == expected, (name, key, fast_row, expected)
            assert _comparable(fast_row) == _comparable(feast_row), (name, key, fast_row, feast_row)
            if fast_row is not MISSING:  # to the microsecond, as Feast's response holds it
                assert fast_row[0] is not None and fast_row[0] > 0, (name, key, fast_row)
                assert fast_row[0] == exact, (name, key, fast_row[0], exact)
        table, grid, absent = view_keys[name]
        found = [row is not MISSING for row in fast_rows]
        # every key of the feature table was materialized: found, with at least one value
        assert all(found[:len(table)]), (name, [k for k, f in zip(table, found, strict=False) if not f])
        assert all(any(v is not None for v in row[1]) for row in fast_rows[:len(table)]), name
        assert not any(found[len(table) + len(grid):]), (name, absent)
        grid_found += sum(found[len(table):len(table) + len(grid)])
        grid_total += len(grid)
    # the grid is a real mix: many of its keys are in the store, many are not
    assert 0.2 < grid_found / grid_total < 0.95, (grid_found, grid_total)


# --- 3, 4. scoring --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def requests_sample(served_world: ServedWorld, hashed_users: list[str]) -> list[ScoreRequest]:
    """~40 requests: known users at `at` in varied contexts and hours, a day later (daily views
    past their TTL), long after (every view past it), and unknown users."""
    at_us = int(served_world.at.timestamp()) * 1_000_000
    secret = served_world.settings.user_hash_secret
    busiest = [hash_user_id(u, secret) for u in served_world.users(30)]
    locations = ["home", "work", "commute", "other"]
    batteries = [5, 50, 95, 19, 20]
    networks = ["wifi", "cellular", "offline"]
    gaps = [60.0, None, 3600.0, 5.5]
    offsets_us = [0, 0, 7 * 3600 * 10**6 + 13 * 60 * 10**6 + 123_456, -30 * 60 * 10**6,
                  13 * 3600 * 10**6 + 1, 2 * 86400 * 10**6 + 3 * 3600 * 10**6]
    requests = []
    for i, user in enumerate(busiest):
        context = {"location": locations[i % 4], "battery": batteries[i % 5], "charging": i % 3 == 0,
                   "network": networks[i % 3], "secs_since_prev_unlock": gaps[i % 4]}
        requests.append(ScoreRequest(user, at_us + offsets_us[i % len(offsets_us)], context))
    example = dict(served_world.spec.event_log.example_context)
    requests.append(ScoreRequest(busiest[0], at_us + 120 * 86400 * 10**6, example))  # all stale
    requests.append(ScoreRequest(busiest[1], at_us, {**example, "location": "moon"}))  # unknown category
    for i, raw_id in enumerate(["never-seen", "üser-ñew", "user_00011x"]):
        requests.append(ScoreRequest(hash_user_id(raw_id, secret), at_us + i * 3600 * 10**6, example))
    requests.append(ScoreRequest("", at_us, example))
    requests.append(ScoreRequest(hash_user_id("never-seen", secret), at_us + 5 * 86400 * 10**6, example))
    return requests


def _feast_reference(store: FeatureStore, spec: Any, booster: Any,
                     requests: Sequence[ScoreRequest], k: int) -> Reference:
    """The previous server's scoring (`git show HEAD:serving/predictor.py`), batched: Feast's
    `get_online_features` for both stages (Feast computes the on-demand view), TTL masking by
    the request time, the training code's `candidate_rows` and `model_matrix`, pandas in."""
    log = spec.event_log
    entity_service = store.get_feature_service(spec.features.entity_service)
    ranking_service = store.get_feature_service(spec.features.ranking_service)
    ttl_seconds = {feature.name: view.ttl.total_seconds() for view in store.list_feature_views()
                   if view.ttl and view.ttl.total_seconds() > 0 for feature in view.features}

    def online(service: Any, rows: pd.DataFrame, now_unix: np.ndarray) -> pd.DataFrame:
        response = store.get_online_features(features=service, entity_rows=rows.to_dict("records"))
        values = response.to_dict(include_event_timestamps=True)
        frame = pd.DataFrame({n: v for n, v in values.items() if not n.endswith(TIMESTAMP_SUFFIX)})
        for name, ttl in ttl_seconds.items():
            stamps = values.get(name + TIMESTAMP_SUFFIX)
            if stamps is None or name not in frame:
                continue
            stale = now_unix - np.asarray(stamps, dtype="float64") > ttl
            if stale.any():
                frame[name] = frame[name].astype(object).where(~stale, None)
        return frame

    request_frame = pd.DataFrame([{
        REQUEST_ID: i, log.entity: r.entity,
        log.timestamp: pd.Timestamp(r.unix_us, unit="us", tz="UTC"), **r.context,
    } for i, r in enumerate(requests)])
    now = np.array([r.unix_us / 1e6 for r in requests])
    stage1_keys = entity_rows(request_frame, spec).drop(columns=[REQUEST_ID, "event_timestamp"])
    stage1 = online(entity_service, stage1_keys, now)
    enriched = pd.concat([request_frame, stage1.drop(columns=stage1_keys.columns)], axis=1)
    fallback = spec.candidates.fallback_list
    own_lists = [n for n in spec.candidates.lists if n != fallback]
    answers: list[dict[str, Any]] = []
    for i in range(len(requests)):
        if not any(_non_empty(enriched.at[i, n]) for n in own_lists):
            popular = enriched.at[i, fallback]
            items = list(popular)[:k] if _non_empty(popular) else []
            answers.append({"items": items, "scores": [1.0 / (r + 1) for r in range(len(items))],
                            "known": False, "candidates": []})
        else:
            answers.append({"known": True})
    known = enriched[[a["known"] for a in answers]].reset_index(drop=True)
    candidates = candidate_rows(known, spec)
    stage2_keys = candidates[list(spec.features.join_keys) + list(spec.features.request_fields)]
    stage2 = online(ranking_service, stage2_keys, now[candidates[REQUEST_ID].to_numpy()])
    features = pd.concat(
        [candidates, stage2.drop(columns=[c for c in stage2 if c in candidates])], axis=1)
    matrix = model_matrix(features, booster.feature_name(), spec.model.categorical)
    scores = booster.predict(matrix, num_threads=1)
    for request_id, positions in features.groupby(REQUEST_ID).indices.items():
        items = features[log.item].to_numpy()[positions].tolist()
        best = top_k(items, scores[positions], k)
        answers[request_id].update(items=[a for a, _ in best], scores=[s for _, s in best],
                                   candidates=items)
    return answers, features


def _non_empty(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value)) and len(value) > 0


@pytest.fixture(scope="module")
def reference(served_world: ServedWorld, store: FeatureStore, booster: Any,
              requests_sample: list[ScoreRequest]) -> Reference:
    k = served_world.spec.candidates.max_candidates  # whole rankings, not only the top few
    return _feast_reference(store, served_world.spec, booster, requests_sample, k)


def test_ranker_on_redis_equals_feast_and_the_training_code(
        served_world: ServedWorld, store: FeatureStore, ranker: Ranker, requests_sample: list[ScoreRequest],
        reference: Reference) -> None:
    k = served_world.spec.candidates.max_candidates
    scored: list[Scored] = run(redis_reader(served_world, store),
                               lambda reader: ranker.score(requests_sample, reader, k))
    expected, _ = reference
    assert len(scored) == len(expected) == len(requests_sample)
    for request, got, want in zip(requests_sample, scored, expected, strict=True):
        where = (request.entity, request.unix_us, request.context)
        assert got.known == want["known"], where
        assert got.candidates == want["candidates"], where
        assert got.items == want["items"], where
        np.testing.assert_allclose(got.scores, want["scores"], rtol=0, atol=1e-9, err_msg=str(where))
    # the sample covers what it claims: ranked users, new users with and without a fallback list
    known = [w["known"] for w in expected]
    assert sum(known) >= 25 and len(known) - sum(known) >= 5
    assert any(not w["known"] and w["items"] for w in expected)
    assert any(not w["known"] and not w["items"] for w in expected)  # everything past its TTL


def test_ranker_on_feast_reader_equals_ranker_on_redis(
        served_world: ServedWorld, store: FeatureStore, ranker: Ranker,
        requests_sample: list[ScoreRequest]) -> None:
    k = served_world.spec.candidates.max_candidates
    fast = run(redis_reader(served_world, store), lambda reader: ranker.score(requests_sample, reader, k))
    slow = run(lambda: FeastReader(store), lambda reader: ranker.score(requests_sample, reader, k))
    for request, a, b in zip(requests_sample, fast, slow, strict=True):
        where = (request.entity, request.unix_us)
        assert (a.known, a.items, a.candidates) == (b.known, b.items, b.candidates), where
        assert a.scores == b.scores, where
        if a.known:
            np.testing.assert_array_equal(a.inputs, b.inputs, err_msg=str(where))
    stage1_fast = run(redis_reader(served_world, store),
                      lambda reader: ranker.stage1(requests_sample, reader, enforce_ttl=False))
    stage1_slow = run(lambda: FeastReader(store),
                      lambda reader: ranker.stage1(requests_sample, reader, enforce_ttl=False))
    assert stage1_fast == stage1_slow


# --- 5. numpy and pandas model inputs -------------------------------------------------------

def test_model_array_scores_exactly_like_model_matrix(
        served_world: ServedWorld, booster: Any, reference: Reference) -> None:
    spec = served_world.spec
    _, features = reference
    names = booster.feature_name()
    categories = model_categories(booster, spec.model.categorical)
    assert set(categories) == {"location"}
    base = features.head(60).reset_index(drop=True)
    odd = base.head(12).copy()
    # unknown categories and missing values of every kind the two paths may meet
    odd["location"] = pd.Series(["moon", None, "", np.nan, "HOME", "work"] * 2, dtype=object)
    numeric = [n for n in names if n not in categories]
    for j, name in enumerate(numeric):
        column = odd[name].astype(object)
        column[j % 12] = None
        column[(j + 5) % 12] = np.nan
        odd[name] = column
    odd["battery"] = pd.Series([7, "42", "abc", None, 3.5, True] * 2, dtype=object)  # strings coerced
    odd["charging"] = pd.Series([True, False, None] * 4, dtype=object)
    frame = pd.concat([base, odd], ignore_index=True)
    matrix = model_matrix(frame, names, spec.model.categorical)
    columns = {name: frame[name].tolist() for name in frame.columns}
    array = model_array(columns, len(frame), names, categories)
    for j, name in enumerate(names):
        if name in categories:
            codes = {c: float(i) for i, c in enumerate(categories[name])}
            want = [codes.get(v, np.nan) if isinstance(v, str) else np.nan for v in frame[name]]
            np.testing.assert_array_equal(array[:, j], want, err_msg=name)
        else:
            np.testing.assert_array_equal(array[:, j], matrix[name].to_numpy(), err_msg=name)
    by_array = booster.predict(array, num_threads=1)
    by_matrix = booster.predict(matrix, num_threads=1)
    np.testing.assert_array_equal(by_array, by_matrix)
    # the inputs matter: the odd rows do not score like the rows they were copied from
    assert not np.array_equal(by_array[len(base):], by_array[:len(odd)])
    # a column the rows do not carry at all is missing for both
    dropped = names[0]
    without = {n: v for n, v in columns.items() if n != dropped}
    np.testing.assert_array_equal(
        booster.predict(model_array(without, len(frame), names, categories), num_threads=1),
        booster.predict(model_matrix(frame.drop(columns=[dropped]), names, spec.model.categorical),
                        num_threads=1))


# --- 6. value decoding ----------------------------------------------------------------------

def test_value_decoder_caches_without_changing_values(
        served_world: ServedWorld, store: FeatureStore, layouts: dict[str, ViewLayout],
        hashed_users: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    client = redis.Redis.from_url(served_world.settings.redis_url)
    encoder = KeyEncoder(store.project)
    stored: list[tuple[bytes, bytes]] = []  # (hash field, stored bytes) of real rows
    for layout in (layouts["user_profile_fv"], layouts["user_last_app_fv"]):
        for user in hashed_users[:10]:
            stored += sorted(client.hgetall(encoder.encode(layout, [user])).items())
    assert len(stored) >= 60
    monkeypatch.setattr(online, "_DECODE_CACHE_LIMIT", 7)  # the eviction path too
    decoder = ValueDecoder()
    for _ in range(3):
        for field, raw in stored:
            if field.startswith(b"_ts:"):
                stamp = Timestamp.FromString(raw)
                expected_stamp = stamp.seconds + stamp.nanos / 1e9
                assert decoder.timestamp(raw) == decoder.timestamp(bytes(raw)) == expected_stamp
            else:
                expected = feast_value_type_to_python_type(ValueProto.FromString(raw))
                first, second = decoder.value(raw), decoder.value(bytes(raw))
                assert _strict(first) == _strict(second) == _strict(expected), (field, raw)
    # the same bytes decode to the same object while cached: no work repeated
    fresh = ValueDecoder()
    some_list = next(raw for _, raw in stored if isinstance(fresh.value(raw), list))
    assert fresh.value(some_list) is fresh.value(bytes(some_list))
    # missing fields: None, and a reply with nothing at all is a missing row
    assert decoder.value(None) is None and decoder.timestamp(None) is None
    layout = layouts["user_profile_fv"]
    assert decoder.row(layout, [None] * (len(layout.features) + 1)) is MISSING
    stamp = Timestamp(seconds=1_700_000_000, nanos=500_000_000).SerializeToString()
    half = decoder.row(layout, [None] * len(layout.features) + [stamp])
    assert half == (1_700_000_000.5, (None,) * len(layout.features))
