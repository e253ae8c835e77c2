"""AsofDuckDBOfflineStore against known answers and against Feast's stock DuckDB offline store.

Known-answer tests build tiny feature tables by hand, one semantic each; property tests draw
random tables and entity frames and require the plugin's training set to equal the stock
store's row for row and value for value; a materialization test compares the online values.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from feast import (
    Entity,
    FeatureService,
    FeatureStore,
    FeatureView,
    Field,
    FileSource,
    RequestSource,
    ValueType,
)
from feast.errors import FeastEntityDFMissingColumnsError
from feast.infra.offline_stores.duckdb import DuckDBOfflineStore
from feast.infra.offline_stores.file_source import SavedDatasetFileStorage
from feast.on_demand_feature_view import on_demand_feature_view
from feast.repo_config import RepoConfig, get_offline_config_from_type
from feast.types import Float64, Int64, String, UnixTimestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ibis.common.exceptions import IbisInputError, IbisTypeError

from feastflow import offline_store
from feastflow.offline_store import AsofDuckDBOfflineStore, AsofDuckDBOfflineStoreConfig

OURS = "feastflow.offline_store.AsofDuckDBOfflineStore"
STOCK = "duckdb"
T0 = pd.Timestamp("2026-01-01", tz="UTC")
US = pd.Timedelta(microseconds=1)
UTC_US = pa.timestamp("us", tz="UTC")
TYPES = {"user_id": pa.string(), "app": pa.string(), "hour": pa.int64(), "event_timestamp": UTC_US,
         "created_timestamp": UTC_US, "x": pa.int64(), "score": pa.float64(), "label": pa.string()}

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
app = Entity(name="app", join_keys=["app"], value_type=ValueType.STRING)
hour = Entity(name="hour", join_keys=["hour"], value_type=ValueType.INT64)


def at(hours: float = 0, micros: int = 0) -> pd.Timestamp:
    """T0 plus some hours and microseconds."""
    return T0 + pd.Timedelta(hours=hours) + micros * US


def write_table(path: Path, columns: dict[str, list]) -> str:
    """Columns to Parquet with the types a feature table has (microsecond UTC times)."""
    table = pa.table({name: pa.array(values, type=TYPES.get(name)) for name, values in columns.items()})
    pq.write_table(table, path)
    return str(path)


def source(path: str, **kwargs: object) -> FileSource:
    """A FileSource stamped by event_timestamp with created_timestamp as the tie breaker."""
    return FileSource(name=Path(path).stem + "_source", path=path, timestamp_field="event_timestamp",
                      created_timestamp_column="created_timestamp", **kwargs)


def feature_view(name: str, entities: list[Entity], src: FileSource, ttl: timedelta | None,
                 features: dict[str, object]) -> FeatureView:
    """A feature view with the given features (name -> Feast type)."""
    return FeatureView(name=name, entities=entities, ttl=ttl, source=src,
                       schema=[Field(name=f, dtype=t) for f, t in features.items()])


def open_store(folder: Path, offline_type: str, **config: object) -> FeatureStore:
    """A FeatureStore over folder's registry, with its own online store per offline type."""
    online = folder / f"online_{offline_type.rsplit('.', 1)[-1]}.db"
    return FeatureStore(config=RepoConfig(
        project="pit", provider="local", repo_path=str(folder), entity_key_serialization_version=3,
        registry={"registry_type": "sql", "path": f"sqlite:///{folder}/registry.db"},
        offline_store={"type": offline_type}, online_store={"type": "sqlite", "path": str(online)},
        **config,
    ))


def twin_stores(folder: Path, objects: list, **config: object) -> tuple[FeatureStore, FeatureStore]:
    """The plugin's store and the stock store over one registry holding objects."""
    ours = open_store(folder, OURS, **config)
    ours.apply(objects)
    return ours, open_store(folder, STOCK, **config)


def training_set(store: FeatureStore, entity_df: pd.DataFrame | str, features: object,
                 full_feature_names: bool = False) -> pd.DataFrame:
    """get_historical_features(...).to_df()."""
    return store.get_historical_features(entity_df=entity_df, features=features,
                                         full_feature_names=full_feature_names).to_df()


def assert_same_rows(ours: pd.DataFrame, stock: pd.DataFrame, by: str = "row_id") -> None:
    """Equal frames once both are sorted by the entity-frame row id."""
    pd.testing.assert_frame_equal(ours.sort_values(by, ignore_index=True),
                                  stock.sort_values(by, ignore_index=True))


def values(df: pd.DataFrame, column: str) -> list[object]:
    """A column as a list, nulls as None."""
    return [None if pd.isna(v) else v for v in df[column]]


# --- Feast finds the plugin -------------------------------------------------------------------


def test_feast_resolves_the_store_and_its_config_by_name(tmp_path: Path) -> None:
    assert get_offline_config_from_type(OURS) is AsofDuckDBOfflineStoreConfig
    store = open_store(tmp_path, OURS)
    assert isinstance(store.config.offline_store, AsofDuckDBOfflineStoreConfig)
    assert type(store._get_provider().offline_store) is AsofDuckDBOfflineStore
    assert issubclass(AsofDuckDBOfflineStore, DuckDBOfflineStore)


