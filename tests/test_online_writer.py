"""The fast online writer writes exactly what Feast's Redis store writes, on a real Redis.

Encoders are checked byte for byte against Feast's own conversion (`python_values_to_proto_values`,
`_redis_key`, `Timestamp.FromDatetime`) on random columns; the writer against Feast's
`RedisOnlineStore.online_write_batch` (what its materialize calls): the same rows written by both
leave the same hashes, TTLs and `get_online_features` answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import redis
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.infra.online_stores.helpers import _redis_key
from feast.infra.online_stores.redis import RedisOnlineStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RepoConfig
from feast.type_map import python_values_to_proto_values
from feast.types import Array, Bool, Float32, Float64, Int32, Int64, String
from feast.utils import _convert_arrow_to_proto, make_tzaware
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feastflow.errors import InputError
from feastflow.online_writer import (
    RedisOnlineWriter,
    RedisTarget,
    WriteLayout,
    encode_keys,
    encode_timestamps,
    encode_values,
)

_projects = count()

# --- encoders against Feast's own conversion, no Redis --------------------------------------

FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64)
INT64S = st.integers(-(2**63), 2**63 - 1)


def feast_bytes(array: pa.Array, value_type: ValueType) -> list[bytes]:
    """What Feast's materialization stores for each value of an Arrow column."""
    protos = python_values_to_proto_values(array.to_numpy(zero_copy_only=False), value_type)
    return [p.SerializeToString() for p in protos]


COLUMNS = [
    (st.lists(st.one_of(st.none(), FLOATS)), pa.float64(), ValueType.DOUBLE),
    (st.lists(st.one_of(st.none(), FLOATS)), pa.float64(), ValueType.FLOAT),
    (st.lists(st.one_of(st.none(), st.floats(width=32))), pa.float32(), ValueType.FLOAT),
    (st.lists(st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1))), pa.int64(), ValueType.DOUBLE),
    (st.lists(INT64S), pa.int64(), ValueType.INT64),
    (st.lists(st.one_of(st.none(), st.integers(-(2**53), 2**53))), pa.int64(), ValueType.INT64),
    (st.lists(st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1))), pa.int32(), ValueType.INT32),
    (st.lists(st.one_of(st.none(), st.integers(0, 255))), pa.uint8(), ValueType.INT64),
    (st.lists(st.one_of(st.none(), st.booleans())), pa.bool_(), ValueType.BOOL),
    (st.lists(st.one_of(st.none(), st.text())), pa.string(), ValueType.STRING),
    (st.lists(st.one_of(st.none(), st.lists(st.text(max_size=5), max_size=3))),
     pa.list_(pa.string()), ValueType.STRING_LIST),
    (st.lists(st.one_of(st.none(), st.lists(INT64S, max_size=3))), pa.list_(pa.int64()),
     ValueType.INT64_LIST),
]


@pytest.mark.parametrize(("values", "arrow_type", "value_type"), COLUMNS,
                         ids=[f"{c[1]}->{c[2].name}" for c in COLUMNS])
def test_values_are_feasts_bytes(values: st.SearchStrategy[list[Any]], arrow_type: pa.DataType,
                                 value_type: ValueType) -> None:
    @settings(max_examples=60, deadline=None)
    @given(values)
    def check(rows: list[Any]) -> None:
        array = pa.array(rows, arrow_type)
        try:
            expected = feast_bytes(array, value_type)
        except (ValueError, TypeError, OverflowError, AssertionError):
            return  # Feast refuses these values; the writer must too, which the next line allows
        assert encode_values(array, value_type).to_pylist() == expected

    check()


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(-(2**62), 2**62), min_size=1), st.sampled_from(["s", "ms", "us", "ns"]))
def test_event_times_are_feasts_bytes(raw: list[int], unit: str) -> None:
    column = pa.array(raw, pa.timestamp(unit, tz="UTC"))
    try:
        stamps = pd.to_datetime(column.to_numpy(zero_copy_only=False))
        expected = []
        for stamp in stamps:
            proto = Timestamp()
            proto.FromDatetime(make_tzaware(stamp.to_pydatetime(warn=False)))
            expected.append(proto.SerializeToString())
    except (ValueError, OverflowError, pd.errors.OutOfBoundsDatetime):
        return  # outside what Feast's datetimes hold
    assert encode_timestamps(column).to_pylist() == expected


