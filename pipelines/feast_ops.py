"""Feast operations of the pipeline, one use case (one Feast project) at a time: apply its
definitions, materialize its feature views into the online store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import duckdb

from feastflow.event_log import sql_string
from feastflow.settings import Settings
from feastflow.store import apply_repo, open_store

__all__ = ["apply_repo", "data_window", "materialize", "materialize_incremental"]


def data_window(settings: Settings, use_case: str) -> tuple[datetime, datetime]:
    """The span of the use case's feature tables: first event time .. one second past the last."""
    folder = settings.feature_tables_dir(use_case)
    if not any(folder.glob("*.parquet")):
        raise FileNotFoundError(f"no feature tables in {folder}: run `feastflow features -u "
                                f"{use_case}` first")
    first, last = duckdb.connect().execute(
        f"SELECT min(event_timestamp), max(event_timestamp) FROM read_parquet("
        f"{sql_string(folder / '*.parquet')}, union_by_name = true)").fetchone()
    if first is None:
        raise ValueError(f"the feature tables in {folder} are empty: nothing to materialize")
    return _utc(first), _utc(last) + timedelta(seconds=1)


def materialize(settings: Settings, use_case: str, start: datetime | None = None,
                end: datetime | None = None, views: list[str] | None = None
                ) -> tuple[datetime, datetime]:
    """Load the latest value of every key in [start, end] of the use case's views online.

    Defaults come from the data: its feature tables' first and last event time (a fixed window
    back from now misses data older than it).
    """
    if start is None or end is None:
        first, last = data_window(settings, use_case)
        start, end = start or first, end or last
    start, end = _utc(start), _utc(end)
    if start >= end:
        raise ValueError(f"materialize start {start.isoformat()} is not before end {end.isoformat()}")
    open_store(settings, use_case).materialize(start_date=start, end_date=end, feature_views=views)
    return start, end


def materialize_incremental(settings: Settings, use_case: str, end: datetime | None = None
                            ) -> datetime:
    """Feast's materialize-incremental: from each view's last materialization up to end."""
    end = _utc(end) if end else datetime.now(UTC)
    open_store(settings, use_case).materialize_incremental(end_date=end)
    return end


def _utc(moment: datetime) -> datetime:
    # A date without a zone (`feastflow materialize --start 2026-03-06`) is UTC, like event times.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
