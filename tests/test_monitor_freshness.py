"""Feature freshness at the monitoring window's end: never negative, exported in seconds."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
from feast import Entity, FeatureView, Field, FileSource
from feast.types import Float32
from prometheus_client.parser import text_string_to_metric_families

from feastflow.settings import Settings
from feastflow.spec import load_spec
from feastflow.store import open_store
from pipelines.monitoring import Window, feature_freshness, prometheus_text


def test_freshness_counts_only_rows_a_request_at_the_window_end_could_see(tmp_path: Path) -> None:
    # A nightly snapshot stamped at midnight lands after the last request (23:45): the table's
    # max() is then 15 minutes *after* the window's end, which read as an age of -0.25 h.
    settings = Settings(home=tmp_path / "home")
    spec = load_spec("next_app", settings.feature_repo)
    end = pd.Timestamp("2026-03-01 23:45", tz="UTC")
    table = tmp_path / "snapshots.parquet"
    pd.DataFrame({
        "user_id": ["u1", "u1", "u1"],
        "event_timestamp": [end - pd.Timedelta(hours=24), end - pd.Timedelta(minutes=45),
                            end + pd.Timedelta(minutes=15)],
        "created_timestamp": [end - pd.Timedelta(hours=24)] * 3,
        "opens": [1.0, 2.0, 3.0],
    }).to_parquet(table)
    user = Entity(name="freshness_user", join_keys=["user_id"])
    source = FileSource(name="snapshots_source", path=str(table), timestamp_field="event_timestamp",
                        created_timestamp_column="created_timestamp")
    view = FeatureView(name="snapshots_fv", entities=[user], ttl=timedelta(days=2),
                       schema=[Field(name="opens", dtype=Float32)], source=source)
    open_store(settings, spec.name).apply([user, view])

    fresh = feature_freshness(settings, spec, Window(end - pd.Timedelta(days=1), end))

    entry = fresh["snapshots_fv"]
    assert entry["age_hours"] == 0.75  # the 23:00 row, not the midnight one
    assert pd.Timestamp(entry["newest_row"]) == end - pd.Timedelta(minutes=45)


def test_the_freshness_gauge_is_in_seconds() -> None:
    spec = load_spec("next_app", Settings().feature_repo)
    summary = {"feature_drift": {}, "prediction_drift": None, "online_accuracy": {},
               "skew": {"mismatch_rate": 0.0},
               "data_quality": {"volume_ratio": 1.0, "new_categories": {}},
               "feature_freshness": {"snapshots_fv": {"age_hours": 0.75}}, "alerts": []}
    text = prometheus_text(summary, spec).decode()
    samples = {s.name: s for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples["feastflow_monitor_feature_age_seconds"].value == 2700
    assert samples["feastflow_monitor_feature_age_seconds"].labels["view"] == "snapshots_fv"
    assert not [name for name in samples if name.endswith("_hours")]