# --- known answers ----------------------------------------------------------------------------


@pytest.fixture()
def user_table(tmp_path: Path) -> str:
    """u0: x=1 at T0, x=2 at T0+10h; u1: x=7 at T0+1h."""
    return write_table(tmp_path / "user.parquet", {
        "user_id": ["u0", "u0", "u1"],
        "event_timestamp": [at(0), at(10), at(1)],
        "created_timestamp": [at(0), at(10), at(1)],
        "x": [1, 2, 7],
    })


def test_ttl_is_a_look_back_window_closed_at_both_ends(tmp_path: Path, user_table: str) -> None:
    fv = feature_view("user_fv", [user], source(user_table), timedelta(hours=2), {"x": Int64})
    ours, stock = twin_stores(tmp_path, [user, fv])
    times = [at(0, -1), at(0), at(2), at(2, 1), at(9), at(10), at(11, 59)]
    entity_df = pd.DataFrame({"row_id": range(len(times)), "user_id": "u0", "event_timestamp": times})
    result = training_set(ours, entity_df, ["user_fv:x"])
    # before any value; at the value's time; exactly TTL later; a microsecond too late; ...
    assert values(result, "x") == [None, 1, 1, None, None, 2, 2]
    assert_same_rows(result, training_set(stock, entity_df, ["user_fv:x"]))


@pytest.mark.parametrize("ttl", [None, timedelta(0)])
def test_no_ttl_or_a_zero_ttl_looks_back_forever(tmp_path: Path, user_table: str,
                                                  ttl: timedelta | None) -> None:
    fv = feature_view("user_fv", [user], source(user_table), ttl, {"x": Int64})
    ours, stock = twin_stores(tmp_path, [user, fv])
    entity_df = pd.DataFrame({"row_id": [0, 1], "user_id": ["u0", "u1"],
                              "event_timestamp": [at(5), at(24 * 3650)]})
    result = training_set(ours, entity_df, ["user_fv:x"])
    assert values(result, "x") == [1, 7]
    assert_same_rows(result, training_set(stock, entity_df, ["user_fv:x"]))


def test_the_latest_created_row_wins_a_tie_on_event_time(tmp_path: Path) -> None:
    path = write_table(tmp_path / "ties.parquet", {
        "user_id": ["u0"] * 4,
        "event_timestamp": [at(0), at(0), at(0), at(1)],
        "created_timestamp": [at(1), at(3), at(2), at(0)],  # the latest created is in the middle
        "x": [1, 3, 2, 4],
    })
    fv = feature_view("ties_fv", [user], source(path), timedelta(days=1), {"x": Int64})
    ours, stock = twin_stores(tmp_path, [user, fv])
    entity_df = pd.DataFrame({"row_id": [0, 1], "user_id": "u0", "event_timestamp": [at(0.5), at(1)]})
    result = training_set(ours, entity_df, ["ties_fv:x"])
    assert values(result, "x") == [3, 4]  # event time first; created time breaks ties only
    assert_same_rows(result, training_set(stock, entity_df, ["ties_fv:x"]))


def test_several_views_with_different_and_compound_keys(tmp_path: Path, user_table: str) -> None:
    usage = write_table(tmp_path / "usage.parquet", {
        "user_id": ["u0", "u0", "u1"], "app": ["mail", "maps", "mail"],
        "event_timestamp": [at(0), at(0), at(0)], "created_timestamp": [at(0), at(0), at(0)],
        "x": [10, 20, 30],
    })
    popularity = write_table(tmp_path / "popularity.parquet", {
        "app": ["mail", "maps"], "hour": [8, 8],
        "event_timestamp": [at(0), at(0)], "created_timestamp": [at(0), at(0)], "score": [0.5, 0.25],
    })
    views = [
        feature_view("user_fv", [user], source(user_table), None, {"x": Int64}),
        feature_view("usage_fv", [user, app], source(usage), None, {"x": Int64}),
        feature_view("popularity_fv", [app, hour], source(popularity), None, {"score": Float64}),
    ]
    ours, stock = twin_stores(tmp_path, [user, app, hour, *views])
    entity_df = pd.DataFrame({"row_id": [0, 1, 2, 3], "user_id": ["u0", "u0", "u1", "u9"],
                              "app": ["maps", "mail", "maps", "mail"], "hour": [8, 9, 8, 8],
                              "event_timestamp": [at(12)] * 4})
    refs = ["user_fv:x", "usage_fv:x", "popularity_fv:score"]
    result = training_set(ours, entity_df, refs, full_feature_names=True)
    assert list(result.columns) == [*entity_df.columns, "user_fv__x", "usage_fv__x", "popularity_fv__score"]
    assert values(result, "user_fv__x") == [2, 2, 7, None]
    assert values(result, "usage_fv__x") == [20, 10, None, None]
    assert values(result, "popularity_fv__score") == [0.25, None, 0.25, 0.5]
    assert_same_rows(result, training_set(stock, entity_df, refs, full_feature_names=True))


