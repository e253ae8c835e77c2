"""Feast operations of the pipeline: apply the repo, materialize into the online store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from feastflow.settings import Settings
from feastflow.store import apply_repo, open_store

__all__ = ["apply_repo", "materialize", "materialize_incremental"]


def materialize(settings: Settings, start: datetime | None = None, end: datetime | None = None,
                views: list[str] | None = None) -> tuple[datetime, datetime]:
    """Load the latest value of every key in [start, end] into the online store.

    Defaults: end is now; start is 400 days before end, wide enough for any view's history.
    """
    end = _utc(end) if end else datetime.now(UTC)
    start = _utc(start) if start else end - timedelta(days=400)
    if start >= end:
        raise ValueError(f"materialize start {start.isoformat()} is not before end {end.isoformat()}")
    open_store(settings).materialize(start_date=start, end_date=end, feature_views=views)
    return start, end


def materialize_incremental(settings: Settings, end: datetime | None = None) -> datetime:
    """Feast's materialize-incremental: from each view's last materialization up to end."""
    end = end or datetime.now(UTC)
    open_store(settings).materialize_incremental(end_date=end)
    return end


def _utc(moment: datetime) -> datetime:
    # A date without a zone (`feastflow materialize --start 2026-03-06`) is UTC, like event times.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
