"""Ingestion: bad rows named, good rows all-or-nothing, ids hashed, re-ingest idempotent."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from typer.testing import CliRunner

from feastflow import event_log as event_log_module
from feastflow.event_log import events_glob
from feastflow.privacy import hash_user_id
from feastflow.settings import FEATURE_REPO
from feastflow.spec import load_spec
from pipelines.cli import app
from pipelines.ingest import ingest_file, ingest_frame

SECRET = "test-secret"
CONTRACT = load_spec("next_app", FEATURE_REPO).event_log


def log_rows(events_dir: Path) -> pd.DataFrame:
    return duckdb.sql(f"SELECT * FROM read_parquet('{events_glob(events_dir)}')").df()


def test_ingest_writes_hashed_partitions_and_is_idempotent(
    small_events: pd.DataFrame, tmp_path: Path
) -> None:
    events = small_events.head(3000)
    report = ingest_frame(events, CONTRACT, tmp_path / "events", SECRET)
    assert report.rows_written == 3000 and report.errors == []
    stored = log_rows(tmp_path / "events")
    assert len(stored) == 3000
    assert set(stored["user_id"]) == {hash_user_id(u, SECRET) for u in events["user_id"]}
    assert str(stored["timestamp"].dtype).startswith("datetime64[us")
    # raw ids never reach disk: no byte of any written file contains one
    raw_ids = set(events["user_id"])
    for path in (tmp_path / "events").rglob("*.parquet"):
        blob = path.read_bytes()
        assert not any(raw.encode() in blob for raw in raw_ids)
    # partitions by date and hour, named like Hive partitions
    first = events["timestamp"].iloc[0]
    assert (tmp_path / "events" / f"date={first:%Y-%m-%d}" / f"hour={first:%H}").is_dir()

    again = ingest_frame(small_events.head(4000), CONTRACT, tmp_path / "events", SECRET)
    assert again.duplicates_skipped == 3000 and again.rows_written == 1000
    assert len(log_rows(tmp_path / "events")) == 4000


def test_bad_rows_are_reported_and_good_rows_still_land(
    small_events: pd.DataFrame, tmp_path: Path
) -> None:
    raw = small_events.head(50).astype({"battery": object}).copy()
    raw.loc[3, "battery"] = 140
    raw.loc[7, "location"] = "moon"
    report = ingest_frame(raw, CONTRACT, tmp_path / "events", SECRET)
    assert [(e.row, e.field) for e in report.errors] == [(4, "battery"), (8, "location")]
    assert "out of range" in report.errors[0].reason
    assert report.rows_written == 48
    strict = ingest_frame(raw.assign(event_id=raw["event_id"] + "-b"), CONTRACT,
                          tmp_path / "strict",
                          SECRET, strict=True)
    assert strict.rows_written == 0 and not (tmp_path / "strict").exists()


def test_a_failure_mid_write_leaves_no_partition_behind(
    small_events: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = small_events.head(2000)  # spans many hour partitions
    real_replace, calls = os.replace, {"n": 0}

    def failing_replace(src: str, dst: str) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(event_log_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        ingest_frame(events, CONTRACT, tmp_path / "events", SECRET)
    assert list((tmp_path / "events").rglob("*.parquet")) == []
    monkeypatch.setattr(event_log_module.os, "replace", real_replace)
    assert ingest_frame(events, CONTRACT, tmp_path / "events", SECRET).rows_written == 2000


def test_csv_input_round_trips(small_events: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    small_events.head(200).to_csv(path, index=False)
    report = ingest_file(path, CONTRACT, tmp_path / "events", SECRET)
    assert report.errors == [] and report.rows_written == 200
    stored = log_rows(tmp_path / "events").sort_values("event_id", ignore_index=True)
    expected = small_events.head(200).sort_values("event_id", ignore_index=True)
    assert (stored["app"] == expected["app"]).all()
    assert (stored["charging"] == expected["charging"]).all()
    assert (stored["timestamp"] == expected["timestamp"]).all()


def test_cli_ingest_names_bad_rows_and_exits_nonzero(
    small_events: pd.DataFrame, tmp_path: Path
) -> None:
    raw = small_events.head(10).copy()
    raw["app"] = raw["app"].astype(object)
    raw.loc[2, "app"] = "Bad App"
    path = tmp_path / "in.csv"
    raw.to_csv(path, index=False)
    result = CliRunner().invoke(app, ["--home", str(tmp_path / "home"), "ingest", str(path)])
    assert result.exit_code == 1
    assert "row 3: app:" in result.output
    assert "wrote 9" in result.output
    missing = CliRunner().invoke(app, ["--home", str(tmp_path / "home"), "ingest",
                                       str(tmp_path / "nope.csv")])
    assert missing.exit_code == 2 and "no such input file" in missing.output


# --- strict types and time bounds in ingest (issue 14, item 8) ---------------------------------


def test_a_csv_file_of_bad_values_writes_no_partition_of_1970_or_1900(
    small_events: pd.DataFrame, tmp_path: Path
) -> None:
    raw = small_events.head(8).astype(object)  # written as text: times as "... +00:00"
    bad = {1: ("timestamp", "1772352000000000000"), 2: ("timestamp", "1900-01-01T00:00:00Z"),
           3: ("timestamp", "now"), 4: ("timestamp", "2026-02-01 08:00:00"),
           5: ("battery", "inf"), 6: ("charging", "yes"), 7: ("os_version", "x" * 30_000)}
    for row, (column, value) in bad.items():
        raw.loc[row, column] = value
    path = tmp_path / "bad.csv"
    raw.to_csv(path, index=False)
    report = ingest_file(path, CONTRACT, tmp_path / "events", SECRET)
    assert [(e.row, e.field) for e in report.errors] == [(r + 1, c) for r, (c, _) in bad.items()]
    assert [e.reason for e in report.errors] == [
        'ISO 8601 with a time zone required, got "1772352000000000000"',
        "before 2020-01-01T00:00:00Z, the earliest time this use case accepts",
        'ISO 8601 with a time zone required, got "now"',
        'ISO 8601 with a time zone required, got "2026-02-01 08:00:00"',
        "must be a finite number", "must be true or false", "longer than 32 characters"]
    assert report.rows_written == 1
    dates = {p.name for p in (tmp_path / "events").glob("date=*")}
    assert dates == {f"date={small_events['timestamp'].iloc[0]:%Y-%m-%d}"}


def test_a_parquet_file_must_carry_each_value_in_its_type(
    small_events: pd.DataFrame, tmp_path: Path
) -> None:
    typed = small_events.head(3).copy()
    path = tmp_path / "typed.parquet"
    typed.to_parquet(path, index=False)
    assert ingest_file(path, CONTRACT, tmp_path / "ok", SECRET).rows_written == 3
    naive = typed.assign(timestamp=typed["timestamp"].dt.tz_localize(None))
    naive.to_parquet(path, index=False)
    report = ingest_file(path, CONTRACT, tmp_path / "naive", SECRET)
    assert report.rows_written == 0
    assert {e.reason for e in report.errors} == {
        "a time zone is required, got a datetime without one"}
    as_text = typed.astype({"battery": str, "charging": str})
    as_text.to_parquet(path, index=False)
    report = ingest_file(path, CONTRACT, tmp_path / "text", SECRET)
    assert {(e.field, e.reason) for e in report.errors} == {
        ("battery", "must be a number, got a string")}
    flags = typed.assign(battery=typed["charging"])  # a flag where a number belongs
    report = ingest_frame(flags, CONTRACT, tmp_path / "flags", SECRET)
    assert {(e.field, e.reason) for e in report.errors} == {
        ("battery", "must be a number, got a boolean")}


@pytest.mark.parametrize("use_case", ["fraud", "credit_score", "taxi_eta"])
def test_each_shared_data_set_fits_its_contract(use_case: str) -> None:
    """The declared bounds (`earliest`, lengths) admit every event of the real data sets: fraud's
    2018 payments, the 2020-2021 loans, the 2013-2016 trips (taxi's 3 meters left running are the
    contract's own max, as before)."""
    from feastflow.events import validate_events
    from feastflow.plugins import use_case_function
    from feastflow.settings import Settings

    spec = load_spec(use_case, FEATURE_REPO)
    data_dir = Settings().data_dir
    if not data_dir.is_dir():
        pytest.skip(f"no shared data at {data_dir}")
    raw = use_case_function(spec, spec.loader.module, spec.loader.function)(data_dir)
    _, errors = validate_events(raw, spec.event_log)
    expected = {"taxi_eta": {("trip_seconds", "out of range [1, 14400]")}}.get(use_case, set())
    assert {(e.field, e.reason) for e in errors} == expected
    assert raw["timestamp"].min() >= spec.event_log.earliest
