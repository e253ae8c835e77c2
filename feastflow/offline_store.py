"""A Feast offline store whose point-in-time joins are DuckDB ASOF joins over Parquet files.

Feast's DuckDB store (ibis) joins each feature table to the entity rows on keys and a time range,
ranks every match with a window and left-joins the winners back on a string row id: its work
grows with the number of feature rows each entity row can see. The latest row at or before a
time is what DuckDB's `ASOF JOIN` finds directly, so for each feature view this store:

1. dictionary-encodes the entity frame's join keys into one exact integer per row;
2. reads the view's Parquet file: the rows some entity row can see (event time within
   [first entity time - TTL, last entity time]), their keys turned into the same integers;
3. ASOF-joins (entity row, key code, time) to (feature row, key code, time), keeping per
   (keys, event time) the latest created row, and drops matches older than the TTL: DuckDB
   sorts and moves only integers, never strings or feature values;
4. takes each matched row's feature values by position, in entity-frame order.

Small joins run views side by side; large ones run one view at a time, split by key code, so
memory stays bounded. The entity columns never pass through DuckDB: the result is the entity
frame (as Arrow) with the feature columns beside it, and on-demand views are then applied by
Feast's RetrievalJob. Configure with `offline_store: type:
feastflow.offline_store.AsofDuckDBOfflineStore`. What this store does not read directly
(non-Parquet or remote sources, `filter_by_created_timestamp`, substrait on-demand views,
retrieval without an entity frame) it hands to Feast's DuckDB store. DuckDB matches column
names case-insensitively: a source column it would take for another (`X` beside `x`) is refused,
never misread, and so is an entity column named like an output feature.
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast
from urllib.parse import urlparse

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from feast.data_format import ParquetFormat
from feast.data_source import DataSource
from feast.errors import FeastEntityDFMissingColumnsError
from feast.feature_view import FeatureView
from feast.infra.offline_stores.duckdb import (
    DuckDBOfflineStore,
    DuckDBOfflineStoreConfig,
    _write_data_source,
)
from feast.infra.offline_stores.file_source import FileSource
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.infra.offline_stores.offline_utils import infer_event_timestamp_from_entity_df
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig
from feast.saved_dataset import SavedDatasetStorage
from pydantic import StrictStr

__all__ = ["AsofDuckDBOfflineStore", "AsofDuckDBOfflineStoreConfig", "AsofDuckDBRetrievalJob"]

ROW = "__row"  # an entity row's position in the entity frame
MATCH = "__match"  # a feature row's position in the rows read for a view
UTC_MICROS = pa.timestamp("us", tz="UTC")
PARTITION_ROWS = 2_500_000  # larger joins are split by key-code hash to bound DuckDB's memory
PARALLEL_ROWS = 6_000_000  # entity rows x views up to which views are joined side by side
PARALLEL_VIEWS = 2  # views joined at once then: one reads or copies values while another joins
TAKE_ROWS = 1 << 20  # feature values are copied out in slices of this many rows


class AsofDuckDBOfflineStoreConfig(DuckDBOfflineStoreConfig):
    """Options of AsofDuckDBOfflineStore (those of Feast's DuckDB store)."""

    type: StrictStr = "feastflow.offline_store.AsofDuckDBOfflineStore"


@dataclass(frozen=True)
class _ViewJoin:
    """One feature view's part of the join, with every name resolved."""

    name: str  # the view's name as requested, for errors
    path: str  # the source's Parquet file (or glob)
    parquet: str  # read_parquet(...) of the source
    keys: list[tuple[str, str]]  # (source column, entity-frame column)
    timestamp: str  # source column of the event time
    created: str | None  # source column of the created time, the tie breaker
    features: list[tuple[str, str]]  # (source column, output column)
    ttl: timedelta | None  # None: no look-back limit


class AsofDuckDBRetrievalJob(RetrievalJob):
    """A retrieval computed by DuckDB when asked for, on a fresh in-memory connection."""

    def __init__(
        self,
        run: Callable[[], pa.Table],
        sql: str,
        on_demand_feature_views: list[OnDemandFeatureView] | None = None,
        full_feature_names: bool = False,
        metadata: RetrievalMetadata | None = None,
        repo_path: str | None = None,
    ) -> None:
        super().__init__()
        self._run = run
        self._sql = sql
        self._on_demand_feature_views = on_demand_feature_views or []
        self._full_feature_names = full_feature_names
        self._metadata = metadata
        self._repo_path = repo_path

    @property
    def full_feature_names(self) -> bool:
        """Whether feature columns are named `view__feature`."""
        return self._full_feature_names

    @property
    def on_demand_feature_views(self) -> list[OnDemandFeatureView]:
        """On-demand views, applied by Feast's RetrievalJob.to_arrow after the join."""
        return self._on_demand_feature_views

    @property
    def metadata(self) -> RetrievalMetadata | None:
        """Requested features, keys and the entity time span."""
        return self._metadata

    def to_sql(self) -> str:
        """The DuckDB queries of this job (for a join: each view's rows and ASOF join)."""
        return self._sql

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        return self._run()

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self._run().to_pandas()

    def persist(
        self, storage: SavedDatasetStorage, allow_overwrite: bool = False, timeout: int | None = None
    ) -> None:
        """Write the result, on-demand features included, where the saved dataset says."""
        import ibis  # Feast's writer takes an ibis table

        _write_data_source(
            ibis.memtable(self.to_arrow(timeout=timeout)),
            storage.to_data_source(),
            str(self._repo_path),
            "overwrite",
            allow_overwrite,
        )


class AsofDuckDBOfflineStore(DuckDBOfflineStore):
    """Feast's DuckDB offline store with point-in-time joins and pulls written as DuckDB SQL."""

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str | None,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
    ) -> RetrievalJob:
        """Feature values as of each entity row's time, one ASOF join per feature view."""
        odfvs = OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry)
        if (
            entity_df is None
            or filter_by_created_timestamp
            or any(odfv.mode == "substrait" for odfv in odfvs)
            or not all(_reads_directly(fv.batch_source) for fv in feature_views)
        ):
            return DuckDBOfflineStore.get_historical_features(
                config, feature_views, feature_refs, entity_df, registry, project,
                full_feature_names, filter_by_created_timestamp,
            )
        entity, timestamp_col = _entity_table(entity_df)
        views = [_view_join(config, fv, feature_refs, full_feature_names) for fv in feature_views]
        _check_columns(entity, timestamp_col, views)
        for view in views:
            _check_source_columns(f"feature view '{view.name}'", view.path, _source_columns(view))
        first, last = _time_span(entity[timestamp_col])
        return AsofDuckDBRetrievalJob(
            functools.partial(_point_in_time_join, entity, timestamp_col, views, first, last),
            ";\n".join(f"{_rows_sql(v, first, last)};\n{_asof_sql(len(v.keys), bool(v.created), v.ttl)}"
                      for v in views),
            on_demand_feature_views=odfvs,
            full_feature_names=full_feature_names,
            metadata=RetrievalMetadata(
                features=feature_refs,
                keys=list(set(entity.column_names) - {timestamp_col}),
                min_event_timestamp=first,
                max_event_timestamp=last,
            ),
            repo_path=str(config.repo_path),
        )

    @staticmethod
    def pull_latest_from_table_or_query(
        config: RepoConfig,
        data_source: DataSource,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None,
        start_date: datetime,
        end_date: datetime,
    ) -> RetrievalJob:
        """The latest row per entity key within [start_date, end_date] (for materialization)."""
        if not _reads_directly(data_source):
            return DuckDBOfflineStore.pull_latest_from_table_or_query(
                config, data_source, join_key_columns, feature_name_columns, timestamp_field,
                created_timestamp_column, start_date, end_date,
            )
        order = [timestamp_field, *([created_timestamp_column] if created_timestamp_column else [])]
        query = latest_rows_sql(config, data_source, join_key_columns, feature_name_columns, order,
                                (start_date, end_date))
        return AsofDuckDBRetrievalJob(functools.partial(_run_sql, query), query,
                                      repo_path=str(config.repo_path))

    @staticmethod
    def pull_all_from_table_or_query(
        config: RepoConfig,
        data_source: DataSource,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None = None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
    ) -> RetrievalJob:
        """Every row within the optional [start_date, end_date] (for materialization)."""
        if not _reads_directly(data_source):
            return DuckDBOfflineStore.pull_all_from_table_or_query(
                config, data_source, join_key_columns, feature_name_columns, timestamp_field,
                created_timestamp_column, start_date, end_date,
            )
        timestamps = [timestamp_field, *([created_timestamp_column] if created_timestamp_column else [])]
        query = _pull_sql(config, data_source, [*join_key_columns, *feature_name_columns, *timestamps],
                          timestamp_field, start_date, end_date)
        return AsofDuckDBRetrievalJob(functools.partial(_run_sql, query), query,
                                      repo_path=str(config.repo_path))