KEY_LAYOUT = WriteLayout(name="v", join_keys=("app_id", "user_id"),
                         key_types=(ValueType.INT64, ValueType.STRING), features=(),
                         feature_types=())


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(INT64S, st.text()), min_size=1), st.text(min_size=1, max_size=8))
def test_keys_are_feasts_redis_keys(rows: list[tuple[int, str]], project: str) -> None:
    apps, users = zip(*rows, strict=True)
    keys = encode_keys(KEY_LAYOUT, [pa.array(apps, pa.int64()), pa.array(users)], project)
    expected = [_redis_key(project, EntityKeyProto(
        join_keys=["user_id", "app_id"],  # Feast sorts the names itself
        entity_values=python_values_to_proto_values([u], ValueType.STRING)
        + python_values_to_proto_values([a], ValueType.INT64))) for a, u in rows]
    assert keys.to_pylist() == expected


def test_bad_rows_are_refused_with_the_column_named() -> None:
    with pytest.raises(InputError, match="user_id: 1 rows have no value"):
        encode_keys(KEY_LAYOUT, [pa.array([1, 2]), pa.array(["a", None])], "p")
    with pytest.raises(InputError, match="event_timestamp: 1 rows have no event time"):
        encode_timestamps(pa.array([None, 1], pa.timestamp("us", tz="UTC")))
    with pytest.raises(InputError, match="event_timestamp: expected a timestamp"):
        encode_timestamps(pa.array([1, 2]))


def test_targets_parse_urls_and_feast_connection_strings() -> None:
    assert RedisTarget.from_url("redis://:s%40cret@h:7000/3") == RedisTarget(
        "h", 7000, 3, "s@cret", None, False)
    assert RedisTarget.from_connection_string("h:7000,db=3,password=x,ssl=true") == RedisTarget(
        "h", 7000, 3, "x", None, True)
    with pytest.raises(InputError, match="redis://"):
        RedisTarget.from_url("http://h")


# --- the writer against Feast's writer, on a real Redis ------------------------------------

USER = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
APP = Entity(name="app", join_keys=["app_id"], value_type=ValueType.INT64)
SOURCE = FileSource(name="rows_source", path="/nonexistent/rows.parquet",
                    timestamp_field="event_timestamp", created_timestamp_column="created")
VIEW = FeatureView(
    name="usage", entities=[USER, APP], ttl=timedelta(days=2), source=SOURCE,
    schema=[Field(name="user_id", dtype=String), Field(name="app_id", dtype=Int64),
            Field(name="share", dtype=Float64), Field(name="score", dtype=Float32),
            Field(name="opens", dtype=Int64), Field(name="hour", dtype=Int32),
            Field(name="last_app", dtype=String), Field(name="charging", dtype=Bool),
            Field(name="top_apps", dtype=Array(String)), Field(name="counts", dtype=Array(Int64))])
FEATURES = [f.name for f in VIEW.features]
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def rows_strategy(min_size: int = 1) -> st.SearchStrategy[pd.DataFrame]:
    """Rows with repeated keys, equal event times, nulls, NaN and lists."""
    row = st.fixed_dictionaries({
        "user_id": st.sampled_from(["u1", "ü2", "", "a b"]),
        "app_id": st.integers(-2, 2),
        "share": st.one_of(st.none(), st.floats(allow_nan=True, width=64)),
        "score": st.one_of(st.none(), st.floats(width=32)),
        "opens": st.one_of(st.none(), st.integers(-(2**40), 2**40)),
        "hour": st.one_of(st.none(), st.integers(0, 23)),
        "last_app": st.one_of(st.none(), st.text(max_size=6)),
        "charging": st.one_of(st.none(), st.booleans()),
        "top_apps": st.one_of(st.none(), st.lists(st.text(max_size=3), max_size=3)),
        "counts": st.lists(st.integers(-5, 5), max_size=3),
        "event_timestamp": st.integers(0, 4).map(lambda h: T0 + timedelta(hours=h, microseconds=h)),
        "created": st.integers(0, 3).map(lambda m: T0 + timedelta(minutes=m)),
    })
    return st.lists(row, min_size=min_size, max_size=40).map(pd.DataFrame)


