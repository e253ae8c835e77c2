"""The demo's nightly job (`daily_job`: feature tables from the log, then materialize the new
day), before issue 15 and now, on the same world and log:

    python bench/nightly.py [--profiles embedded redis] [--users 150] [--days 56]

- "feast": what the nightly job did before: every feature table recomputed from the whole log
  (`compute_feature_tables(full=True)`), then Feast's own engine (`batch_engine: local`);
- "ours": the incremental features run (pipelines/feature_state.py), then feastflow's engine.

next_app's world of `--users` over `--days` days is ingested, its tables computed and applied,
and the last week materialized (untimed: the state the nightly job finds). Then one more day of
events arrives and the nightly job runs, timed per step. The redis profile writes to a private
redis-server (no persistence), a database per engine. One JSON object per profile on stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Process, free_port, log

from feastflow.settings import FEATURE_REPO, Settings
from feastflow.spec import ModelSpec, load_spec
from feastflow.store import PROFILE_YAML
from feature_repo.next_app.world import generate_events
from pipelines.feast_ops import apply_repo, materialize
from pipelines.features import compute_feature_tables
from pipelines.ingest import ingest_frame

USE_CASE = "next_app"
SECRET = "nightly-bench-secret-0123456789abcdef"
DATABASES = {"feast": 1, "ours": 2}


def engine_repo(root: Path, engine: str, profile: str) -> Path:
    """A copy of the feature repo whose profile file names the engine's batch engine."""
    repo = root / "feature_repo"
    shutil.copytree(FEATURE_REPO, repo, ignore=shutil.ignore_patterns("__pycache__"))
    if engine == "feast":
        path = repo / PROFILE_YAML[profile]
        raw = yaml.safe_load(path.read_text())
        raw["batch_engine"] = "local"
        path.write_text(yaml.safe_dump(raw))
    return repo


def day_start(events: pd.DataFrame, day: int) -> pd.Timestamp:
    return pd.Timestamp(events["timestamp"].min()).floor("D") + pd.Timedelta(days=day)


def build_base(work: Path, history: pd.DataFrame) -> Path:
    """A home with the history ingested and its tables computed (every run starts from a copy)."""
    settings = Settings(home=work / "base", user_hash_secret=SECRET)
    spec = load_spec(USE_CASE, settings.feature_repo)
    ingest_frame(history, spec.event_log, settings.events_dir(USE_CASE), SECRET)
    compute_feature_tables(settings, spec)
    return settings.home


def prepare(work: Path, profile: str, engine: str, redis_port: int | None, base: Path,
            last_day: pd.Timestamp) -> Settings:
    """A copy of the base home for one profile and engine, applied, its last week materialized."""
    root = work / f"{profile}_{engine}"
    root.mkdir()
    redis_url = f"redis://127.0.0.1:{redis_port}/{DATABASES[engine]}" if redis_port else (
        "redis://localhost:6379/0")
    settings = Settings(home=root / "var", feature_repo=engine_repo(root, engine, profile),
                        profile=profile, redis_url=redis_url, user_hash_secret=SECRET)
    for folder in ("events", "features"):
        shutil.copytree(base / folder, settings.home / folder)
    apply_repo(settings, USE_CASE)
    materialize(settings, USE_CASE, start=(last_day - pd.Timedelta(days=6)).to_pydatetime())
    return settings


def night(settings: Settings, spec: ModelSpec, engine: str, day: pd.DataFrame) -> dict[str, Any]:
    """One more day arrives; the nightly job's two steps (as `daily_job` runs them), timed."""
    ingest_frame(day, spec.event_log, settings.events_dir(USE_CASE), SECRET)
    since = pd.Timestamp(day["timestamp"].min()).floor("D")
    started = time.perf_counter()
    compute_feature_tables(settings, spec, full=engine == "feast")
    features_s = time.perf_counter() - started
    started = time.perf_counter()
    materialize(settings, USE_CASE, start=since.to_pydatetime())
    materialize_s = time.perf_counter() - started
    return {"features_s": round(features_s, 2), "materialize_s": round(materialize_s, 2),
            "nightly_s": round(features_s + materialize_s, 2)}


def bench_profile(work: Path, profile: str, base: Path, history: pd.DataFrame,
                  day: pd.DataFrame) -> dict[str, Any]:
    """Both engines' nightly job on one profile."""
    redis: Process | None = None
    port = None
    if profile != "embedded":
        port = free_port()
        redis = Process("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no", "--dir", str(work)],
                        work / f"redis_{profile}.log").start()
        time.sleep(0.5)
    try:
        out: dict[str, Any] = {"profile": profile}
        last_day = pd.Timestamp(history["timestamp"].max()).floor("D")
        for engine in ("feast", "ours"):
            log(f"{profile} {engine}: preparing the home")
            settings = prepare(work, profile, engine, port, base, last_day)
            spec = load_spec(USE_CASE, settings.feature_repo)
            log(f"{profile} {engine}: the nightly job")
            out[engine] = night(settings, spec, engine, day)
            log(f"{profile} {engine}: {out[engine]}")
        out["speedup"] = round(out["feast"]["nightly_s"] / out["ours"]["nightly_s"], 1)
        return out
    finally:
        if redis is not None:
            redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["embedded", "redis"],
                        choices=["embedded", "redis"])
    parser.add_argument("--users", type=int, default=150)
    parser.add_argument("--days", type=int, default=56)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    log(f"generating {args.users} users x {args.days + 1} days")
    events = generate_events(users=args.users, days=args.days + 1, seed=args.seed)
    history = events[events["timestamp"] < day_start(events, args.days)]
    day = events[events["timestamp"] >= day_start(events, args.days)]
    with tempfile.TemporaryDirectory(prefix="bench-nightly-") as tmp:
        work = Path(tmp)
        log(f"ingesting {len(history):,} events, computing the tables")
        base = build_base(work, history)
        for profile in args.profiles:
            result = bench_profile(work, profile, base, history, day)
            print(json.dumps({"profile": profile, "users": args.users, "days": args.days,
                              "events": len(history), "new_day_events": len(day),
                              **result}), flush=True)

if __name__ == "__main__":
    main()