def latest_rows_sql(config: RepoConfig, data_source: DataSource, keys: list[str],
                    features: list[str], order: list[str], window: tuple[datetime, datetime]
                    ) -> str:
    """DuckDB SQL of the latest row per entity key with its event time (order[0]) in the
    window, of a local Parquet source: ranked by `order` (event time, then created time, nulls
    last), as Feast ranks them."""
    rows = _pull_sql(config, data_source, [*keys, *features, *order], order[0], *window)
    partition = f"PARTITION BY {_names(keys)} " if keys else ""
    latest = ", ".join(f"{_q(c)} DESC NULLS LAST" for c in order)
    return f"{rows}\nQUALIFY row_number() OVER ({partition}ORDER BY {latest}) = 1"


# --- reading sources --------------------------------------------------------------------------


def _reads_directly(source: DataSource | None) -> bool:
    # Local Parquet files only, read as Feast's store reads them; anything else goes to that store.
    if type(source) is not FileSource or urlparse(source.path).scheme:
        return False
    fmt = source.file_format
    return isinstance(fmt, ParquetFormat) or (fmt is None and source.path.endswith(".parquet"))


def _parquet_path(config: RepoConfig, source: DataSource) -> str:
    # A relative path is relative to the feature repo, as feature_store.yaml paths are.
    uri = cast(FileSource, source).path
    return str(FileSource.get_uri_for_file_path(repo_path=config.repo_path, uri=uri))