def arrow_rows(frame: pd.DataFrame) -> pa.Table:
    schema = pa.schema([("user_id", pa.string()), ("app_id", pa.int64()), ("share", pa.float64()),
                        ("score", pa.float32()), ("opens", pa.int64()), ("hour", pa.int32()),
                        ("last_app", pa.string()), ("charging", pa.bool_()),
                        ("top_apps", pa.list_(pa.string())), ("counts", pa.list_(pa.int64())),
                        ("event_timestamp", pa.timestamp("us", tz="UTC")),
                        ("created", pa.timestamp("us", tz="UTC"))])
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)


def redis_config(project: str, redis_url: str, tmp: Path, **online: Any) -> RepoConfig:
    target = RedisTarget.from_url(redis_url)
    return RepoConfig(
        project=project, provider="local", registry=str(tmp / f"{project}.db"),
        online_store={"type": "redis", "connection_string": f"{target.host}:{target.port},"
                      f"db={target.db}", **online},
        offline_store={"type": "file"}, entity_key_serialization_version=3,
        repo_path=str(tmp))


def feast_write(config: RepoConfig, table: pa.Table) -> None:
    """What Feast's materialize does with rows: convert, then online_write_batch."""
    join_keys = {e.name: e.dtype.to_value_type() for e in VIEW.entity_columns}
    RedisOnlineStore().online_write_batch(config, VIEW, _convert_arrow_to_proto(
        table, VIEW, join_keys), None)


def dump(client: redis.Redis, project: str) -> dict[bytes, tuple[dict[bytes, bytes], bool]]:
    """Every hash of a project (key without the project) and whether it has a TTL."""
    suffix = project.encode()
    return {key[:-len(suffix)]: (client.hgetall(key), client.ttl(key) > 0)
            for key in client.scan_iter(match=b"*" + suffix)}


@pytest.fixture()
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def new_projects() -> tuple[str, str]:
    n = next(_projects)
    return f"feast{n}x", f"ours{n}x"  # same length: keys differ only in the project


@pytest.mark.redis
@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "two-round-trips"])
@pytest.mark.parametrize("ttl", [None, 3600], ids=["no-ttl", "key-ttl"])
def test_writer_leaves_what_feasts_writer_leaves(redis_url: str, client: redis.Redis,
                                                 tmp_path: Path, atomic: bool,
                                                 ttl: int | None) -> None:
    @settings(max_examples=15, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(rows_strategy(), min_size=1, max_size=3))
    def check(batches: list[pd.DataFrame]) -> None:
        feast_project, our_project = new_projects()
        online = {"key_ttl_seconds": ttl} if ttl else {}
        feast_config = redis_config(feast_project, redis_url, tmp_path, **online)
        our_config = redis_config(our_project, redis_url, tmp_path, **online)
        layout = WriteLayout.from_view(VIEW, our_config)
        with RedisOnlineWriter.from_repo_config(our_config, atomic=atomic, batch_rows=7) as writer:
            for frame in batches:  # successive batches: newer-wins against what is stored
                table = arrow_rows(frame)
                feast_write(feast_config, table)
                # Feast's writer ignores created times: among equal event times the first wins
                result = writer.write(layout, table)
                assert result.rows == len(frame)
        assert dump(client, our_project) == dump(client, feast_project)

    check()


