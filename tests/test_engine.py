"""feastflow's materialization engine leaves what Feast's own engine leaves, for every use case.

Each use case's feature tables (small generated or real data) are materialized twice into a real
Redis, once by Feast's local engine and once by `feastflow.engine.FeastflowComputeEngine`, each
into its own database; Feast's `get_online_features` must answer the same for every view and key.
Random tables (hypothesis) do the same for types, nulls, compound keys and created-time ties.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from conftest import REDIS_TEST_URL, copy_feature_repo, raw_events
from feast import FeatureStore, FeatureView, FileSource
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fraud import write_book_world
from test_online_writer import APP, ROW, SCHEMA, T0, USER, VIEW

from feastflow.engine import FeastflowComputeEngine
from feastflow.settings import Settings
from feastflow.spec import load_spec
from feastflow.store import open_store
from pipelines.feast_ops import apply_repo, materialize
from pipelines.features import compute_feature_tables
from pipelines.ingest import ingest_frame

pytestmark = pytest.mark.redis

FEAST_URL = REDIS_TEST_URL.rsplit("/", 1)[0] + "/12"  # Feast's engine writes here
OURS_URL = REDIS_TEST_URL.rsplit("/", 1)[0] + "/13"  # ours here
SECRET = "engine-secret"
KEYS_PER_VIEW = 200


def feast_engine_store(settings: Settings, use_case: str) -> FeatureStore:
    """The use case's store, with Feast's own engine and Feast's Redis database."""
    store = open_store(settings.model_copy(update={"redis_url": FEAST_URL}), use_case)
    store.config.batch_engine_config = "local"
    return store


def online_answers(store: FeatureStore, view: FeatureView, rows: list[dict[str, Any]]
                   ) -> dict[str, list[Any]]:
    return store.get_online_features(features=[f"{view.name}:{f.name}" for f in view.features],
                                     entity_rows=rows).to_dict()


