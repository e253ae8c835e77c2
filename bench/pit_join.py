"""Point-in-time join benchmark: Feast's stock DuckDB offline store against AsofDuckDBOfflineStore
(and, with --engine spark, Feast's Spark offline store in local mode, on the same files).

    python bench/pit_join.py --rows 1000000 --views 3 [--ours-only] [--rows-per-user 150]
    python bench/pit_join.py --rows 1000000 --engine spark [--spark-master local[2]]

The parent generates flagship-shaped data once into a temporary folder and applies the views to
a SQLite registry: entity rows are (user_id, app, hour_of_day, event_timestamp) requests, 150
per user by default; each feature table has 0.72 rows per entity row (so a user has about 108
unlock events in 30 days; the flagship's users have about 45 a day), microsecond UTC event and
created times, and 1% of its rows recomputed later (same event time, later created time). The
views follow feature_repo/next_app: daily snapshots with a one-day TTL and event-level rows (one
per unlock) with a 90-day TTL. The stock store's work grows with the rows each entity row can
see (events per user); this store's does not. Each store runs in its own subprocess, so its
peak RSS is its own; the child times `get_historical_features(...).to_arrow()` only and writes
the result to Parquet, and the parent checks that both results are identical. Each store runs
--repeat times (interleaved, each in a fresh process): the JSON has the best time and the
highest peak.

--engine spark adds a third store: the same views with SparkSource over the same Parquet files
(a second registry), Feast's Spark offline store, one Spark session started before the clock
(spark.master from --spark-master, local[2] by default). Its peak RSS is the Python driver's
and, apart, the JVM's (VmHWM of the Java process); its result is checked equal to ours.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DAYS = 30
ROWS_PER_USER = 150  # entity rows per user (default of --rows-per-user)
USUAL_APPS = 8  # apps a user opens
TABLE_ROWS_PER_ENTITY_ROW = 0.72
START = np.datetime64("2026-01-01T00:00:00", "us")
DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000
DAILY, EVENT_TTL = timedelta(days=1), timedelta(days=90)  # as in feature_repo/next_app
STORES = {"feast": "duckdb", "ours": "feastflow.offline_store.AsofDuckDBOfflineStore",
          "spark": "spark"}


@dataclass(frozen=True)
class World:
    """The simulated population: user and app names and each user's usual apps."""

    users: pa.Array  # user_id strings (hashed-looking)
    apps: pa.Array  # app names
    usual_apps: np.ndarray  # (users, USUAL_APPS) indices into apps


@dataclass(frozen=True)
class ViewKind:
    """A flagship-like feature view: keys, TTL, whether rows are daily or per event, features."""

    name: str
    keys: tuple[str, ...]
    ttl: timedelta
    event_level: bool
    features: dict[str, str]  # name -> "int" | "float" | "string" | "strings"


# The flagship's views in the order a training set needs them (--views takes the first V, cycling).
KINDS = [
    ViewKind("user_app_usage", ("user_id", "app"), DAILY, False,
             {"opens_1d": "int", "opens_7d": "int", "app_share_7d": "float"}),
    ViewKind("user_last_app", ("user_id",), EVENT_TTL, True,
             {"last_app": "string", "last_unlock_unix": "int", "recent_apps": "strings"}),
    ViewKind("user_app_recency", ("user_id", "app"), EVENT_TTL, True, {"last_opened_unix": "int"}),
    ViewKind("app_hour_popularity", ("app", "hour_of_day"), DAILY, False, {"global_share_at_hour": "float"}),
    ViewKind("user_profile", ("user_id",), DAILY, False,
             {"unlocks_7d": "int", "avg_session_seconds_7d": "float"}),
]


# --- data generation (parent) -----------------------------------------------------------------