def _read_parquet_sql(path: str) -> str:
    return "read_parquet('" + path.replace("'", "''") + "')"


def _check_source_columns(owner: str, path: str, columns: list[str]) -> None:
    """Refuse a column that DuckDB would read from another column, or not at all.

    DuckDB matches column names case-insensitively: of a file's columns `x` and `X` it renames
    the second `X_1`, so `"X"` reads `x` (and `"X_1"` reads `X`). Each column is read only if
    DuckDB's name for it is the file's name at the same position.
    """
    with _connection() as con:
        read = con.sql(f"SELECT * FROM {_read_parquet_sql(path)} LIMIT 0").columns
        first = con.execute("SELECT file FROM glob(?) ORDER BY file LIMIT 1", [path]).fetchone()
    written = pq.read_schema(first[0]).names if first else read
    renamed = {name for pair in zip(read, written, strict=False) if pair[0] != pair[1] for name in pair}
    lowered = [name.lower() for name in written]
    clashing = [name for name in written if lowered.count(name.lower()) > 1]
    for column in dict.fromkeys(columns):
        if column in read and column not in renamed:
            continue
        if column in renamed or column.lower() in {name.lower() for name in clashing}:
            related = [name for name in clashing if name.lower() == column.lower()] or clashing
            raise ValueError(
                f"{owner}: column {column!r} cannot be read from {path}: its columns {related} "
                "differ only in case, and DuckDB matches column names case-insensitively (it "
                f"reads the file's columns as {read}). Rename them so that their names differ "
                "by more than case."
            )
        twins = [name for name in written if name.lower() == column.lower()]
        hint = f" (column names are case-sensitive: it has {twins[0]!r})" if twins else ""
        raise ValueError(f"{owner}: its source {path} has no column {column!r}{hint}")