def test_field_mapping_renames_source_columns(tmp_path: Path) -> None:
    path = write_table(tmp_path / "raw.parquet", {
        "uid": ["u0", "u1"], "event_timestamp": [at(0), at(0)], "created_timestamp": [at(0), at(0)],
        "n_opens": [3, 4],
    })
    src = source(path, field_mapping={"uid": "user_id", "n_opens": "opens"})
    fv = feature_view("mapped_fv", [user], src, None, {"opens": Int64})
    ours, stock = twin_stores(tmp_path, [user, fv])
    entity_df = pd.DataFrame({"row_id": [0, 1], "user_id": ["u1", "u0"], "event_timestamp": [at(1)] * 2})
    result = training_set(ours, entity_df, ["mapped_fv:opens"])
    assert values(result, "opens") == [4, 3]
    assert_same_rows(result, training_set(stock, entity_df, ["mapped_fv:opens"]))


def test_a_feature_service_with_an_aliased_view_and_a_join_key_map(tmp_path: Path, user_table: str) -> None:
    fv = feature_view("user_fv", [user], source(user_table), None, {"x": Int64})
    friend = fv.with_name("friend_fv").with_join_key_map({"user_id": "friend_id"})
    # Both aliased: Feast 0.67 cannot compare a service mixing aliased and plain projections.
    service = FeatureService(name="pair_v1", features=[fv.with_name("me_fv"), friend])
    ours, stock = twin_stores(tmp_path, [user, fv, service])
    entity_df = pd.DataFrame({"row_id": [0, 1], "user_id": ["u0", "u1"], "friend_id": ["u1", "u9"],
                              "event_timestamp": [at(12)] * 2})
    features = ours.get_feature_service("pair_v1")
    result = training_set(ours, entity_df, features, full_feature_names=True)
    assert values(result, "me_fv__x") == [2, 7]
    assert values(result, "friend_fv__x") == [7, None]
    assert_same_rows(result, training_set(stock, entity_df, features, full_feature_names=True))


bonus_request = RequestSource(name="bonus_request", schema=[Field(name="bonus", dtype=Int64)])
# The on-demand view's input: the registry's user_fv (each test applies its own, same schema).
user_fv_schema = feature_view("user_fv", [user], source("user.parquet"), None, {"x": Int64})


@on_demand_feature_view(sources=[user_fv_schema, bonus_request],
                        schema=[Field(name="x_plus_bonus", dtype=Float64)], mode="pandas")
def x_plus_bonus_odfv(inputs: pd.DataFrame) -> pd.DataFrame:
    """x plus the request's bonus."""
    return pd.DataFrame({"x_plus_bonus": inputs["x"].astype("float64") + inputs["bonus"]})


def test_on_demand_views_run_after_the_join(tmp_path: Path, user_table: str) -> None:
    fv = feature_view("user_fv", [user], source(user_table), None, {"x": Int64})
    ours, stock = twin_stores(tmp_path, [user, fv, x_plus_bonus_odfv])
    entity_df = pd.DataFrame({"row_id": [0, 1, 2], "user_id": ["u0", "u1", "u9"], "bonus": [100, 200, 300],
                              "event_timestamp": [at(12)] * 3})
    refs = ["user_fv:x", "x_plus_bonus_odfv:x_plus_bonus"]
    result = training_set(ours, entity_df, refs)
    assert values(result, "x_plus_bonus") == [102.0, 207.0, None]
    assert_same_rows(result, training_set(stock, entity_df, refs))


def test_rows_keep_their_order_extra_columns_and_duplicates(tmp_path: Path, user_table: str) -> None:
    fv = feature_view("user_fv", [user], source(user_table), None, {"x": Int64})
    ours, stock = twin_stores(tmp_path, [user, fv])
    entity_df = pd.DataFrame({
        "row_id": [0, 1, 2, 3, 4], "note": ["late", "early", "late again", "nobody", "early"],
        "user_id": ["u0", "u0", "u0", "u5", "u0"],
        "event_timestamp": [at(20), at(1), at(20), at(1), at(1)], "weight": [0.5, 1.0, 0.5, 2.0, 1.0],
    })
    result = training_set(ours, entity_df, ["user_fv:x"])
    assert list(result.columns) == [*entity_df.columns, "x"]
    pd.testing.assert_frame_equal(result[entity_df.columns].drop(columns="event_timestamp"),
                                  entity_df.drop(columns="event_timestamp"))
    assert values(result, "x") == [2, 1, 2, None, 1]
    assert_same_rows(result, training_set(stock, entity_df, ["user_fv:x"]))


