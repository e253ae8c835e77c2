"""The nightly features run computes only what new events change, and writes the same tables.

A next_app world arrives a few days at a time, as the nightly job sees it; after each arrival
the incremental run's tables (SQL snapshots and the real-time fold) must hold exactly the rows
of a full recompute over the same log, including when an event arrives late.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from feastflow.errors import SpecError
from feastflow.event_log import sql_string
from feastflow.settings import Settings
from feastflow.spec import ModelSpec, load_spec
from feature_repo.next_app.world import generate_events
from pipelines.feature_state import STATE_DIR, FeatureState
from pipelines.features import REALTIME_RECORD, compute_feature_tables, feature_table_names
from pipelines.ingest import ingest_frame

SECRET = "incremental-secret"


@pytest.fixture(scope="module")
def world() -> pd.DataFrame:
    """12 users over 24 days."""
    return generate_events(users=12, days=24, seed=5)


def day_cut(world: pd.DataFrame, day: int) -> pd.Timestamp:
    return pd.Timestamp(world["timestamp"].min()).floor("D") + pd.Timedelta(days=day)


def arrive(settings: Settings, spec: ModelSpec, events: pd.DataFrame) -> None:
    ingest_frame(events, spec.event_log, settings.events_dir(spec.name), SECRET)


def differing_rows(ours: Path, full: Path) -> int:
    """Rows in one table and not the other (as multisets), doubles to 9 decimals: the SQL's
    sums of doubles may add in another order from one run to the next, full or not."""
    con = duckdb.connect()
    columns = con.execute(f"DESCRIBE SELECT * FROM read_parquet({sql_string(full)})").fetchall()
    values = ", ".join(f'round("{name}", 9)' if kind == "DOUBLE" else f'"{name}"'
                       for name, kind, *_ in columns)
    a, b = (f"SELECT {values} FROM read_parquet({sql_string(path)})" for path in (ours, full))
    found = con.execute(f"SELECT (SELECT count(*) FROM ({a} EXCEPT ALL {b})) + "
                        f"(SELECT count(*) FROM ({b} EXCEPT ALL {a}))").fetchone()
    return int(found[0]) if found else -1


def assert_same_as_full(settings: Settings, spec: ModelSpec, home: Path) -> None:
    """The tables equal a full recompute of the same log in another home."""
    copy = Settings(home=home, user_hash_secret=SECRET)
    shutil.copytree(settings.events_dir(spec.name), copy.events_dir(spec.name))
    compute_feature_tables(copy, spec, full=True)
    for name in feature_table_names(spec):
        ours = settings.feature_tables_dir(spec.name) / f"{name}.parquet"
        full = copy.feature_tables_dir(spec.name) / f"{name}.parquet"
        assert differing_rows(ours, full) == 0, name


def test_nightly_runs_write_what_a_full_recompute_writes(world: pd.DataFrame,
                                                         tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", user_hash_secret=SECRET)
    spec = load_spec("next_app", settings.feature_repo)
    tables = settings.feature_tables_dir(spec.name)
    arrive(settings, spec, world[world["timestamp"] < day_cut(world, 20)])
    compute_feature_tables(settings, spec)
    first = FeatureState(tables).records
    assert set(first) == {*spec.features.incremental_tables, REALTIME_RECORD}

    # nothing new: every table is kept as it is
    written = {p.name: p.stat().st_mtime_ns for p in tables.glob("*.parquet")}
    compute_feature_tables(settings, spec)
    assert {p.name: p.stat().st_mtime_ns for p in tables.glob("*.parquet")} == written

    # one night, then two at once: only new snapshots, the fold continued
    for start, end in ((20, 21), (21, 23)):
        arrive(settings, spec, world[(world["timestamp"] >= day_cut(world, start))
                                     & (world["timestamp"] < day_cut(world, end))])
        compute_feature_tables(settings, spec)
        new_events = ((world["timestamp"] >= day_cut(world, start))
                      & (world["timestamp"] < day_cut(world, end))).sum()
        assert FeatureState(tables).records[REALTIME_RECORD]["folded_events"] == new_events
        assert_same_as_full(settings, spec, tmp_path / f"night{start}")
        assert len(list((tables / STATE_DIR).glob("entity_states.*.msgpack"))) == 1


def test_a_late_event_gives_the_tables_of_a_full_recompute(world: pd.DataFrame,
                                                            tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", user_hash_secret=SECRET)
    spec = load_spec("next_app", settings.feature_repo)
    before = world[world["timestamp"] < day_cut(world, 22)]
    late = before.sample(5, random_state=3)  # events of past days, missing from the first run
    arrive(settings, spec, before.drop(late.index))
    compute_feature_tables(settings, spec)
    arrive(settings, spec, pd.concat([late, world[(world["timestamp"] >= day_cut(world, 22))
                                                  & (world["timestamp"] < day_cut(world, 23))]]))
    compute_feature_tables(settings, spec)
    state = FeatureState(settings.feature_tables_dir(spec.name))
    assert state.records[REALTIME_RECORD]["folded_events"] == len(before) + (
        (world["timestamp"] >= day_cut(world, 22)) & (world["timestamp"] < day_cut(world, 23))
    ).sum()  # the late events made the fold start over
    assert_same_as_full(settings, spec, tmp_path / "late")


def test_a_changed_feature_sql_recomputes_its_table(world: pd.DataFrame, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", user_hash_secret=SECRET)
    spec = load_spec("next_app", settings.feature_repo)
    arrive(settings, spec, world[world["timestamp"] < day_cut(world, 20)])
    compute_feature_tables(settings, spec)
    state = FeatureState(settings.feature_tables_dir(spec.name))
    state.record("user_profile", "another SQL", state.log("user_profile"))
    table = settings.feature_tables_dir(spec.name) / "user_profile.parquet"
    written = table.stat().st_mtime_ns
    compute_feature_tables(settings, spec)
    assert table.stat().st_mtime_ns != written
    assert FeatureState(settings.feature_tables_dir(spec.name)).records["user_profile"][
        "inputs"] != "another SQL"


def test_an_incremental_table_without_sql_is_refused(world: pd.DataFrame, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", user_hash_secret=SECRET)
    spec = load_spec("next_app", settings.feature_repo)
    wrong = spec.model_copy(update={"features": spec.features.model_copy(
        update={"incremental_tables": ["user_profile", "no_such_table"]})})
    with pytest.raises(SpecError, match=r"incremental_tables.*no_such_table"):
        compute_feature_tables(settings, wrong)