def _pull_sql(
    config: RepoConfig,
    source: DataSource,
    columns: list[str],
    timestamp_field: str,
    start: datetime | None,
    end: datetime | None,
) -> str:
    # Feast compares the event time as a naive UTC timestamp with bounds converted the same way.
    ts = f"CAST({_q(timestamp_field)} AS TIMESTAMP)"
    bounds = [f"{ts} >= {_naive_utc_sql(start)}"] if start else []
    bounds += [f"{ts} <= {_naive_utc_sql(end)}"] if end else []
    where = f"\nWHERE {' AND '.join(bounds)}" if bounds else ""
    path = _parquet_path(config, source)
    _check_source_columns(f"source {source.name!r}", path, columns)
    return f"SELECT {_names(columns)}\nFROM {_read_parquet_sql(path)}{where}"


def _naive_utc_sql(moment: datetime) -> str:
    # As Feast does it: a naive bound is local time (astimezone), then both sides are naive UTC.
    return f"TIMESTAMP '{moment.astimezone(tz=UTC).replace(tzinfo=None).isoformat(sep=' ')}'"


def _run_sql(query: str) -> pa.Table:
    with _connection() as con:
        return con.sql(query).to_arrow_table()


# --- the entity frame -------------------------------------------------------------------------


def _entity_table(entity_df: pd.DataFrame | str) -> tuple[pa.Table, str]:
    """The entity rows as Arrow, typed as Feast's store returns them, and the event time column."""
    if isinstance(entity_df, str):
        table = _run_sql(entity_df)
        dtypes = dict(zip(table.column_names, table.schema.empty_table().to_pandas().dtypes, strict=True))
    else:
        table = pa.Table.from_pandas(entity_df, preserve_index=False)  # the caller's frame is untouched
        dtypes = dict(zip(entity_df.columns, entity_df.dtypes, strict=True))
    timestamp_col = infer_event_timestamp_from_entity_df(dtypes)
    if not pa.types.is_timestamp(table.schema.field(timestamp_col).type):  # strings: parsed as Feast does
        parsed = pd.to_datetime(table[timestamp_col].to_pandas(), utc=True)
        table = table.set_column(table.column_names.index(timestamp_col), timestamp_col, pa.array(parsed))
    return _as_feast_types(table), timestamp_col


def _as_feast_types(table: pa.Table) -> pa.Table:
    # Feast's store passes the frame through ibis and DuckDB: times come back in microseconds
    # (DuckDB 2 cannot even compare nanosecond zoned times) and categoricals as plain values.
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type) and field.type.unit != "us":
            table = table.set_column(i, field.name, _to_micros(table[i], field.type.tz))
        elif pa.types.is_dictionary(field.type):
            table = table.set_column(i, field.name, table[i].cast(field.type.value_type))
    return table


def _to_micros(column: pa.ChunkedArray, tz: str | None) -> pa.ChunkedArray:
    try:
        return column.cast(pa.timestamp("us", tz=tz))
    except pa.ArrowInvalid as e:
        raise ValueError(
            "the entity frame has timestamps with sub-microsecond parts, which Feast's DuckDB "
            "store refuses too; round them first, e.g. `df[col] = df[col].dt.floor('us')`"
        ) from e


def _check_columns(entity: pa.Table, timestamp_col: str, views: list[_ViewJoin]) -> None:
    """Every key and the event time in the entity frame, and no output column named twice."""
    expected = {timestamp_col, *(col for view in views for _, col in view.keys)}
    missing = expected - set(entity.column_names)
    if missing:
        raise FeastEntityDFMissingColumnsError(sorted(expected), sorted(missing))
    columns = [*((c, f"the entity frame's column {c!r}") for c in entity.column_names),
               *((out, f"feature {out!r} of feature view {view.name!r}")
                 for view in views for _, out in view.features)]
    counts = Counter(name for name, _ in columns)
    for name in (name for name, count in counts.items() if count > 1):
        clash = " and ".join(owner for n, owner in columns if n == name)
        # Feast's store refuses this too ("Duplicate column name"), as would a DataFrame's user.
        raise ValueError(f"the training set would have two columns named {name!r}: {clash}; "
                         "rename the entity frame's column, or ask with full_feature_names=True")


def _source_columns(view: _ViewJoin) -> list[str]:
    """The source columns a view reads: keys, times and features."""
    times = [view.timestamp, *([view.created] if view.created else [])]
    return [*(src for src, _ in view.keys), *times, *(src for src, _ in view.features)]


