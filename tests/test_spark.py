"""The Spark engine gives what the DuckDB engine gives, value for value, for every use case.

Each use case present in feature_repo/ (a folder with a model.yaml) gets two homes with the same
small event log: one computed by DuckDB (the ASOF offline store, the local compute engine), one
with FEASTFLOW_OFFLINE_ENGINE=spark (its feature SQL transpiled and run on Spark, Feast's Spark
offline store for the point-in-time join, Feast's Spark compute engine for materialization), in
Spark local mode. Compared: every feature table, the training set of sampled requests, and every
key and field Feast wrote to Redis (two databases of one real server): the same bytes, but
doubles summed in a different order (see `assert_same_values`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import redis
from conftest import REDIS_TEST_URL, feast_hashes
from feast import FeatureStore
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from google.protobuf.message import DecodeError

from feastflow.plugins import use_case_function
from feastflow.ranking import EVENT_TIMESTAMP, as_of, frame_columns
from feastflow.settings import FEATURE_REPO, Settings
from feastflow.spec import ModelSpec, load_spec
from feastflow.store import open_store
from pipelines.datasets import build_set, sample_requests
from pipelines.feast_ops import apply_repo, materialize
from pipelines.features import compute_feature_tables, event_log_connection, feature_table_names
from pipelines.ingest import ingest_frame
from pipelines.ranker import with_features
from pipelines.spark_features import spark_session
from pipelines.spark_sql import SparkSqlError, to_spark_sql

SECRET = "spark-secret"
USE_CASES = sorted(p.name for p in FEATURE_REPO.iterdir() if (p / "model.yaml").is_file())
DAYS = 21  # of events: few hourly partition files to read, yet past fraud's 7-day label delay
LOADED_EVENTS = 3000  # at most, of a data set's first DAYS days (every n-th)
REQUESTS = 300
DUCKDB_DB, SPARK_DB = 7, 8  # Redis databases of this module (others: 15, 14, 11)


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One local[2] Spark session for the test session (Feast's store and engine reuse it)."""
    settings = Settings(home=tmp_path_factory.mktemp("spark"), offline_engine="spark",
                        spark_master="local[2]", user_hash_secret=SECRET)
    session = spark_session(settings)
    yield session
    session.stop()


