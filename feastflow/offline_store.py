"""A Feast offline store whose point-in-time joins are DuckDB ASOF joins over Parquet files.

Feast's DuckDB store (ibis) joins each feature table to the entity rows on keys and a time range,
ranks the matches with a window and left-joins them back on a string row id. A point-in-time join
is exactly what DuckDB's `ASOF LEFT JOIN` computes, so this store writes one SQL query: each
feature view is read from its Parquet file, trimmed to the entity frame's time span and
deduplicated on (keys, event time) by created time; the entity rows are ASOF-joined to every view
in turn (latest row at or before the entity time); a value older than the view's TTL is nulled;
rows come back in entity-frame order.

Configure it in feature_store.yaml with `offline_store: type: feastflow.offline_store.AsofDuckDBOfflineStore`.
Anything it does not read directly (non-Parquet or remote sources, `filter_by_created_timestamp`,
substrait on-demand views, retrieval without an entity frame) is handed to the stock store.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlparse

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from feast.data_format import ParquetFormat
from feast.data_source import DataSource
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

ROW_ID = "__feastflow_row"  # the entity row's position: rows are returned in the caller's order
ENTITY_TABLE = "__feastflow_entity"
UTC_MICROS = pa.timestamp("us", tz="UTC")


class AsofDuckDBOfflineStoreConfig(DuckDBOfflineStoreConfig):
    """Options of AsofDuckDBOfflineStore (those of Feast's DuckDB store)."""

    type: StrictStr = "feastflow.offline_store.AsofDuckDBOfflineStore"


@dataclass(frozen=True)
class _ViewJoin:
    """One feature view's part of the join, with every name already resolved."""

    parquet: str  # absolute path (or glob) of the Parquet source
    keys: list[tuple[str, str]]  # (source column, entity-frame column)
    timestamp: str  # source column of the event time
    created: str | None  # source column of the created time, the tie breaker
    features: list[tuple[str, str]]  # (source column, output column)
    ttl: timedelta | None  # None: no look-back limit


class AsofDuckDBRetrievalJob(RetrievalJob):
    """A DuckDB query over Parquet files and Arrow tables, run on a fresh connection when asked."""

    def __init__(
        self,
        query: str,
        tables: Mapping[str, pa.Table] | None = None,
        on_demand_feature_views: list[OnDemandFeatureView] | None = None,
        full_feature_names: bool = False,
        metadata: RetrievalMetadata | None = None,
        repo_path: str | None = None,
    ) -> None:
        super().__init__()
        self._query = query
        self._tables = dict(tables or {})
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
        """On-demand views that Feast's RetrievalJob.to_arrow applies after the query."""
        return self._on_demand_feature_views

    @property
    def metadata(self) -> RetrievalMetadata | None:
        """Requested features, keys and the entity time span."""
        return self._metadata

    def to_sql(self) -> str:
        """The DuckDB query (its tables are the Parquet files and the registered entity frame)."""
        return self._query

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        with _connection() as con:
            for name, table in self._tables.items():
                con.register(name, table)
            return con.sql(self._query).to_arrow_table()

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self._to_arrow_internal(timeout).to_pandas()

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
        """Feature values as of each entity row's time: an ASOF LEFT JOIN per feature view."""
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
        first, last = _time_span(entity[timestamp_col])
        views = [_view_join(config, fv, feature_refs, full_feature_names) for fv in feature_views]
        return AsofDuckDBRetrievalJob(
            _point_in_time_sql(views, list(entity.column_names), timestamp_col, first, last),
            {ENTITY_TABLE: entity.append_column(ROW_ID, pa.array(range(entity.num_rows), pa.int64()))},
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
        partition = f"PARTITION BY {_names(join_key_columns)} " if join_key_columns else ""
        query = (
            _pull_sql(config, data_source, join_key_columns, feature_name_columns, order, start_date, end_date)
            + f"\nQUALIFY row_number() OVER ({partition}ORDER BY "
            + ", ".join(f"{_q(c)} DESC NULLS LAST" for c in order)
            + ") = 1"
        )
        return AsofDuckDBRetrievalJob(query, repo_path=str(config.repo_path))

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
        query = _pull_sql(
            config, data_source, join_key_columns, feature_name_columns, timestamps, start_date, end_date
        )
        return AsofDuckDBRetrievalJob(query, repo_path=str(config.repo_path))


# --- reading sources --------------------------------------------------------------------------


def _reads_directly(source: DataSource | None) -> bool:
    # Local Parquet files only, read exactly as Feast's store reads them; anything else goes to it.
    if type(source) is not FileSource or urlparse(source.path).scheme:
        return False
    fmt = source.file_format
    return isinstance(fmt, ParquetFormat) or (fmt is None and source.path.endswith(".parquet"))


def _parquet_sql(config: RepoConfig, source: FileSource) -> str:
    path = FileSource.get_uri_for_file_path(repo_path=config.repo_path, uri=source.path)
    return _parquet_path_sql(path)


def _parquet_path_sql(path: str) -> str:
    return "read_parquet('" + path.replace("'", "''") + "')"


def _pull_sql(
    config: RepoConfig,
    source: DataSource,
    join_keys: list[str],
    features: list[str],
    timestamps: list[str],
    start: datetime | None,
    end: datetime | None,
) -> str:
    # Feast compares the event time as a naive UTC timestamp with bounds converted the same way.
    ts = f"CAST({_q(timestamps[0])} AS TIMESTAMP)"
    bounds = [f"{ts} >= {_naive_utc_sql(start)}"] if start else []
    bounds += [f"{ts} <= {_naive_utc_sql(end)}"] if end else []
    where = f"\nWHERE {' AND '.join(bounds)}" if bounds else ""
    assert isinstance(source, FileSource)
    return f"SELECT {_names([*join_keys, *features, *timestamps])}\nFROM {_parquet_sql(config, source)}{where}"


def _naive_utc_sql(moment: datetime) -> str:
    # As Feast does: naive bounds are local time (astimezone), then both sides are naive UTC.
    return f"TIMESTAMP '{moment.astimezone(tz=timezone.utc).replace(tzinfo=None).isoformat(sep=' ')}'"


# --- the entity frame -------------------------------------------------------------------------


def _entity_table(entity_df: pd.DataFrame | str) -> tuple[pa.Table, str]:
    """The entity rows as Arrow with a microsecond UTC event time, and that column's name."""
    if isinstance(entity_df, str):
        with _connection() as con:
            table = con.sql(entity_df).to_arrow_table()
        dtypes = dict(zip(table.column_names, table.schema.empty_table().to_pandas().dtypes, strict=True))
    else:
        table = pa.Table.from_pandas(entity_df, preserve_index=False)  # a copy: the caller's frame is untouched
        dtypes = dict(zip(entity_df.columns, entity_df.dtypes, strict=True))
    timestamp_col = infer_event_timestamp_from_entity_df(dtypes)
    index = table.column_names.index(timestamp_col)
    return table.set_column(index, timestamp_col, _utc_micros(table[timestamp_col])), timestamp_col


def _utc_micros(column: pa.ChunkedArray) -> pa.ChunkedArray:
    # DuckDB cannot compare nanosecond time zone aware times, and Feast returns timestamp[us, UTC].
    if not pa.types.is_timestamp(column.type):  # strings: parsed as Feast parses them
        column = pa.chunked_array([pa.array(pd.to_datetime(column.to_pandas(), utc=True))])
    try:
        return column.cast(UTC_MICROS)  # a naive time is taken as UTC, as Feast takes it
    except pa.ArrowInvalid as e:
        raise ValueError(
            "the entity frame's event timestamps have sub-microsecond parts, which Feast's "
            "DuckDB store refuses too; round them, e.g. `ts.dt.floor('us')`"
        ) from e


def _time_span(column: pa.ChunkedArray) -> tuple[datetime | None, datetime | None]:
    span = pc.min_max(column)
    return span["min"].as_py(), span["max"].as_py()


# --- the point-in-time query ------------------------------------------------------------------


def _view_join(
    config: RepoConfig, fv: FeatureView, feature_refs: list[str], full_feature_names: bool
) -> _ViewJoin:
    """Resolve a view's field mapping, join key map, requested features and output names."""
    source = fv.batch_source
    assert isinstance(source, FileSource)  # checked by _reads_directly
    to_source = {feature_name: source_name for source_name, feature_name in source.field_mapping.items()}
    prefix = f"{fv.projection.name_to_use()}:"
    requested = [ref.split(":", 1)[1] for ref in feature_refs if ref.startswith(prefix)]
    alias = fv.projection.name_alias or fv.name  # Feast names columns without the version
    key_map = fv.projection.join_key_map or {c.name: c.name for c in fv.entity_columns}
    return _ViewJoin(
        parquet=_parquet_sql(config, source),
        keys=[(to_source.get(key, key), entity_col) for key, entity_col in key_map.items()],
        timestamp=to_source.get(source.timestamp_field, source.timestamp_field),
        created=to_source.get(source.created_timestamp_column, source.created_timestamp_column) or None,
        features=[
            (to_source.get(name, name), f"{alias}__{name}" if full_feature_names else name)
            for name in requested
        ],
        ttl=fv.ttl or None,
    )


def _point_in_time_sql(
    views: list[_ViewJoin],
    entity_columns: list[str],
    timestamp_col: str,
    first: datetime | None,
    last: datetime | None,
) -> str:
    """The entity rows ASOF LEFT JOINed to each view, in entity-frame order."""
    ctes = [f"v{i} AS (\n{_view_sql(view, i, first, last)}\n)" for i, view in enumerate(views)]
    columns = [f"e.{_q(c)}" for c in entity_columns]
    joins = []
    for i, view in enumerate(views):
        columns += [_feature_sql(view, i, out, timestamp_col) for _, out in view.features]
        on = [f"e.{_q(entity_col)} = v{i}.__k{k}" for k, (_, entity_col) in enumerate(view.keys)]
        on.append(f"e.{_q(timestamp_col)} >= v{i}.__ts")
        joins.append(f"ASOF LEFT JOIN v{i} ON {' AND '.join(on)}")
    with_clause = f"WITH {', '.join(ctes)}\n" if ctes else ""
    return (
        f"{with_clause}SELECT {', '.join(columns)}\nFROM {ENTITY_TABLE} AS e\n"
        + "".join(f"{join}\n" for join in joins)
        + f"ORDER BY e.{ROW_ID}"
    )


def _view_sql(view: _ViewJoin, i: int, first: datetime | None, last: datetime | None) -> str:
    # Only rows that some entity row can see; one row per (keys, event time): the latest created.
    ts = f"CAST({_q(view.timestamp)} AS TIMESTAMPTZ)"
    keys = [_q(source_col) for source_col, _ in view.keys]
    select = [f"{k} AS __k{n}" for n, k in enumerate(keys)] + [f"{ts} AS __ts"]
    select += [f"{_q(src)} AS {_q(out)}" for src, out in view.features]
    where = [f"{ts} <= {_timestamptz_sql(last)}"] if last else [f"{ts} IS NOT NULL"]
    if first and view.ttl:
        where.append(f"{ts} >= {_timestamptz_sql(first - view.ttl)}")
    sql = f"SELECT {', '.join(select)}\nFROM {view.parquet}\nWHERE {' AND '.join(where)}"
    if view.created:
        created = f"CAST({_q(view.created)} AS TIMESTAMPTZ)"
        sql += f"\nQUALIFY row_number() OVER (PARTITION BY {', '.join([*keys, ts])} ORDER BY {created} DESC NULLS LAST) = 1"
    return sql


def _feature_sql(view: _ViewJoin, i: int, name: str, timestamp_col: str) -> str:
    # The ASOF match is the latest row; if it is older than the TTL, every other row is too.
    value = f"v{i}.{_q(name)}"
    if view.ttl:
        micros = view.ttl // timedelta(microseconds=1)
        value = f"CASE WHEN v{i}.__ts >= e.{_q(timestamp_col)} - to_microseconds({micros}) THEN {value} END"
    return f"{value} AS {_q(name)}"


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
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return f"TIMESTAMPTZ '{moment.astimezone(timezone.utc).isoformat(sep=' ')}'"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _names(columns: list[str]) -> str:
    return ", ".join(_q(c) for c in columns)


__all__: list[Any] = ["AsofDuckDBOfflineStore", "AsofDuckDBOfflineStoreConfig", "AsofDuckDBRetrievalJob"]
