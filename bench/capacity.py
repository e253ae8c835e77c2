"""What one user costs in the online store, and how fast Feast's materialize fills it.

    python bench/capacity.py [--users 50 150] [--days 28] [--seed 5]

For each population: a generated next_app world of N users over D days, ingested, its feature
tables computed, applied and materialized by Feast into a private, empty redis-server (nothing
else in it). Reported per population: the rows Feast wrote (one per entity key and view), the
Redis hashes (Feast keeps every view of one entity key in one hash), `used_memory` from INFO
memory after the load minus before, and the materialize's wall time and rows/s. Across the
populations: the slope of memory in users (bytes per extra user: the per-user cost without the
server's fixed overhead and the global views). docs/capacity.md scales these to 10 M users.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
from harness import RedisServer, free_port, log

from feastflow.event_log import sql_string
from feastflow.settings import Settings
from feastflow.spec import load_spec
from feastflow.store import open_store
from feature_repo.next_app.world import generate_events
from pipelines.feast_ops import apply_repo, materialize
from pipelines.features import compute_feature_tables
from pipelines.ingest import ingest_frame


def used_memory(redis: RedisServer) -> int:
    """INFO memory's used_memory, in bytes."""
    for line in redis.cli("info", "memory").splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":", 1)[1])
    raise RuntimeError("INFO memory has no used_memory")


def materialized_rows(settings: Settings, use_case: str) -> int:
    """Rows Feast writes: the distinct entity keys of each view's feature table."""
    store = open_store(settings, use_case)
    total = 0
    for view in store.list_feature_views():
        keys = ", ".join(col.name for col in view.entity_columns)
        table = settings.feature_tables_dir(use_case) / f"{view.name.removesuffix('_fv')}.parquet"
        (count,) = duckdb.connect().execute(  # type: ignore[misc]
            f"SELECT count(*) FROM (SELECT DISTINCT {keys} FROM read_parquet({sql_string(table)}))"
        ).fetchone()
        total += int(count)
    return total


def one_population(users: int, days: int, seed: int, work: Path) -> dict[str, Any]:
    """Build, materialize into a fresh Redis, measure."""
    redis = RedisServer(free_port(), work / f"redis_{users}", work / f"redis_{users}.log")
    redis.start()
    try:
        settings = Settings(home=work / f"home_{users}", profile="redis", redis_url=redis.url,
                            user_hash_secret="capacity-secret")
        spec = load_spec("next_app", settings.feature_repo)
        raw = generate_events(users=users, days=days, seed=seed)
        ingest_frame(raw, spec.event_log, settings.events_dir(spec.name), settings.user_hash_secret)
        compute_feature_tables(settings, spec)
        apply_repo(settings, spec.name)
        before = used_memory(redis)
        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # Feast's progress bars: keep stdout JSON
            materialize(settings, spec.name)
        seconds = time.perf_counter() - started
        after = used_memory(redis)
        rows = materialized_rows(settings, spec.name)
        result = {"users": users, "days": days, "events": len(raw), "rows": rows,
                  "hashes": redis.dbsize(), "used_memory_bytes": after - before,
                  "bytes_per_user": round((after - before) / users),
                  "materialize_s": round(seconds, 1), "rows_per_s": round(rows / seconds)}
        log(json.dumps(result))
        return result
    finally:
        redis.process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[50, 150])
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_capacity_") as folder:
        results = [one_population(n, args.days, args.seed, Path(folder)) for n in args.users]
    report: dict[str, Any] = {"populations": results}
    if len(results) > 1:
        first, last = results[0], results[-1]
        report["bytes_per_extra_user"] = round(
            (last["used_memory_bytes"] - first["used_memory_bytes"]) / (last["users"] - first["users"]))
        report["hashes_per_extra_user"] = round(
            (last["hashes"] - first["hashes"]) / (last["users"] - first["users"]), 1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