def small_events(spec: ModelSpec, data_dir: Path) -> pd.DataFrame:
    """A small raw event log of the use case: its generator's small world, or every n-th event
    of its data set's first DAYS days."""
    if spec.generator is not None:
        generate = use_case_function(spec, spec.generator.module, spec.generator.function)
        return generate(users=8, days=DAYS, seed=5)
    raw = use_case_function(spec, spec.loader.module, spec.loader.function)(data_dir)
    times = pd.to_datetime(raw[spec.event_log.timestamp], utc=True, format="mixed")
    raw = raw[times < times.min() + pd.Timedelta(days=DAYS)]
    raw = raw.sort_values(spec.event_log.timestamp, ignore_index=True, kind="stable")
    return raw.iloc[:: max(1, len(raw) // LOADED_EVENTS)].reset_index(drop=True)


@dataclass(frozen=True)
class Twins:
    """The same event log computed by each engine."""

    spec: ModelSpec
    duckdb: Settings
    spark: Settings
    requests: pd.DataFrame


@pytest.fixture(scope="module", params=USE_CASES)
def twins(request: pytest.FixtureRequest, spark: object, redis_url: str,
          tmp_path_factory: pytest.TempPathFactory) -> Twins:
    """Ingested, feature tables computed, applied and materialized, once per engine."""
    name = request.param
    root = tmp_path_factory.mktemp(f"twins_{name}")
    base = REDIS_TEST_URL.rsplit("/", 1)[0]
    homes = {}
    for engine, db in (("duckdb", DUCKDB_DB), ("spark", SPARK_DB)):
        redis.Redis.from_url(f"{base}/{db}").flushdb()
        homes[engine] = Settings(home=root / engine, profile="redis", redis_url=f"{base}/{db}",
                                 offline_engine=engine, spark_master="local[2]",
                                 user_hash_secret=SECRET)
    spec = load_spec(name, FEATURE_REPO)
    raw = small_events(spec, homes["duckdb"].data_dir)
    for settings in homes.values():
        report = ingest_frame(raw, spec.event_log, settings.events_dir(name), SECRET)
        assert report.rows_written > 0
        compute_feature_tables(settings, spec)
        apply_repo(settings, name)
        materialize(settings, name)
    settings = homes["duckdb"]
    con = event_log_connection(settings.events_dir(name), spec.event_log.timestamp)
    first, last = con.execute(f'SELECT min("{spec.event_log.timestamp}"), '
                              f'max("{spec.event_log.timestamp}") FROM all_events').fetchone()
    requests = sample_requests(con, pd.Timestamp(first), pd.Timestamp(last), REQUESTS, 1, spec)
    return Twins(spec, homes["duckdb"], homes["spark"], requests)


def sorted_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in a canonical order (lists as tuples so they sort), for comparing two engines."""
    frame = frame.map(lambda v: tuple(v) if hasattr(v, "__len__") and not isinstance(v, str)
                      else v)
    return frame.sort_values(list(frame.columns), ignore_index=True, na_position="last")


def assert_same_values(actual: pd.DataFrame, expected: pd.DataFrame, what: str) -> None:
    """Equal row for row (in a canonical order): integers, strings, times and lists exactly;
    doubles to 1e-12 relative, because a sum of doubles depends on the order it adds them in
    and the two engines add in different orders (next_app's avg_session_seconds_7d sums
    fractional session lengths: they differ in the last bit or two)."""
    pd.testing.assert_frame_equal(sorted_frame(actual), sorted_frame(expected), check_exact=False,
                                  rtol=1e-12, atol=0, check_dtype=False, obj=what)


def test_every_feature_table_equals_duckdbs(twins: Twins) -> None:
    for table in feature_table_names(twins.spec):
        duck = pq.read_table(twins.duckdb.feature_tables_dir(twins.spec.name) / f"{table}.parquet")
        spark = pq.read_table(twins.spark.feature_tables_dir(twins.spec.name) / f"{table}.parquet")
        assert spark.schema.names == duck.schema.names, table
        assert [f.type for f in spark.schema] == [f.type for f in duck.schema], table
        assert duck.num_rows > 0, table
        assert_same_values(spark.to_pandas(), duck.to_pandas(), table)


def test_training_set_equals_duckdbs(twins: Twins) -> None:
    rows = {}
    for engine, settings in (("duckdb", twins.duckdb), ("spark", twins.spark)):
        rows[engine] = training_rows(open_store(settings, twins.spec.name), twins)
    assert len(rows["duckdb"]) >= len(twins.requests)
    assert set(rows["spark"].columns) == set(rows["duckdb"].columns)
    assert_same_values(rows["spark"][list(rows["duckdb"].columns)], rows["duckdb"], "training set")


def training_rows(store: FeatureStore, twins: Twins) -> pd.DataFrame:
    """The spec's training rows of the sampled requests; for the retrieval shape, its stage-2
    rows (each (user, item) request joined point in time with the ranking service)."""
    if twins.spec.retrieval is None:
        return build_set(store, twins.requests, twins.spec)
    frame = pd.DataFrame(frame_columns(dict(twins.requests.items()), twins.spec))
    frame[EVENT_TIMESTAMP] = as_of(twins.requests[twins.spec.event_log.timestamp]).to_numpy()
    return with_features(store, twins.spec, frame)


def test_online_store_holds_the_same_keys_fields_and_values(twins: Twins) -> None:
    dumps = {}
    for engine, settings in (("duckdb", twins.duckdb), ("spark", twins.spark)):
        client = redis.Redis.from_url(settings.redis_url)
        dumps[engine] = feast_hashes(client)
    assert len(dumps["duckdb"]) > 0
    assert dumps["spark"].keys() == dumps["duckdb"].keys()
    different = [(key, field) for key, fields in dumps["duckdb"].items()
                 for field, value in fields.items()
                 if not same_online_value(dumps["spark"][key].get(field), value)]
    assert all(dumps["spark"][k].keys() == dumps["duckdb"][k].keys() for k in dumps["duckdb"])
    assert not different, f"{len(different)} fields differ, e.g. {different[:1]}"


def same_online_value(actual: bytes | None, expected: bytes) -> bool:
    """The same bytes, or two doubles within 1e-12 (see `assert_same_values`)."""
    if actual == expected:
        return True
    if actual is None:
        return False
    left, right = ValueProto(), ValueProto()
    try:
        left.ParseFromString(actual)
        right.ParseFromString(expected)
    except DecodeError:
        return False
    if left.WhichOneof("val") != "double_val" or right.WhichOneof("val") != "double_val":
        return False
    return math.isclose(left.double_val, right.double_val, rel_tol=1e-12, abs_tol=0)


def test_a_duckdb_idiom_spark_cannot_run_is_named_with_its_file() -> None:
    with pytest.raises(SparkSqlError, match=r"f\.sql: list slices need literal bounds"):
        to_spark_sql("SELECT list(app ORDER BY n)[1:k] FROM t", "f.sql")