def some_keys(settings: Settings, use_case: str, view: FeatureView) -> list[dict[str, Any]]:
    """Up to KEYS_PER_VIEW entity keys of the view's table, and one that is not there."""
    keys = [col.name for col in view.entity_columns]
    path = settings.feature_tables_dir(use_case) / Path(view.batch_source.path).name
    names = ", ".join(f'"{k}"' for k in keys)
    frame = duckdb.sql(f"SELECT DISTINCT {names} FROM read_parquet('{path}') ORDER BY {names} "
                       f"LIMIT {KEYS_PER_VIEW}").df()
    rows = frame.to_dict("records")
    return [*rows, {k: type(v)() if not isinstance(v, str) else "nobody" for k, v in rows[0].items()}]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Every use case ingested, its feature tables computed and applied (redis profile)."""
    for url in (FEAST_URL, OURS_URL):
        redis.Redis.from_url(url).flushdb()
    root = tmp_path_factory.mktemp("engine")
    write_book_world(root / "data")
    for name in ("feast_credit_score", "chicago_taxi_trips"):
        (root / "data" / name).symlink_to(Settings().data_dir / name)
    settings = Settings(home=root / "var", feature_repo=copy_feature_repo(root),
                        data_dir=root / "data", profile="redis", redis_url=OURS_URL,
                        user_hash_secret=SECRET)
    for name in ("next_app", "credit_score", "taxi_eta", "fraud"):
        spec = load_spec(name, settings.feature_repo)
        raw = raw_events(spec, settings, users=12, days=21, seed=4)
        ingest_frame(raw, spec.event_log, settings.events_dir(name), SECRET)
        compute_feature_tables(settings, spec)
        apply_repo(settings, name)
    yield settings


@pytest.mark.parametrize("use_case", ["next_app", "credit_score", "taxi_eta", "fraud"])
def test_every_view_reads_the_same_after_our_engine_as_after_feasts(home: Settings,
                                                                    use_case: str) -> None:
    ours = open_store(home, use_case)
    assert isinstance(ours._get_provider().batch_engine, FeastflowComputeEngine)
    feast = feast_engine_store(home, use_case)
    start, end = materialize(home, use_case)
    feast.materialize(start_date=start, end_date=end)
    views = ours.list_feature_views()
    assert views
    for view in views:
        rows = some_keys(home, use_case, view)
        expected = online_answers(feast, view, rows)
        assert online_answers(ours, view, rows) == expected, view.name
        assert any(v is not None for f in view.features for v in expected[f.name]), view.name


def test_incremental_runs_write_only_what_changed_and_record_it(home: Settings) -> None:
    runs = home.feast_dir / "materialized" / "runs.jsonl"
    materialize(home, "taxi_eta")  # the state after a full run
    before = len(runs.read_text().splitlines())
    materialize(home, "taxi_eta")  # nothing changed: nothing written
    again = [json.loads(line) for line in runs.read_text().splitlines()[before:]]
    assert again and all(r["changed"] == 0 and r["written"] == 0 and r["rows"] > 0 for r in again)

    # one row of one table gets a later event time and a new value: only it is written
    table_path = next(home.feature_tables_dir("taxi_eta").glob("*.parquet"))
    table = pq.read_table(table_path).to_pandas()
    last = table["event_timestamp"].idxmax()
    feature = next(c for c in table.columns if pd.api.types.is_float_dtype(table[c]))
    table.loc[last, feature] = 12345.5
    table.loc[last, "event_timestamp"] += timedelta(seconds=1)
    table.to_parquet(table_path, index=False)
    start, end = materialize(home, "taxi_eta")
    changed = [json.loads(line) for line in runs.read_text().splitlines()][-len(again):]
    by_view = {r["view"]: r for r in changed}
    view_name = next(v.name for v in open_store(home, "taxi_eta").list_feature_views()
                     if Path(v.batch_source.path) == table_path)
    assert by_view[view_name]["changed"] == 1 and by_view[view_name]["written"] == 1
    assert all(r["changed"] == 0 for name, r in by_view.items() if name != view_name)

    # the store loses its data: the state is no longer vouched for, every row is written again
    redis.Redis.from_url(OURS_URL).flushdb()
    materialize(home, "taxi_eta", start, end)
    rewritten = [json.loads(line) for line in runs.read_text().splitlines()][-len(again):]
    assert all(r["changed"] == r["rows"] and r["written"] == r["rows"] for r in rewritten)


def sqlite_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every feature table of a SQLite online store, in key order."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as conn:
        tables = [name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name != "
            "'feastflow_materialized'")]
        return {table: conn.execute(
            f'SELECT entity_key, feature_name, value, value_text, event_ts, created_ts FROM "{table}" '
            "ORDER BY entity_key, feature_name").fetchall() for table in tables}


def test_sqlite_runs_write_only_what_changed_until_the_database_is_new(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """The embedded profile (SQLite): the same incremental runs, the token kept in the store's own
    database file; a new file, or a view deleted by `feast apply`, writes every row again."""
    root = tmp_path_factory.mktemp("engine-sqlite")
    settings = Settings(home=root / "var", feature_repo=copy_feature_repo(root),
                        data_dir=Settings().data_dir, user_hash_secret=SECRET)
    spec = load_spec("taxi_eta", settings.feature_repo)
    raw = raw_events(spec, settings, users=12, days=21, seed=4)
    ingest_frame(raw, spec.event_log, settings.events_dir("taxi_eta"), SECRET)
    compute_feature_tables(settings, spec)
    apply_repo(settings, "taxi_eta")
    online_db = Path(open_store(settings, "taxi_eta").config.online_store.path)
    empty_db = online_db.read_bytes()  # the tables, no row yet
    runs = settings.feast_dir / "materialized" / "runs.jsonl"

    def last_runs(n: int) -> dict[str, dict[str, Any]]:
        return {r["view"]: r for r in map(json.loads, runs.read_text().splitlines()[-n:])}

    start, end = materialize(settings, "taxi_eta")
    views = open_store(settings, "taxi_eta").list_feature_views()
    first = last_runs(len(views))
    assert all(r["engine"] == "sqlite" and r["changed"] == r["rows"] > 0
               for r in first.values()), first
    # Feast's own engine into a copy of the empty database stores the very same rows
    feast_db = online_db.with_name("feast_engine.db")
    feast_db.write_bytes(empty_db)
    feast = open_store(settings, "taxi_eta")
    feast.config.online_store.path = str(feast_db)
    feast.config.batch_engine_config = "local"
    feast.materialize(start_date=start, end_date=end)
    assert sqlite_rows(feast_db) == sqlite_rows(online_db)
    assert sum(len(rows) for rows in sqlite_rows(online_db).values()) > 0
    materialize(settings, "taxi_eta", start, end)
    assert all(r["changed"] == 0 and r["written"] == 0 for r in last_runs(len(views)).values())

    # one row gets a later event time and a new value: only it is written, and Feast reads it
    view = views[0]
    table_path = settings.feature_tables_dir("taxi_eta") / Path(view.batch_source.path).name
    table = pq.read_table(table_path).to_pandas()
    last = table["event_timestamp"].idxmax()
    feature = next(f.name for f in view.features if pd.api.types.is_float_dtype(table[f.name]))
    table.loc[last, feature] = 12345.5
    table.loc[last, "event_timestamp"] += timedelta(seconds=1)
    table.to_parquet(table_path, index=False)
    start, end = materialize(settings, "taxi_eta", start, end + timedelta(seconds=1))
    changed = last_runs(len(views))
    assert changed[view.name]["changed"] == 1
    assert all(r["changed"] == 0 for name, r in changed.items() if name != view.name)
    keys = {c.name: table.loc[last, c.name] for c in view.entity_columns}
    answer = online_answers(open_store(settings, "taxi_eta"), view, [
        {k: v.item() if hasattr(v, "item") else v for k, v in keys.items()}])
    assert answer[feature] == [12345.5]

    # `feast apply` deleting the view drops its token: were it added again, all is written
    engine = open_store(settings, "taxi_eta")._get_provider().batch_engine
    engine.update("taxi_eta", [view], [], [], [])
    materialize(settings, "taxi_eta", start, end)
    again = last_runs(len(views))
    assert again[view.name]["changed"] == again[view.name]["rows"]
    assert all(r["changed"] == 0 for name, r in again.items() if name != view.name)

    # another database file (here: the empty one, as restored from before the first run) holds
    # no token: every row of every view is written again
    online_db.write_bytes(empty_db)
    materialize(settings, "taxi_eta", start, end)
    assert all(r["changed"] == r["rows"] for r in last_runs(len(views)).values())

    # `feast teardown` deletes the file; forgetting the tokens must not create it again
    open_store(settings, "taxi_eta").teardown()
    assert not online_db.exists()


# --- random tables ---------------------------------------------------------------------------

def random_rows() -> st.SearchStrategy[pd.DataFrame]:
    """Rows with repeated keys and event times; the created time breaks every tie."""
    def distinct_created(rows: list[dict[str, Any]]) -> pd.DataFrame:
        frame = pd.DataFrame(rows)
        # distinct per (key, event time): Feast's order among full ties is not defined
        frame["created"] = [T0 + timedelta(minutes=i) for i in range(len(frame))][::-1]
        return frame

    return st.lists(ROW, min_size=1, max_size=30).map(distinct_created)


def random_repo(root: Path, project: str, url: str, engine: str | dict[str, Any],
                ttl: int | None) -> FeatureStore:
    """A store over rows.parquet: into Redis at `url`, or into a SQLite file at `sqlite:PATH`."""
    source = FileSource(name="rows_source", path=str(root / "rows.parquet"),
                        timestamp_field="event_timestamp", created_timestamp_column="created")
    view = FeatureView(name="usage", entities=[USER, APP], ttl=timedelta(days=30), source=source,
                       schema=[*VIEW.entity_columns, *VIEW.features])
    online: dict[str, Any]
    if url.startswith("sqlite:"):
        online = {"type": "sqlite", "path": url.removeprefix("sqlite:")}
    else:
        host_port, db = url.removeprefix("redis://").rsplit("/", 1)
        online = {"type": "redis", "connection_string": f"{host_port},db={db}"}
    if ttl:
        online["key_ttl_seconds"] = ttl
    from feast.repo_config import RepoConfig

    config = RepoConfig(project=project, provider="local", registry=str(root / f"{project}.db"),
                        online_store=online,
                        offline_store={"type": "feastflow.offline_store.AsofDuckDBOfflineStore"},
                        batch_engine=engine, entity_key_serialization_version=3,
                        repo_path=str(root))
    store = FeatureStore(config=config)
    store.apply([USER, APP, view])
    return store


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(random_rows(), st.sampled_from([None, 600]))
def test_random_tables_read_the_same(tmp_path_factory: pytest.TempPathFactory, frame: pd.DataFrame,
                                     ttl: int | None) -> None:
    root = tmp_path_factory.mktemp("random")
    pq.write_table(pa.Table.from_pandas(frame, schema=SCHEMA, preserve_index=False),
                   root / "rows.parquet")
    project = f"r{uuid.uuid4().hex[:12]}"  # a fresh project: nothing stored for it yet
    engine = {"type": "feastflow.engine.FeastflowComputeEngine", "batch_rows": 7,
              "state_dir": str(root / "state")}
    stores = [random_repo(root, project, FEAST_URL, "local", ttl),
              random_repo(root, project, OURS_URL, engine, ttl)]
    for store in stores:
        store.materialize(start_date=T0 - timedelta(days=1), end_date=T0 + timedelta(days=1))
    view = stores[0].get_feature_view("usage")
    rows = [{"user_id": u, "app_id": a} for u in ["u1", "ü2", "", "a b"] for a in range(-2, 3)]
    answers = [online_answers(store, view, rows) for store in stores]
    assert answers[0] == answers[1]
    if ttl:
        for url in (FEAST_URL, OURS_URL):
            client = redis.Redis.from_url(url)
            assert all(0 < client.ttl(k) <= ttl for k in client.scan_iter(match=f"*{project}"))


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(random_rows())
def test_random_tables_store_the_same_sqlite_rows(tmp_path_factory: pytest.TempPathFactory,
                                                  frame: pd.DataFrame) -> None:
    """The embedded profile's SQLite, written by Feast's engine and by ours: the same rows, byte
    for byte (values, texts, times), for every type, null and tie of the random tables."""
    root = tmp_path_factory.mktemp("random-sqlite")
    pq.write_table(pa.Table.from_pandas(frame, schema=SCHEMA, preserve_index=False),
                   root / "rows.parquet")
    engine = {"type": "feastflow.engine.FeastflowComputeEngine", "batch_rows": 7,
              "state_dir": str(root / "state")}
    paths = [root / "feast.db", root / "ours.db"]
    stores = [random_repo(root, "feast_side", f"sqlite:{paths[0]}", "local", None),
              random_repo(root, "our_side", f"sqlite:{paths[1]}", engine, None)]
    for store in stores:
        store.materialize(start_date=T0 - timedelta(days=1), end_date=T0 + timedelta(days=1))
    feast_rows, our_rows = sqlite_rows(paths[0]), sqlite_rows(paths[1])
    assert list(feast_rows) == ["feast_side_usage"] and list(our_rows) == ["our_side_usage"]
    assert feast_rows["feast_side_usage"] == our_rows["our_side_usage"]
    assert our_rows["our_side_usage"]
