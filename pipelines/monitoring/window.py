"""The window of served requests, the champion's reference, and what every check reads."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import orjson
import pandas as pd

from feastflow.errors import MonitorError
from feastflow.event_log import sql_string
from feastflow.settings import Settings
from feastflow.spec import ModelSpec, MonitorSpec

if TYPE_CHECKING:
    from registry.lifecycle import LoadedModel, Registry

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Window:
    """Served requests with request_ts in [start, end)."""

    start: pd.Timestamp
    end: pd.Timestamp


def served_glob(served_dir: Path) -> str:
    """Every written partition file of the served-request log (temporary files excluded)."""
    return str(served_dir / "**" / "*.parquet")


def load_served(served_dir: Path, days: int, since: datetime | None = None,
                until: datetime | None = None) -> tuple[pd.DataFrame, Window]:
    """Served records of the window: `days` days ending at `until` or the newest request."""
    if not any(served_dir.rglob("*.parquet")):
        raise MonitorError(f"no served requests are logged under {served_dir}: serve with "
                           "FEASTFLOW_REQUEST_LOG_SAMPLE > 0 (share of requests logged) first")
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    source = (f"read_parquet({sql_string(served_glob(served_dir))}, hive_partitioning = false, "
              "union_by_name = true)")
    if until is None:
        newest = con.execute(f"SELECT max(request_ts) FROM {source}").fetchone()[0]
        end = pd.Timestamp(newest).tz_convert("UTC") + pd.Timedelta(microseconds=1)
    else:
        end = _utc(until)
    start = _utc(since) if since is not None else end - pd.Timedelta(days=days)
    if start >= end:
        raise MonitorError(f"empty window: since {start} is not before until {end}")
    served = con.execute(
        f"SELECT * FROM {source} WHERE request_ts >= ? AND request_ts < ? ORDER BY request_ts",
        [start.to_pydatetime(), end.to_pydatetime()]).df()
    if served.empty:
        raise MonitorError(f"no served requests between {start} and {end}")
    if "context" not in served:
        served["context"] = None
    return served, Window(start, end)


def _utc(value: datetime) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def model_answers(served: pd.DataFrame) -> pd.DataFrame:
    """Records the model answered and served (not a fallback, not a shadow scoring)."""
    return served[served["fallback"].isna() & ~served["shadow"].astype(bool)]


def served_inputs(records: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """One row per scored candidate: request index, item and each model input as logged (a
    per-event answer, logged without candidates, is one row with item "")."""
    columns: dict[str, list[Any]] = {name: [] for name in names}
    requests: list[int] = []
    items: list[str] = []
    for index, text in zip(records.index, records["features"], strict=True):
        logged = orjson.loads(text) if text else {}
        if not logged:
            continue
        candidates = logged.get("candidates", [""])
        if not candidates:
            continue
        n = len(candidates)
        requests.extend([index] * n)
        items.extend(candidates)
        for name in names:
            values = logged.get(name)
            columns[name].extend(values if values is not None else [None] * n)
    frame = pd.DataFrame({name: pd.array(values, dtype="Float64").to_numpy(
        dtype="float64", na_value=np.nan) for name, values in columns.items()})
    frame.insert(0, "item", items)
    frame.insert(0, "request", requests)
    return frame


def load_reference(registry: Registry, run_id: str, version: str
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The champion's training inputs sample and holdout top predictions (its MLflow run)."""
    from pipelines.training import REFERENCE_DIR, REFERENCE_FEATURES, REFERENCE_PREDICTIONS

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder = registry.download_run_artifacts(run_id, REFERENCE_DIR, Path(tmp))
        except Exception as e:
            raise MonitorError(f"the champion v{version} has no monitoring reference in its run "
                               f"({e}); train it again with `feastflow train`") from e
        return (pd.read_parquet(folder / REFERENCE_FEATURES),
                pd.read_parquet(folder / REFERENCE_PREDICTIONS))


@dataclass
class Observed:
    """Everything the checks read: the window's served requests and the champion judged."""

    settings: Settings
    spec: ModelSpec
    window: Window
    served: pd.DataFrame  # every logged request of the window
    answered: pd.DataFrame  # model_answers(served)
    champion: LoadedModel  # the version judged, as loaded from the registry
    reference: pd.DataFrame  # the champion's holdout inputs (without their day)
    reference_days: pd.Series | None  # each reference row's UTC day (None: an older champion)
    reference_predictions: pd.DataFrame
    categories: dict[str, list[str]]  # the champion's categorical inputs and their labels

    @property
    def thresholds(self) -> MonitorSpec:
        """The use case's monitor settings."""
        return self.spec.monitor

    @property
    def window_days(self) -> int:
        """The window's length in whole days (a partial day counts as one)."""
        return max(1, math.ceil((self.window.end - self.window.start) / pd.Timedelta(days=1)))


@dataclass
class Section:
    """What one check adds: its keys of the summary, the alerts and warnings it raised, and
    the frames its plots need (not part of the JSON summary)."""

    summary: dict[str, Any]
    alerts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    plot_data: dict[str, Any] = field(default_factory=dict)