def test_an_entity_frame_given_as_sql_gives_the_same_rows(tmp_path: Path, user_table: str) -> None:
    fv = feature_view("user_fv", [user], source(user_table), timedelta(hours=2), {"x": Int64})
    ours, _ = twin_stores(tmp_path, [user, fv])
    entity_df = pd.DataFrame({"row_id": [0, 1, 2], "user_id": ["u0", "u1", "u0"],
                              "event_timestamp": [at(1), at(2), at(11)]})
    path = tmp_path / "entity.parquet"
    entity_df.astype({"event_timestamp": "datetime64[us, UTC]"}).to_parquet(path)
    from_sql = training_set(ours, f"SELECT * FROM read_parquet('{path}') ORDER BY row_id", ["user_fv:x"])
    pd.testing.assert_frame_equal(from_sql, training_set(ours, entity_df, ["user_fv:x"]))
    assert values(from_sql, "x") == [1, 7, 2]


@pytest.mark.parametrize("coerce_tz_aware", [True, False])
def test_naive_entity_times_are_utc_and_typed_as_feast_types_them(
    tmp_path: Path, user_table: str, coerce_tz_aware: bool
) -> None:
    fv = feature_view("user_fv", [user], source(user_table), timedelta(hours=2), {"x": Int64})
    ours, stock = twin_stores(tmp_path, [user, fv], coerce_tz_aware=coerce_tz_aware)
    aware = pd.DataFrame({"row_id": [0, 1, 2], "user_id": "u0",
                          "event_timestamp": [at(0, -1), at(2), at(10)]})
    naive = aware.assign(event_timestamp=aware["event_timestamp"].dt.tz_localize(None))
    result = training_set(ours, naive, ["user_fv:x"])
    assert values(result, "x") == [None, 1, 2]
    stock_result = training_set(stock, naive, ["user_fv:x"])
    assert result["event_timestamp"].dtype == stock_result["event_timestamp"].dtype
    assert_same_rows(result, stock_result)
    from_aware = training_set(ours, aware, ["user_fv:x"])
    assert values(from_aware, "x") == values(result, "x")
    assert str(from_aware["event_timestamp"].dtype) == "datetime64[us, UTC]"


def test_the_callers_entity_frame_is_not_modified(tmp_path: Path, user_table: str) -> None:
    fv = feature_view("user_fv", [user], source(user_table), None, {"x": Int64})
    ours, _ = twin_stores(tmp_path, [user, fv], coerce_tz_aware=False)  # Feast hands the frame over as is
    entity_df = pd.DataFrame({"row_id": [0, 1], "user_id": pd.Categorical(["u0", "u1"]),
                              "event_timestamp": ["2026-01-01T05:00:00Z", "2026-01-01T06:00:00Z"]})
    before = entity_df.copy(deep=True)
    result = training_set(ours, entity_df, ["user_fv:x"])
    pd.testing.assert_frame_equal(entity_df, before)
    assert values(result, "x") == [1, 7]


def test_relative_source_paths_are_relative_to_the_repo(tmp_path: Path, user_table: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    fv = feature_view("user_fv", [user], source("user.parquet"), None, {"x": Int64})
    ours, _ = twin_stores(tmp_path, [user, fv])
    monkeypatch.chdir(tmp_path.parent)  # not the repo
    entity_df = pd.DataFrame({"row_id": [0], "user_id": ["u1"], "event_timestamp": [at(3)]})
    assert values(training_set(ours, entity_df, ["user_fv:x"]), "x") == [7]


def test_a_missing_entity_column_is_named(tmp_path: Path, user_table: str) -> None:
    fv = feature_view("user_fv", [user], source(user_table), None, {"x": Int64})
    ours, _ = twin_stores(tmp_path, [user, fv])
    with pytest.raises(FeastEntityDFMissingColumnsError, match="user_id"):
        training_set(ours, pd.DataFrame({"event_timestamp": [at(1)]}), ["user_fv:x"])


def test_a_saved_dataset_holds_the_training_set(tmp_path: Path, user_table: str) -> None:
    fv = feature_view("user_fv", [user], source(user_table), None, {"x": Int64})
    ours, _ = twin_stores(tmp_path, [user, fv])
    entity_df = pd.DataFrame({"row_id": [0, 1], "user_id": ["u0", "u1"], "event_timestamp": [at(12)] * 2})
    job = ours.get_historical_features(entity_df=entity_df, features=["user_fv:x"])
    ours.create_saved_dataset(from_=job, name="users_v1",
                              storage=SavedDatasetFileStorage(path=str(tmp_path / "saved.parquet")))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "saved.parquet"), job.to_df())


def test_sub_microsecond_entity_times_are_refused_with_advice(tmp_path: Path, user_table: str) -> None:
    fv = feature_view("user_fv", [user], source(user_table), None, {"x": Int64})
    ours, _ = twin_stores(tmp_path, [user, fv])
    entity_df = pd.DataFrame({"user_id": ["u0"], "event_timestamp": [at(1) + pd.Timedelta(nanoseconds=5)]})
    with pytest.raises(ValueError, match="sub-microsecond"):
        training_set(ours, entity_df, ["user_fv:x"])