def _time_span(column: pa.ChunkedArray) -> tuple[datetime | None, datetime | None]:
    # A naive event time is UTC, as in Feast.
    span = pc.min_max(column.cast(UTC_MICROS))
    return span["min"].as_py(), span["max"].as_py()


# --- the point-in-time join -------------------------------------------------------------------


def _view_join(
    config: RepoConfig, fv: FeatureView, feature_refs: list[str], full_feature_names: bool
) -> _ViewJoin:
    """Resolve a view's field mapping, join key map, requested features and output names."""
    source = cast(FileSource, fv.batch_source)  # checked by _reads_directly
    to_source = {feature_name: source_name for source_name, feature_name in source.field_mapping.items()}
    prefix = f"{fv.projection.name_to_use()}:"
    requested = [ref.split(":", 1)[1] for ref in feature_refs if ref.startswith(prefix)]
    alias = fv.projection.name_alias or fv.name  # Feast names columns without the version
    key_map = fv.projection.join_key_map or {c.name: c.name for c in fv.entity_columns}
    created = source.created_timestamp_column
    path = _parquet_path(config, source)
    return _ViewJoin(
        name=fv.projection.name_to_use(),
        path=path,
        parquet=_read_parquet_sql(path),
        keys=[(to_source.get(key, key), entity_col) for key, entity_col in key_map.items()],
        timestamp=to_source.get(source.timestamp_field, source.timestamp_field),
        created=to_source.get(created, created) if created else None,
        features=[
            (to_source.get(name, name), f"{alias}__{name}" if full_feature_names else name)
            for name in requested
        ],
        ttl=fv.ttl or None,
    )


def _point_in_time_join(
    entity: pa.Table,
    timestamp_col: str,
    views: list[_ViewJoin],
    first: datetime | None,
    last: datetime | None,
) -> pa.Table:
    """The entity table with every view's features beside it, in entity-frame order."""
    probe = {ROW: pa.array(np.arange(entity.num_rows, dtype=np.int64)),
             "__ts": entity[timestamp_col].cast(UTC_MICROS)}  # a naive time is UTC, as in Feast
    key_columns = {col for view in views for _, col in view.keys}
    encoded = {col: _dictionary_encode(entity[col]) for col in key_columns  # -> (indices, values)
               if _kind(entity.schema.field(col).type) != "other"}
    # Small joins run views side by side; large ones one by one, to bound the memory.
    workers = PARALLEL_VIEWS if entity.num_rows * len(views) <= PARALLEL_ROWS else 1
    with ThreadPoolExecutor(workers) as pool:
        features = list(pool.map(lambda v: _view_features(v, entity, probe, encoded, first, last), views))
    names = [*entity.column_names, *(out for view in views for _, out in view.features)]
    return pa.Table.from_arrays([*entity.columns, *(c for cols in features for c in cols)], names=names)


def _view_features(
    view: _ViewJoin,
    entity: pa.Table,
    probe: dict[str, pa.Array],
    encoded: dict[str, tuple[np.ndarray, pa.Array]],
    first: datetime | None,
    last: datetime | None,
) -> list[pa.ChunkedArray]:
    """One view's feature columns for the entity rows; DuckDB's memory is freed on return."""
    with _connection() as con:
        coded = _entity_code(con, view, entity, encoded)
        rows = _read_rows(con, _rows_sql(view, first, last, coded[1] if coded else None))
        if coded:
            keys = ([coded[0]], [rows["__k0"]])
        else:
            keys = ([entity[col] for _, col in view.keys], [rows[f"__k{k}"] for k in range(len(view.keys))])
        matches = _matches(con, view, probe, keys, rows, coded is not None)
    features = rows.select([f"__v{i}" for i in range(len(view.features))])  # in view.features' order
    del rows, keys  # keys and times: freed before the feature values are copied out
    columns = []
    for out in list(features.column_names):
        column = features[out]
        # Arrow concatenates a chunked array at every take: take from one contiguous array.
        values = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
        features, column = features.drop_columns([out]), None
        columns.append(_take(values, matches))
    return columns


