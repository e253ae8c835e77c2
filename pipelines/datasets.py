"""Point-in-time training and holdout sets from Feast's get_historical_features.

The split is by time: the last `holdout_days` of the event log are the holdout, the
`train_days` before them the training window. Feature values are those known one microsecond
before each event (Feast's point-in-time join over the feature tables). A label known only
`label_delay` after its event is trained on only if it was known when the holdout starts.

Two shapes: ranking (candidates per request, label 1 on the chosen item) and per event (one row
per event, its label as it is: classification and regression).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
from feast import FeatureStore

from feastflow.ranking import LABEL, REQUEST_ID, candidate_rows, entity_rows, event_rows
from feastflow.spec import ModelSpec

ROW_ID = "row_id"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitWindow:
    """Day boundaries (UTC) of the training window and the holdout."""

    train_start: pd.Timestamp
    holdout_start: pd.Timestamp
    holdout_end: pd.Timestamp  # exclusive

    def as_dict(self) -> dict[str, str]:
        """ISO strings, for logs and JSON."""
        return {k: v.isoformat() for k, v in self.__dict__.items()}


def split_window(con: duckdb.DuckDBPyConnection, spec: ModelSpec) -> SplitWindow:
    """The holdout is the last `holdout_days` whole days; training the `train_days` before."""
    ts = spec.event_log.timestamp
    first, last = con.execute(
        f'SELECT min(date_trunc(\'day\', "{ts}")), max(date_trunc(\'day\', "{ts}")) FROM all_events'
    ).fetchone()
    holdout_end = pd.Timestamp(last).tz_convert("UTC") + pd.Timedelta(days=1)
    holdout_start = holdout_end - pd.Timedelta(days=spec.split.holdout_days)
    earliest = pd.Timestamp(first).tz_convert("UTC") + pd.Timedelta(days=spec.split.warmup_days)
    train_start = max(earliest, holdout_start - pd.Timedelta(days=spec.split.train_days))
    if holdout_start - train_start < pd.Timedelta(days=7):
        raise ValueError(
            f"the event log spans {first:%Y-%m-%d}..{last:%Y-%m-%d}: too short for "
            f"{spec.split.warmup_days} warm-up days, a week of training and a "
            f"{spec.split.holdout_days}-day holdout; generate more days"
        )
    if holdout_start - train_start < pd.Timedelta(days=spec.split.train_days):
        log.warning("training window shortened to %s by the length of the event log",
                    holdout_start - train_start)
    return SplitWindow(train_start, holdout_start, holdout_end)


def sample_requests(con: duckdb.DuckDBPyConnection, start: pd.Timestamp, end: pd.Timestamp,
                    n: int, seed: int, spec: ModelSpec) -> pd.DataFrame:
    """A reproducible uniform sample of up to n events in [start, end), as prediction requests
    (every column of the log, the label included: it is what the request will be judged on).

    Ordered by md5 of the event id and the seed: stable across DuckDB versions, unlike hash().
    """
    ts, event_id = spec.event_log.timestamp, spec.event_log.event_id
    events = con.execute(
        f"""SELECT * FROM all_events WHERE "{ts}" >= ? AND "{ts}" < ?
           ORDER BY md5("{event_id}"::VARCHAR || ?::VARCHAR), "{event_id}" LIMIT ?""",
        [start.to_pydatetime(), end.to_pydatetime(), seed, n],
    ).df()
    events = events.sort_values([ts, event_id], ignore_index=True)
    events[ts] = pd.to_datetime(events[ts], utc=True).astype("datetime64[us, UTC]")
    events.insert(0, REQUEST_ID, range(len(events)))
    return events


def labelled_by(spec: ModelSpec, moment: pd.Timestamp) -> pd.Timestamp:
    """The last event time whose label is known at `moment` (training stops there)."""
    return moment - pd.Timedelta(spec.event_log.label_delay)


def build_event_set(store: FeatureStore, requests: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """Per-event tasks: each request with its point-in-time features and its label."""
    entities = event_rows(requests, spec)
    rows = store.get_historical_features(
        entity_df=entities, features=store.get_feature_service(spec.features.service)).to_df()
    rows = rows.sort_values(REQUEST_ID, ignore_index=True)
    if len(rows) != len(requests):
        raise ValueError(f"the point-in-time join returned {len(rows)} rows for "
                         f"{len(requests)} events")
    label = requests.set_index(REQUEST_ID)[spec.event_log.label_column]
    rows[LABEL] = pd.to_numeric(label.loc[rows[REQUEST_ID]].to_numpy(), errors="coerce")
    return rows


def build_set(store: FeatureStore, requests: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """The task's rows: candidates per request (ranking) or one row per event."""
    if spec.per_event:
        return build_event_set(store, requests, spec)
    return build_ranking_set(store, requests, spec)


def build_ranking_set(store: FeatureStore, requests: pd.DataFrame, spec: ModelSpec
                      ) -> pd.DataFrame:
    """Candidates for each request with their point-in-time features and a 0/1 label."""
    stage1_service = store.get_feature_service(spec.features.entity_service)
    stage1_entities = entity_rows(requests, spec)
    stage1 = store.get_historical_features(entity_df=stage1_entities, features=stage1_service).to_df()
    stage1_features = [c for c in stage1.columns if c not in stage1_entities.columns]
    enriched = requests.merge(stage1[[REQUEST_ID, *stage1_features]], on=REQUEST_ID, how="left")
    candidates = candidate_rows(enriched, spec)
    candidates.insert(0, ROW_ID, range(len(candidates)))
    stage2 = store.get_historical_features(
        entity_df=candidates, features=store.get_feature_service(spec.features.ranking_service)
    ).to_df()
    stage2 = stage2.sort_values(ROW_ID, ignore_index=True)
    item = spec.event_log.item
    actual = requests.set_index(REQUEST_ID)[item]
    stage2[LABEL] = (stage2[item].to_numpy() == actual.loc[stage2[REQUEST_ID]].to_numpy()).astype(
        "int64"
    )
    return stage2


def model_feature_names(store: FeatureStore, spec: ModelSpec) -> list[str]:
    """The model's inputs: every feature of its service (ranking: stage 2) but the excluded ones,
    then the spec's extra columns."""
    service_name = spec.features.service if spec.per_event else spec.features.ranking_service
    service = store.get_feature_service(service_name)
    excluded = spec.model.exclude_features
    names = [f.name for projection in service.feature_view_projections
             for f in projection.features
             if not any(fnmatch.fnmatchcase(f.name, pattern) for pattern in excluded)]
    return names + [n for n in spec.model.extra_features if n not in names]


def data_fingerprint(events_dir: Path, features_dir: Path, window: SplitWindow,
                     spec: ModelSpec) -> str:
    """A hash of the inputs (file names, sizes, mtimes), the use case's Feast definitions, the
    time range and the split."""
    digest = hashlib.sha256()
    for root in (events_dir, features_dir):
        for path in sorted(root.rglob("*.parquet")):
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    if spec.source_dir is not None:  # on-demand views change the rows without a table changing
        for path in sorted(spec.source_dir.glob("*.py")):
            digest.update(path.name.encode() + path.read_bytes())
    digest.update(json.dumps(window.as_dict(), sort_keys=True).encode())
    digest.update(spec.model_dump_json(exclude={"source_dir"}).encode())
    return digest.hexdigest()[:16]