def test_filter_by_created_timestamp_is_left_to_the_stock_store(tmp_path: Path) -> None:
    path = write_table(tmp_path / "late.parquet", {
        "user_id": ["u0", "u0"], "event_timestamp": [at(0), at(1)], "created_timestamp": [at(0), at(5)],
        "x": [1, 2],
    })
    fv = feature_view("late_fv", [user], source(path), None, {"x": Int64})
    ours, stock = twin_stores(tmp_path, [user, fv])
    entity_df = pd.DataFrame({"row_id": [0], "user_id": ["u0"], "event_timestamp": [at(2)]})
    jobs = [s.get_historical_features(entity_df=entity_df, features=["late_fv:x"],
                                      filter_by_created_timestamp=True) for s in (ours, stock)]
    assert values(jobs[0].to_df(), "x") == [1]  # the row stamped 1h was created only at 5h
    assert_same_rows(jobs[0].to_df(), jobs[1].to_df())


# --- pulls for materialization ----------------------------------------------------------------


@pytest.fixture()
def pull_source(tmp_path: Path) -> FileSource:
    """Two users with ties on event time, rows inside and outside [T0+1h, T0+5h]."""
    return source(write_table(tmp_path / "pull.parquet", {
        "user_id": ["u0", "u0", "u0", "u1", "u1", "u2"],
        "event_timestamp": [at(1), at(3), at(3), at(2), at(6), at(0)],
        "created_timestamp": [at(1), at(4), at(3), at(2), at(6), at(0)],
        "x": [1, 2, 3, 4, 5, 6], "score": [0.1, None, 0.3, 0.4, 0.5, 0.6],
    }))


@pytest.mark.parametrize("pull", ["pull_latest_from_table_or_query", "pull_all_from_table_or_query"])
def test_pulls_return_what_the_stock_store_returns(tmp_path: Path, pull_source: FileSource,
                                                   pull: str) -> None:
    results = []
    for offline_type, store_class in ((OURS, AsofDuckDBOfflineStore), (STOCK, DuckDBOfflineStore)):
        config = open_store(tmp_path, offline_type).config
        job = getattr(store_class, pull)(config, pull_source, ["user_id"], ["x", "score"], "event_timestamp",
                                         "created_timestamp", at(1).to_pydatetime(), at(5).to_pydatetime())
        results.append(job.to_arrow())
    ours, stock = results
    assert ours.schema == stock.schema
    assert_same_rows(ours.to_pandas(), stock.to_pandas(), by="x")
    if pull.startswith("pull_latest"):
        assert sorted(ours.column("x").to_pylist()) == [2, 4]  # u0's latest created at 3h; u1 at 2h


@pytest.mark.parametrize("pull_latest_features", [False, True])
def test_materialize_loads_the_same_online_values(tmp_path: Path, pull_latest_features: bool) -> None:
    stores = []
    for offline_type in (OURS, STOCK):
        folder = tmp_path / offline_type.rsplit(".", 1)[-1]
        folder.mkdir()
        path = write_table(folder / "raw.parquet", {
            "uid": ["u0", "u0", "u0", "u1", "u2"],
            "event_timestamp": [at(1), at(2), at(2), at(3), at(30)],
            "created_timestamp": [at(1), at(3), at(2), at(3), at(30)],
            "x": [1, 2, 3, 4, 5], "label": ["a", "b", "c", None, "e"],
        })
        src = source(path, field_mapping={"uid": "user_id"})
        fv = feature_view("user_fv", [user], src, timedelta(days=7), {"x": Int64, "label": String})
        materialization = {"pull_latest_features": pull_latest_features}
        store = open_store(folder, offline_type, materialization=materialization)
        store.apply([user, fv])
        store.materialize(at(0).to_pydatetime(), at(24).to_pydatetime())
        stores.append(store)
    rows = [{"user_id": u} for u in ("u0", "u1", "u2")]
    ours, stock = (s.get_online_features(features=["user_fv:x", "user_fv:label"], entity_rows=rows).to_dict()
                   for s in stores)
    assert ours == stock
    assert ours["x"] == [2, 4, None]  # u0's tie at 2h: created at 3h wins; u2 only after the window
    assert ours["label"] == ["b", None, None]