def make_world(rows: int, rows_per_user: int, rng: np.random.Generator) -> World:
    """rows_per_user entity rows per user; an app catalogue of about one app per 1,000 rows."""
    n_users, n_apps = max(10, rows // rows_per_user), max(4 * USUAL_APPS, rows // 1000)
    users = pa.array([f"{h:016x}" for h in rng.integers(0, 2**63, n_users)])
    apps = pa.array([f"com.app.{i:05d}" for i in range(n_apps)])
    usual = np.stack([rng.choice(n_apps, USUAL_APPS, replace=False) for _ in range(n_users)])
    return World(users, apps, usual)


def _key_codes(keys: tuple[str, ...], world: World, n: int, rng: np.random.Generator
               ) -> dict[str, np.ndarray]:
    # Integer codes of n random keys: users, one of the user's usual apps, hours of day.
    user = rng.integers(0, len(world.users), n)
    codes = {"user_id": user, "app": world.usual_apps[user, rng.integers(0, USUAL_APPS, n)],
             "hour_of_day": rng.integers(0, 24, n)}
    if "user_id" not in keys:  # app-level tables cover the whole catalogue
        codes["app"] = rng.integers(0, len(world.apps), n)
    return {k: codes[k] for k in keys}


def feature_table(kind: ViewKind, world: World, n: int, rng: np.random.Generator) -> pa.Table:
    """n rows of one view: unique (keys, event time), then 1% recomputed an hour later."""
    codes = _key_codes(kind.keys, world, n, rng)
    ts = rng.integers(0, DAYS * DAY_US, n) if kind.event_level else rng.integers(0, DAYS, n) * DAY_US
    _, first = np.unique(np.stack([*codes.values(), ts]), axis=1, return_index=True)
    again = first[rng.random(len(first)) < 0.01]
    index = np.concatenate([first, again])
    created = ts[index] + rng.integers(0, 30 * 60_000_000, len(index))
    created[len(first):] += HOUR_US
    names = {"user_id": world.users, "app": world.apps}
    table = {k: _take(names[k], c[index]) if k in names else pa.array(c[index]) for k, c in codes.items()}
    table["event_timestamp"] = _utc(ts[index])
    table["created_timestamp"] = _utc(created)
    for name, kind_of in kind.features.items():
        table[name] = _values(kind_of, len(index), world, rng)
    return pa.table(table)


def _take(values: pa.Array, indices: np.ndarray) -> pa.Array:
    return values.take(pa.array(indices))


def _values(kind_of: str, n: int, world: World, rng: np.random.Generator) -> pa.Array:
    mask = rng.random(n) < 0.02  # a few null feature values
    if kind_of == "int":
        return pa.array(rng.integers(0, 1_000_000, n), mask=mask)
    if kind_of == "float":
        return pa.array(rng.random(n), mask=mask)
    apps = _take(world.apps, rng.integers(0, len(world.apps), 3 * n))
    if kind_of == "strings":  # the last three apps, most recent first
        return pa.ListArray.from_arrays(pa.array(np.arange(0, 3 * n + 1, 3, dtype=np.int32)), apps)
    return apps.slice(0, n)


def _utc(micros: np.ndarray) -> pa.Array:
    return pa.array(START + micros.astype("timedelta64[us]")).cast(pa.timestamp("us", tz="UTC"))


def entity_table(rows: int, world: World, rng: np.random.Generator) -> pa.Table:
    """Prediction requests: a user, one of their apps (5% another), a time in days 2-30."""
    codes = _key_codes(("user_id", "app"), world, rows, rng)
    stranger = rng.random(rows) < 0.05
    codes["app"][stranger] = rng.integers(0, len(world.apps), stranger.sum())
    ts = rng.integers(DAY_US, DAYS * DAY_US, rows)
    return pa.table({
        "request_id": np.arange(rows, dtype=np.int64),
        "user_id": _take(world.users, codes["user_id"]),
        "app": _take(world.apps, codes["app"]),
        "hour_of_day": (ts // HOUR_US) % 24,
        "event_timestamp": _utc(ts),
        "battery": rng.integers(1, 101, rows),
    })


def write_inputs(folder: Path, rows: int, views: int, rows_per_user: int, seed: int,
                 spark: bool = False) -> list[str]:
    """Generate every table into folder, apply the views (and, for spark, the same views over
    SparkSource to a second registry); return the feature references."""
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Array, Float64, Int64, String

    rng = np.random.default_rng(seed)
    world = make_world(rows, rows_per_user, rng)
    pq.write_table(entity_table(rows, world, rng), folder / "entity.parquet")
    entities = {
        "user_id": Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING),
        "app": Entity(name="app", join_keys=["app"], value_type=ValueType.STRING),
        "hour_of_day": Entity(name="hour_of_day", join_keys=["hour_of_day"], value_type=ValueType.INT64),
    }
    dtypes = {"int": Int64, "float": Float64, "string": String, "strings": Array(String)}
    objects: list[object] = list(entities.values())
    spark_objects: list[object] = list(entities.values())
    refs = []
    for v in range(views):
        kind = KINDS[v % len(KINDS)]
        name = f"{kind.name}_fv" if v < len(KINDS) else f"{kind.name}_{v}_fv"
        table = feature_table(kind, world, max(100, int(rows * TABLE_ROWS_PER_ENTITY_ROW)), rng)
        pq.write_table(table, folder / f"{name}.parquet")
        source = FileSource(name=f"{name}_source", path=str(folder / f"{name}.parquet"),
                            timestamp_field="event_timestamp", created_timestamp_column="created_timestamp")
        schema = [Field(name=f, dtype=dtypes[t]) for f, t in kind.features.items()]
        objects.append(FeatureView(name=name, entities=[entities[k] for k in kind.keys],
                                   ttl=kind.ttl, source=source, schema=schema))
        if spark:
            spark_objects.append(FeatureView(name=name, entities=[entities[k] for k in kind.keys],
                                             ttl=kind.ttl, source=spark_source(source),
                                             schema=schema))
        refs += [f"{name}:{f}" for f in kind.features]
    open_store(folder, "duckdb").apply(objects)
    if spark:
        open_store(folder, "spark").apply(spark_objects)
    return refs


def spark_source(source: object) -> object:
    """The same Parquet file as a SparkSource (Feast's Spark store reads only its own kind)."""
    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

    return SparkSource(name=source.name, path=source.path, file_format="parquet",  # type: ignore[attr-defined]
                       timestamp_field="event_timestamp", created_timestamp_column="created_timestamp")


# --- one run (child) --------------------------------------------------------------------------


SPARK_MASTER = "local[2]"  # --spark-master sets it in the child


def open_store(folder: Path, offline_type: str):  # -> FeatureStore (imported lazily)
    """A FeatureStore over the folder's registry with the given offline store type (spark: its
    own registry, whose sources are SparkSource)."""
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    registry = "registry_spark.db" if offline_type == "spark" else "registry.db"
    offline: dict[str, object] = {"type": offline_type}
    if offline_type == "spark":
        offline["spark_conf"] = spark_conf()
    return FeatureStore(config=RepoConfig(
        project="bench", provider="local", repo_path=str(folder), entity_key_serialization_version=3,
        registry={"registry_type": "sql", "path": f"sqlite:///{folder / registry}"},
        offline_store=offline,
        online_store={"type": "sqlite", "path": str(folder / "online.db")},
    ))


def spark_conf() -> dict[str, str]:
    """The session the Spark store gets: feature_store.spark.yaml's settings, this master."""
    import os

    import yaml

    path = Path(__file__).resolve().parent.parent / "feature_repo" / "feature_store.spark.yaml"
    conf = {k: str(v) for k, v in yaml.safe_load(path.read_text())["offline_store"]["spark_conf"].items()}
    conf.update({"spark.master": SPARK_MASTER, "spark.driver.memory": "6g",
                 "spark.pyspark.python": sys.executable})
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return conf


def start_spark() -> object:
    """The Spark session, started before the clock (the store reuses the active session)."""
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    session = SparkSession.builder.config(conf=SparkConf().setAll(list(spark_conf().items()))).getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def jvm_peak_rss_mb(session: object) -> float | None:
    """Peak resident memory of the Spark JVM (its VmHWM), None where /proc cannot tell."""
    try:
        pid = session.sparkContext._gateway.proc.pid  # type: ignore[attr-defined]
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (AttributeError, OSError, ValueError):
        return None
    return None


def run_child(folder: Path, store_name: str, refs: list[str]) -> dict[str, float]:
    """Time one store's join, write its result, report seconds and this process's peak RSS."""
    import pandas as pd

    session = start_spark() if store_name == "spark" else None
    store = open_store(folder, STORES[store_name])
    store.list_feature_views()  # connect to the registry before the clock starts
    entity_df = pd.read_parquet(folder / "entity.parquet")
    start = time.perf_counter()
    result = store.get_historical_features(entity_df=entity_df, features=refs,
                                           full_feature_names=True).to_arrow()
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes
    pq.write_table(result, folder / f"out_{store_name}.parquet")  # after the peak: not the store's
    report = {"seconds": seconds, "peak_rss_mb": peak_mb}
    if session is not None:
        report["jvm_peak_rss_mb"] = jvm_peak_rss_mb(session)
    return report


def run_in_subprocess(folder: Path, store_name: str, refs: list[str]) -> dict[str, float]:
    """Run one store in a fresh interpreter; its last stdout line is its JSON report (a failed
    child raises with the end of its stderr: why Spark died at 10 M rows went unsaid)."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", store_name, "--data", str(folder), "--refs", ",".join(refs),
         "--spark-master", SPARK_MASTER],
        capture_output=True, text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{store_name} exited with code {out.returncode}; its stderr ends:\n"
                           f"{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_stores(folder: Path, names: list[str], refs: list[str], repeat: int) -> dict[str, dict[str, float]]:
    """Each store `repeat` times, interleaved so that the machine's load hits both alike: the best
    time (the least disturbed run) and the highest peak RSS of each."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for _ in range(repeat):
        for name in names:
            runs[name].append(run_in_subprocess(folder, name, refs))
    return {name: {"seconds": min(r["seconds"] for r in rs),
                   **{k: max(r[k] or 0 for r in rs) for k in rs[0] if k != "seconds"}}
            for name, rs in runs.items()}


def identical(folder: Path, other: str = "feast") -> bool:
    """Ours and the other store's result hold the same rows and values, compared in request
    order (spark: its own column order and Arrow types, so compared by name and value)."""
    import pandas as pd

    ours = pd.read_parquet(folder / "out_ours.parquet").sort_values("request_id", ignore_index=True)
    theirs = pd.read_parquet(folder / f"out_{other}.parquet").sort_values("request_id", ignore_index=True)
    try:
        if other == "spark":
            theirs = theirs[list(ours.columns)]
        pd.testing.assert_frame_equal(ours, theirs, check_exact=True, check_dtype=other != "spark")
    except (AssertionError, KeyError) as e:
        print(str(e)[:2000], file=sys.stderr)
        return False
    return True


def main() -> None:
    """Parse the arguments; as the parent generate and compare, as a child run one store."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--ours-only", action="store_true")
    parser.add_argument("--rows-per-user", type=int, default=ROWS_PER_USER,
                        help="entity rows per user; each user has 0.72 times as many events")
    parser.add_argument("--repeat", type=int, default=3, help="runs per store: best time, highest peak")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--engine", choices=["duckdb", "spark"], default="duckdb",
                        help="spark: also Feast's Spark offline store on the same files")
    parser.add_argument("--spark-master", default="local[2]")
    parser.add_argument("--child", choices=sorted(STORES), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--refs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global SPARK_MASTER
    SPARK_MASTER = args.spark_master
    if args.child:
        print(json.dumps(run_child(args.data, args.child, args.refs.split(","))))
        return
    with tempfile.TemporaryDirectory(prefix="pit_join_") as tmp:
        folder = Path(tmp)
        spark = args.engine == "spark"
        refs = write_inputs(folder, args.rows, args.views, args.rows_per_user, args.seed, spark)
        names = ["ours"] if args.ours_only else ["ours", "feast"]
        results = run_stores(folder, names + (["spark"] if spark else []), refs, args.repeat)
        ours, feast = results["ours"], results.get("feast")
        same = None if feast is None else identical(folder)
        line = report(args.rows, args.views, feast, ours, same)
        if spark:
            line.update(spark_report(results["spark"], ours, identical(folder, "spark")))
        print(json.dumps(line))


def report(rows: int, views: int, feast: dict[str, float] | None, ours: dict[str, float],
           same: bool | None) -> dict[str, object]:
    """The JSON line: timings, peak memory and how they compare."""
    def ratio(a: float | None, b: float) -> float | None:
        return None if a is None else round(a / b, 2)

    feast_s = None if feast is None else round(feast["seconds"], 2)
    feast_mb = None if feast is None else round(feast["peak_rss_mb"], 1)
    return {
        "rows": rows, "views": views,
        "feast_s": feast_s, "ours_s": round(ours["seconds"], 2), "speedup": ratio(feast_s, ours["seconds"]),
        "feast_peak_rss_mb": feast_mb, "ours_peak_rss_mb": round(ours["peak_rss_mb"], 1),
        "memory_ratio": ratio(feast_mb, ours["peak_rss_mb"]), "identical": same,
    }


def spark_report(spark: dict[str, float], ours: dict[str, float], same: bool) -> dict[str, object]:
    """The Spark store's figures beside ours: time, driver and JVM peaks, how much slower."""
    return {
        "spark_master": SPARK_MASTER, "spark_s": round(spark["seconds"], 2),
        "spark_vs_ours": round(spark["seconds"] / ours["seconds"], 2),
        "spark_driver_peak_rss_mb": round(spark["peak_rss_mb"], 1),
        "spark_jvm_peak_rss_mb": round(spark.get("jvm_peak_rss_mb") or 0, 1) or None,
        "spark_identical": same,
    }


if __name__ == "__main__":
    main()