@pytest.mark.redis
def test_feast_reads_the_same_features(redis_url: str, tmp_path: Path) -> None:
    frame = pd.DataFrame({
        "user_id": ["u1", "u1", "u2", "u3"], "app_id": [1, 1, 2, 3],
        "share": [0.5, 0.25, float("nan"), 1.0], "score": [1.5, 2.5, None, -3.0],
        "opens": [3, 4, None, 2**40], "hour": [1, 2, 3, None],
        "last_app": ["mail", "maps", None, ""], "charging": [True, False, None, True],
        "top_apps": [["a", "b"], [], None, ["c"]], "counts": [[1], [2, 3], [], [-1]],
        "event_timestamp": [T0, T0 + timedelta(hours=1), T0, T0],
        "created": [T0] * 4})
    table = arrow_rows(frame)
    feast_project, our_project = new_projects()
    stores = {}
    for project in (feast_project, our_project):
        config = redis_config(project, redis_url, tmp_path)
        store = FeatureStore(config=config)
        store.apply([USER, APP, VIEW])
        stores[project] = store
    feast_write(stores[feast_project].config, table)
    with RedisOnlineWriter.from_repo_config(stores[our_project].config) as writer:
        assert writer.write(WriteLayout.from_view(VIEW), table).written == 3
    entity_rows = [{"user_id": u, "app_id": a} for u, a in [("u1", 1), ("u2", 2), ("u3", 3),
                                                              ("nobody", 9)]]
    answers = [stores[p].get_online_features(features=[f"usage:{f}" for f in FEATURES],
                                             entity_rows=entity_rows).to_dict()
               for p in (feast_project, our_project)]
    assert answers[0] == answers[1]
    assert answers[1]["last_app"][:3] == ["maps", None, ""]  # the newer u1 row won


@pytest.mark.redis
@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "two-round-trips"])
def test_newer_wins_and_created_time_breaks_ties(redis_url: str, client: redis.Redis,
                                                 atomic: bool) -> None:
    _, project = new_projects()
    writer = RedisOnlineWriter.from_url(redis_url, project, atomic=atomic, key_ttl_seconds=60)
    layout = WriteLayout.from_view(VIEW)

    def write(hours: list[int], minutes: list[int], labels: list[str]) -> int:
        frame = pd.DataFrame({
            "user_id": ["u"] * len(labels), "app_id": [1] * len(labels), "share": 1.0,
            "score": 1.0, "opens": 1, "hour": 1, "last_app": labels, "charging": True,
            "top_apps": [["x"]] * len(labels), "counts": [[1]] * len(labels),
            "event_timestamp": [T0 + timedelta(hours=h) for h in hours],
            "created": [T0 + timedelta(minutes=m) for m in minutes]})
        return writer.write(layout, arrow_rows(frame), created_column="created").written

    def stored() -> str:
        key = encode_keys(layout, [pa.array([1]), pa.array(["u"])], project)[0].as_py()
        raw = client.hget(key, layout.feature_fields[layout.features.index("last_app")])
        return ValueProto.FromString(raw).string_val

    with writer:
        # one batch: the latest event time wins, then the latest created time
        assert write([1, 2, 2, 0], [0, 1, 5, 9], ["a", "b", "c", "d"]) == 1
        assert stored() == "c"
        assert write([1], [9], ["older"]) == 0  # older than the stored row: not written
        assert write([2], [9], ["same"]) == 0  # same event time: Feast keeps the stored row
        assert write([3], [0], ["newer"]) == 1
        assert stored() == "newer"
    key = encode_keys(layout, [pa.array([1]), pa.array(["u"])], project)[0].as_py()
    assert 0 < client.ttl(key) <= 60


@pytest.mark.redis
def test_missing_columns_are_named(redis_url: str) -> None:
    with RedisOnlineWriter.from_url(redis_url, "p") as writer, pytest.raises(
            InputError, match="usage: the rows have no column 'share'"):
        writer.write(WriteLayout.from_view(VIEW), pa.table({"user_id": ["a"], "app_id": [1]}))


@pytest.mark.redis
def test_many_batches_over_parallel_connections(redis_url: str, client: redis.Redis) -> None:
    n = 5_000
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({
        "user_id": [f"u{i}" for i in range(n)], "app_id": rng.integers(0, 3, n),
        "share": rng.random(n), "score": rng.random(n).astype("float32"),
        "opens": rng.integers(0, 100, n), "hour": rng.integers(0, 24, n).astype("int32"),
        "last_app": "mail", "charging": rng.random(n) > 0.5, "top_apps": [["a"]] * n,
        "counts": [[1, 2]] * n, "event_timestamp": T0, "created": T0})
    _, project = new_projects()
    with RedisOnlineWriter.from_url(redis_url, project, connections=3, batch_rows=512,
                                    atomic=False) as writer:
        batches = arrow_rows(frame).to_batches(max_chunksize=700)
        assert writer.write(WriteLayout.from_view(VIEW), iter(batches)).written == n
    assert len(dump(client, project)) == n