def test_materialize_reads_a_window_without_a_zone_as_utc(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from feastflow.settings import Settings
    from pipelines.feast_ops import materialize

    # `feastflow materialize --start 2999-01-01` (a date without a zone, the end left to "now")
    # is compared as UTC instead of failing on naive against aware datetimes.
    with pytest.raises(ValueError, match=r"start 2999-01-01T00:00:00\+00:00 is not before end "
                                         r"2027-01-01T00:00:00\+00:00"):
        materialize(Settings(home=tmp_path), "next_app", start=datetime(2999, 1, 1),
                    end=datetime(2027, 1, 1))
    with pytest.raises(ValueError, match=r"start 2027-01-02T00:00:00\+00:00 is not before end "
                                         r"2027-01-01T00:00:00\+00:00"):
        materialize(Settings(home=tmp_path), "next_app", start=datetime(2027, 1, 2),
                    end=datetime(2027, 1, 1, tzinfo=UTC))

# --- property tests: the plugin equals the stock store ----------------------------------------

USERS, APPS, HOURS = ["u0", "u1", "u2"], ["a0", "a1"], [0, 1]
# view kind -> (entities, features); each kind has one file and a view per TTL
KINDS = {
    "user": ([user], {"u_count": Int64, "u_score": Float64}),
    "user_app": ([user, app], {"ua_count": Int64, "ua_label": String}),
    "app_hour": ([app, hour], {"ah_share": Float64}),
}
TTLS = {"none": None, "zero": timedelta(0), "1h": timedelta(hours=1), "3h": timedelta(hours=3)}
FEATURE_TYPES = {"u_count": pa.int64(), "u_score": pa.float64(), "ua_count": pa.int64(),
                 "ua_label": pa.string(), "ah_share": pa.float64()}
KEY_VALUES = {"user_id": st.sampled_from(USERS), "app": st.sampled_from(APPS), "hour": st.sampled_from(HOURS)}
FEATURE_VALUES = {pa.int64(): st.integers(-5, 5), pa.float64(): st.floats(-1, 1, width=32),
                  pa.string(): st.sampled_from(["p", "q", "r"])}


def maybe_null(values: st.SearchStrategy) -> st.SearchStrategy:
    """Values, null about one time in four."""
    return st.one_of(values, values, values, st.none())


def join_keys(kind: str) -> list[str]:
    """The join keys of a view kind."""
    return [e.join_key for e in KINDS[kind][0]]


@st.composite
def feature_tables(draw: st.DrawFn, kind: str) -> pa.Table:
    """Rows on a coarse hourly grid (ties and TTL edges happen), unique (keys, event, created)."""
    features = KINDS[kind][1]
    row = st.tuples(st.tuples(*(KEY_VALUES[k] for k in join_keys(kind))),
                    st.sampled_from(range(9)), st.integers(0, 2),  # event hour, created minutes after
                    st.tuples(*(maybe_null(FEATURE_VALUES[FEATURE_TYPES[f]]) for f in features)))
    # unique (keys, event, created): a full tie has no defined winner
    drawn = draw(st.lists(row, min_size=5, max_size=50, unique_by=lambda r: r[:3]))
    rows = {(keys, event, created): values for keys, event, created, values in drawn}
    columns: dict[str, list] = {k: [key[0][i] for key in rows] for i, k in enumerate(join_keys(kind))}
    columns["event_timestamp"] = [at(event) for _, event, _ in rows]
    columns["created_timestamp"] = [at(event) + pd.Timedelta(minutes=created) for _, event, created in rows]
    for i, f in enumerate(features):
        columns[f] = [v[i] for v in rows.values()]
    return typed_table(kind, columns)


def typed_table(kind: str, columns: dict[str, list] | None = None) -> pa.Table:
    """A view kind's table from columns (none: an empty table)."""
    types = {**TYPES, **FEATURE_TYPES}
    names = [*join_keys(kind), "event_timestamp", "created_timestamp", *KINDS[kind][1]]
    return pa.table({name: pa.array((columns or {}).get(name, []), type=types[name]) for name in names})


@st.composite
def entity_frames(draw: st.DrawFn) -> pd.DataFrame:
    """Entity rows with unknown and null keys, duplicates, times on and just past the grid."""
    rows = draw(st.lists(st.tuples(
        st.sampled_from([*USERS, *USERS, "u9", None]), st.sampled_from([*APPS, *APPS, "a9"]),
        st.sampled_from(HOURS),
        st.sampled_from(range(11)), st.sampled_from([0, 1]),  # hour, and a microsecond past it
    ), min_size=3, max_size=25))
    rows += rows[: draw(st.integers(0, 3))]  # exact duplicates
    times = pd.Series([at(h, us) for *_, h, us in rows])
    if draw(st.booleans()):
        times = times.dt.tz_localize(None)  # naive: UTC
    return pd.DataFrame({"row_id": range(len(rows)), "user_id": [r[0] for r in rows],
                         "app": [r[1] for r in rows], "hour": [r[2] for r in rows],
                         "note": [f"n{i % 3}" for i in range(len(rows))], "event_timestamp": times})


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FeatureStore, FeatureStore]:
    """A repo with a view per (kind, TTL) over one file per kind; the files change per example."""
    folder = tmp_path_factory.mktemp("twins")
    views = []
    for kind, (entities, features) in KINDS.items():
        path = folder / f"{kind}.parquet"
        pq.write_table(typed_table(kind), path)
        for ttl_name, ttl in TTLS.items():
            views.append(feature_view(f"{kind}_{ttl_name}_fv", entities, source(str(path)), ttl, features))
    ours, stock = twin_stores(folder, [user, app, hour, *views])
    return folder, ours, stock


# The fast path, the path for keys that are not integers or strings, and large-join machinery
# (key partitions, one view at a time, sliced takes) scaled down to tiny tables.
PATHS = {
    "codes": {},
    "plain keys": {"_entity_code": lambda *args: None},
    "partitions": {"PARTITION_ROWS": 4, "PARALLEL_ROWS": 0, "TAKE_ROWS": 3},
}