def _read_rows(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    # One thread reads the rows into a single Arrow chunk per column, so nothing is concatenated.
    con.execute("SET threads = 1")
    try:
        return con.sql(sql).to_arrow_table(batch_size=1 << 40)
    finally:
        con.execute("RESET threads")


def _take(values: pa.Array, positions: pa.Array) -> pa.ChunkedArray:
    # In slices: taking lists allocates an index per list element of the whole result. The
    # positions come from the rows' own numbering, so bounds checks (slow for lists) are skipped.
    slices = range(0, len(positions), TAKE_ROWS)
    return pa.chunked_array([pc.take(values, positions.slice(i, TAKE_ROWS), boundscheck=False)
                             for i in slices], type=values.type)


def _matches(
    con: duckdb.DuckDBPyConnection,
    view: _ViewJoin,
    probe: dict[str, pa.Array],
    keys: tuple[list[pa.Array], list[pa.Array]],
    rows: pa.Table,
    coded: bool,
) -> pa.Array:
    """For each entity row, the position in `rows` of its feature row (null: none in the TTL)."""
    entity_keys, feature_keys = keys
    con.register("__e", pa.table({**probe, **{f"__k{k}": key for k, key in enumerate(entity_keys)}}))
    con.register("__f", pa.table({
        **{f"__k{k}": key for k, key in enumerate(feature_keys)},
        **{c: rows[c] for c in ("__ts", "__created") if c in rows.column_names},
        MATCH: pa.array(np.arange(rows.num_rows, dtype=np.int64)),
    }))
    positions = np.full(len(probe[ROW]), -1, dtype=np.int64)
    # Large joins go by partitions of the key code: DuckDB's memory grows with one partition's
    # rows. (Not plain keys: equal values of different types, 1 and 1.0, can hash apart.)
    parts = -(-max(len(positions), rows.num_rows) // PARTITION_ROWS) if coded else 1
    for part in range(parts):
        sql = _asof_sql(len(entity_keys), view.created is not None, view.ttl, part, parts)
        pairs = con.sql(sql).to_arrow_table()
        positions[pairs[ROW].to_numpy()] = pairs[MATCH].to_numpy()
    return pa.array(positions, mask=positions < 0)


def _entity_code(
    con: duckdb.DuckDBPyConnection, view: _ViewJoin, entity: pa.Table,
    encoded: dict[str, tuple[np.ndarray, pa.Array]],
) -> tuple[pa.Array, list[int]] | None:
    """The entity rows' keys as one exact integer (null: a null key), and each key's cardinality.

    DuckDB sorts integers much faster than strings. Each entity key column is dictionary-encoded
    once and its dictionary registered as `__d{k}` (value, code), through which the feature rows
    get the same codes. None when a key is not an integer or a string, or codes could overflow.
    """
    if not view.keys or not _codable(con, view, entity):
        return None
    code, cards = np.zeros(entity.num_rows, np.int64), []
    for k, (_, entity_col) in enumerate(view.keys):
        indices, values = encoded[entity_col]
        cards.append(max(len(values), 1))
        if np.prod(cards, dtype=float) >= 2.0**62:
            return None
        code = np.where((code < 0) | (indices < 0), -1, code * cards[-1] + indices)
        con.register(f"__d{k}", pa.table({"value": values, "code": np.arange(len(values), dtype=np.int64)}))
    return pa.array(code, mask=code < 0), cards


def _dictionary_encode(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    encoded = pc.dictionary_encode(column.combine_chunks())
    return pc.fill_null(encoded.indices, -1).to_numpy(), encoded.dictionary


def _codable(con: duckdb.DuckDBPyConnection, view: _ViewJoin, entity: pa.Table) -> bool:
    # Integers and strings are equal exactly when DuckDB's `=` says so (not floats: 0.0, -0.0).
    names = ", ".join(_q(src) for src, _ in view.keys)
    source = con.sql(f"SELECT {names} FROM {view.parquet} LIMIT 0").to_arrow_table().schema
    return all(_kind(entity.schema.field(col).type) == _kind(source.field(k).type) != "other"
               for k, (_, col) in enumerate(view.keys))


def _kind(dtype: pa.DataType) -> str:
    if pa.types.is_integer(dtype):
        return "integer"
    return "string" if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) else "other"


def _rows_sql(view: _ViewJoin, first: datetime | None, last: datetime | None,
              cards: list[int] | None = None) -> str:
    """The rows of a view that some entity row can see: keys (or their code), times, features.

    Every output column has an internal name (`__k0`, `__ts`, `__v0`, ...), so no feature or
    source column can collide with another (DuckDB compares names case-insensitively).
    """
    ts = f"CAST(s.{_q(view.timestamp)} AS TIMESTAMPTZ)"
    joins = ""
    if cards:  # feature keys without an entity row drop out here
        code = "d0.code"
        for k in range(1, len(cards)):
            code = f"({code} * {cards[k]} + d{k}.code)"
        select = [f"{code} AS __k0"]
        joins = "".join(f"\nJOIN __d{k} AS d{k} ON s.{_q(src)} = d{k}.value"
                        for k, (src, _) in enumerate(view.keys))
    else:
        select = [f"s.{_q(src)} AS __k{k}" for k, (src, _) in enumerate(view.keys)]
    select.append(f"{ts} AS __ts")
    if view.created:
        select.append(f"CAST(s.{_q(view.created)} AS TIMESTAMPTZ) AS __created")
    # The view's own event and created times are UTC times to Feast, as features too.
    times = {view.timestamp, view.created}
    select += [f"CAST(s.{_q(src)} AS TIMESTAMPTZ) AS __v{i}" if src in times else f"s.{_q(src)} AS __v{i}"
               for i, (src, _) in enumerate(view.features)]
    where = [f"s.{_q(src)} IS NOT NULL" for src, _ in view.keys]  # a null key matches nothing
    where.append(f"{ts} <= {_timestamptz_sql(last)}" if last else f"{ts} IS NOT NULL")
    oldest = _minus(first, view.ttl)
    if oldest:
        where.append(f"{ts} >= {_timestamptz_sql(oldest)}")
    return f"SELECT {', '.join(select)}\nFROM {view.parquet} AS s{joins}\nWHERE {' AND '.join(where)}"


def _asof_sql(n_keys: int, created: bool, ttl: timedelta | None, part: int = 0, parts: int = 1) -> str:
    """(entity row, feature row) pairs: the latest row at or before the entity time, within TTL."""
    keys = [f"__k{k}" for k in range(n_keys)]
    where = [f"{k} IS NOT NULL" for k in keys]  # a null key matches nothing
    if parts > 1:
        where.append(f"hash({', '.join(keys)}) % {parts} = {part}")
    where_sql = " AND ".join(where) or "true"
    rows = f"SELECT {', '.join([*keys, '__ts', MATCH])} FROM __f WHERE {where_sql}"
    if created:  # one row per (keys, event time): the latest created, as Feast ranks them
        rows += (f"\n  QUALIFY row_number() OVER (PARTITION BY {', '.join([*keys, '__ts'])} "
                 "ORDER BY __created DESC NULLS LAST) = 1")
    on = [f"e.{k} = f.{k}" for k in keys] + ["e.__ts >= f.__ts"]
    sql = (f"SELECT e.{ROW}, f.{MATCH}\n"
           f"FROM (SELECT {', '.join([*keys, ROW, '__ts'])} FROM __e WHERE {where_sql}) AS e\n"
           f"ASOF JOIN ({rows}) AS f\nON {' AND '.join(on)}")
    if ttl:  # the match is the latest row: if it is too old, so are all the others
        sql += f"\nWHERE f.__ts >= e.__ts - to_microseconds({ttl // timedelta(microseconds=1)})"
    return sql


def _minus(moment: datetime | None, ttl: timedelta | None) -> datetime | None:
    # The oldest event time any entity row can see; None when unbounded (or before year 1).
    if moment is None or ttl is None:
        return None
    try:
        return moment - ttl
    except OverflowError:
        return None


# --- helpers ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _connection() -> Iterator[duckdb.DuckDBPyConnection]:
    """A private in-memory DuckDB whose session time zone is UTC (naive times are UTC)."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        yield con
    finally:
        con.close()


def _timestamptz_sql(moment: datetime) -> str:
    utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return f"TIMESTAMPTZ '{utc.isoformat(sep=' ')}'"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _names(columns: list[str]) -> str:
    return ", ".join(_q(c) for c in columns)