@pytest.mark.parametrize("path", sorted(PATHS))
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_the_plugin_returns_the_stock_stores_training_set(
    twins: tuple[Path, FeatureStore, FeatureStore], data: st.DataObject, path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in PATHS[path].items():
        monkeypatch.setattr(offline_store, name, value)
    folder, ours, stock = twins
    kinds = data.draw(st.lists(st.sampled_from(sorted(KINDS)), min_size=2, max_size=3, unique=True))
    for kind in kinds:
        pq.write_table(data.draw(feature_tables(kind), label=kind), folder / f"{kind}.parquet")
    refs = []
    for kind in kinds:
        ttl_name = data.draw(st.sampled_from(sorted(TTLS)), label=f"{kind} ttl")
        refs += [f"{kind}_{ttl_name}_fv:{f}" for f in KINDS[kind][1]]
    entity_df = data.draw(entity_frames(), label="entity_df")
    full_names = data.draw(st.booleans(), label="full_feature_names")
    assert_same_rows(training_set(ours, entity_df, refs, full_names),
                     training_set(stock, entity_df, refs, full_names))


# --- column names and timestamp features ------------------------------------------------------


def cased_table(path: Path, columns: dict[str, list]) -> str:
    """Columns (in their order) then the event and created times of one or two rows."""
    rows = len(next(iter(columns.values())))
    times = {"event_timestamp": [at(0)] * rows, "created_timestamp": [at(0)] * rows}
    return write_table(path, {**columns, **times})


@pytest.mark.parametrize(("columns", "features", "clash"), [
    ({"user_id": ["u0"], "x": [1], "X": [2]}, {"x": Int64, "X": Int64}, "['x', 'X']"),
    ({"USER_ID": ["u1"], "user_id": ["u0"], "x": [1]}, {"x": Int64}, "['USER_ID', 'user_id']"),
])
def test_source_columns_differing_only_in_case_are_refused_not_misread(
    tmp_path: Path, columns: dict[str, list], features: dict[str, object], clash: str
) -> None:
    # DuckDB reads `X` as `x`'s values, and joins on `USER_ID` when asked for `user_id`.
    fv = feature_view("cased_fv", [user], source(cased_table(tmp_path / "cased.parquet", columns)), None,
                      features)
    ours, stock = twin_stores(tmp_path, [user, fv])
    entity_df = pd.DataFrame({"row_id": [0], "user_id": ["u0"], "event_timestamp": [at(1)]})
    refs = [f"cased_fv:{f}" for f in features]
    with pytest.raises(ValueError, match=rf"view 'cased_fv': column .* {re.escape(clash)} differ only in"):
        training_set(ours, entity_df, refs)
    with pytest.raises(IbisTypeError, match="is not found"):  # Feast's store cannot read it either
        training_set(stock, entity_df, refs)
    with pytest.raises(ValueError, match=rf"source 'cased_source': .* {re.escape(clash)} differ only in"):
        ours.materialize(at(0).to_pydatetime(), at(24).to_pydatetime())


def test_the_first_of_two_case_twins_is_read_as_the_stock_store_reads_it(tmp_path: Path) -> None:
    path = cased_table(tmp_path / "cased.parquet", {"user_id": ["u0", "u1"], "x": [1, 2], "X": [3, 4]})
    fv = feature_view("cased_fv", [user], source(path), None, {"x": Int64})
    ours, stock = twin_stores(tmp_path, [user, fv])
    entity_df = pd.DataFrame({"row_id": [0, 1], "user_id": ["u1", "u0"], "event_timestamp": [at(1)] * 2})
    result = training_set(ours, entity_df, ["cased_fv:x"])
    assert values(result, "x") == [2, 1]
    assert_same_rows(result, training_set(stock, entity_df, ["cased_fv:x"]))


def test_a_feature_named_in_another_case_than_its_column_is_refused(tmp_path: Path) -> None:
    path = cased_table(tmp_path / "cased.parquet", {"user_id": ["u0"], "x": [1]})
    fv = feature_view("cased_fv", [user], source(path), None, {"X": Int64})  # DuckDB would read x
    ours, stock = twin_stores(tmp_path, [user, fv])
    entity_df = pd.DataFrame({"row_id": [0], "user_id": ["u0"], "event_timestamp": [at(1)]})
    with pytest.raises(ValueError, match=r"feature view 'cased_fv': .* no column 'X' \(.*it has 'x'\)"):
        training_set(ours, entity_df, ["cased_fv:X"])
    with pytest.raises(IbisTypeError, match="is not found"):
        training_set(stock, entity_df, ["cased_fv:X"])


def test_entity_columns_differing_in_case_from_keys_and_features_are_kept_apart(
    tmp_path: Path, user_table: str
) -> None:
    fv = feature_view("user_fv", [user], source(user_table), None, {"x": Int64})
    ours, stock = twin_stores(tmp_path, [user, fv])
    entity_df = pd.DataFrame({"row_id": [0, 1], "user_id": ["u0", "u1"], "X": [-1, -2],
                              "event_timestamp": [at(12)] * 2})
    result = training_set(ours, entity_df, ["user_fv:x"])
    assert values(result, "x") == [2, 7] and values(result, "X") == [-1, -2]
    assert_same_rows(result, training_set(stock, entity_df, ["user_fv:x"]))
    # A column USER_ID beside the key user_id (Feast's store fails here: 'Field "USER_ID" exists 2 times').
    with_twin = entity_df.assign(USER_ID=["u1", "u0"])
    result = training_set(ours, with_twin, ["user_fv:x"])
    assert values(result, "x") == [2, 7] and values(result, "USER_ID") == ["u1", "u0"]


INTERNAL_NAMES = ["__k0", "__K1", "__ts", "__created", "__row", "__match", "__v0", "__v9", "value", "code"]


@pytest.mark.parametrize("path", sorted(PATHS))
def test_features_named_like_the_plugins_internal_columns(tmp_path: Path, path: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in PATHS[path].items():
        monkeypatch.setattr(offline_store, name, value)
    columns = {"user_id": ["u0", "u1"], **{f: [i, 10 + i] for i, f in enumerate(INTERNAL_NAMES)}}
    fv = feature_view("odd_fv", [user], source(cased_table(tmp_path / "odd.parquet", columns)), None,
                      dict.fromkeys(INTERNAL_NAMES, Int64))
    ours, stock = twin_stores(tmp_path, [user, fv])
    entity_df = pd.DataFrame({"row_id": [0, 1, 2], "user_id": ["u1", "u9", "u0"],
                              "event_timestamp": [at(1)] * 3})
    refs = [f"odd_fv:{f}" for f in INTERNAL_NAMES]
    result = training_set(ours, entity_df, refs)
    assert [values(result, f) for f in INTERNAL_NAMES] == [[10 + i, None, i]
                                                           for i in range(len(INTERNAL_NAMES))]
    assert_same_rows(result, training_set(stock, entity_df, refs))


@pytest.mark.parametrize(("entity_column", "full_feature_names"), [("x", False), ("user_fv__x", True)])
def test_an_entity_column_named_like_an_output_feature_is_refused(
    tmp_path: Path, user_table: str, entity_column: str, full_feature_names: bool
) -> None:
    fv = feature_view("user_fv", [user], source(user_table), None, {"x": Int64})
    ours, stock = twin_stores(tmp_path, [user, fv])
    entity_df = pd.DataFrame({"row_id": [0], "user_id": ["u0"], entity_column: [-1],
                              "event_timestamp": [at(1)]})
    with pytest.raises(ValueError, match=rf"two columns named '{entity_column}': the entity frame's column "
                                         rf"'{entity_column}' and feature '{entity_column}' of feature view "
                                         "'user_fv'; rename the entity frame's column"):
        training_set(ours, entity_df, ["user_fv:x"], full_feature_names)
    with pytest.raises(IbisInputError, match="Duplicate column name"):
        training_set(stock, entity_df, ["user_fv:x"], full_feature_names)
    # The other naming keeps them apart, in both stores.
    result = training_set(ours, entity_df, ["user_fv:x"], not full_feature_names)
    assert_same_rows(result, training_set(stock, entity_df, ["user_fv:x"], not full_feature_names))


@pytest.mark.parametrize("file_type", [pa.timestamp("us"), pa.timestamp("ns", tz="UTC"),
                                       pa.timestamp("ms", tz="Europe/Paris")], ids=str)
def test_the_views_own_times_as_features_are_utc_as_in_feast(tmp_path: Path, file_type: pa.DataType) -> None:
    times = [at(0), at(1, 1000)]  # a millisecond past the hour: every type holds it
    stamps = pa.array([t.tz_localize(None) for t in times] if file_type.tz is None else times, file_type)
    pq.write_table(pa.table({"user_id": ["u0", "u1"], "event_ts": stamps, "created": stamps}),
                   tmp_path / "stamped.parquet")
    src = FileSource(name="stamped_source", path=str(tmp_path / "stamped.parquet"),
                     timestamp_field="event_ts", created_timestamp_column="created")
    fv = feature_view("stamped_fv", [user], src, None, {"event_ts": UnixTimestamp, "created": UnixTimestamp})
    ours, stock = twin_stores(tmp_path, [user, fv])
    entity_df = pd.DataFrame({"row_id": [0, 1, 2], "user_id": ["u1", "u0", "u9"],
                              "event_timestamp": [at(2)] * 3})
    refs = ["stamped_fv:event_ts", "stamped_fv:created"]
    result = training_set(ours, entity_df, refs)
    assert [str(result[c].dtype) for c in ("event_ts", "created")] == ["datetime64[us, UTC]"] * 2
    assert values(result, "event_ts") == [at(1, 1000), at(0), None]
    assert_same_rows(result, training_set(stock, entity_df, refs))
