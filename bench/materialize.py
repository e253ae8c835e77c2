"""Materialization benchmark: Feast's local engine against feastflow's engine, into a real Redis.

    python bench/materialize.py [--entities 200000 2000000] [--features 20]
    python bench/materialize.py --ours-only --entities 20000000

The parent starts a private redis-server (no persistence) on a free port, writes one Parquet
table per size (one row per entity: an int64 key, `--features` float64 features, event and
created times; written in chunks, so the parent stays small) and applies one feature view to a
SQLite registry. Each engine then runs `FeatureStore.materialize` over the whole table in a fresh
process, into its own Redis database; the child reports its seconds and its peak RSS. The parent
checks that both databases hold the same keys with byte-identical hashes (all keys up to 300 k,
a random sample of 20 k beyond), and while each engine runs it reads random keys from Redis
(HMGET of one view, one at a time over its own connection) to report the read latency p99 under
the write load next to the idle figure. An engine whose RSS passes --memory-cap-gb (18 of the
machine's 24) is killed and reported as `feast_failed` (Feast's #6307) rather than swapping the
machine to a halt. One JSON object per size on stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Process, free_port, log

START = datetime(2026, 1, 1, tzinfo=UTC)
CHUNK = 1_000_000  # rows generated and written at a time
ENGINES = {"feast": "local", "ours": {"type": "feastflow.engine.FeastflowComputeEngine"}}
DATABASES = {"feast": 1, "ours": 2}
FULL_COMPARE = 300_000


def write_table(path: Path, entities: int, features: int, seed: int) -> None:
    """One row per entity, in chunks: entity_id, f0..fN (float64), event and created times."""
    rng = np.random.default_rng(seed)
    writer = None
    for start in range(0, entities, CHUNK):
        n = min(CHUNK, entities - start)
        seconds = rng.integers(0, 30 * 86_400, n)
        event = (np.datetime64("2026-01-01T00:00:00", "us") + seconds * 1_000_000
                 + rng.integers(0, 1_000_000, n))
        columns = {"entity_id": pa.array(np.arange(start, start + n, dtype=np.int64))}
        for i in range(features):
            columns[f"f{i}"] = pa.array(rng.normal(size=n))
        columns["event_timestamp"] = pa.array(event, pa.timestamp("us", tz="UTC"))
        columns["created_timestamp"] = pa.array(event + 1_000_000, pa.timestamp("us", tz="UTC"))
        table = pa.table(columns)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    if writer is not None:
        writer.close()


def open_store(folder: Path, features: int, redis_port: int, engine: str):  # -> FeatureStore
    """A store over the folder's registry and table, writing to the engine's Redis database."""
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    return FeatureStore(config=RepoConfig(
        project="bench", provider="local", repo_path=str(folder), entity_key_serialization_version=3,
        registry={"registry_type": "sql", "path": f"sqlite:///{folder / 'registry.db'}"},
        offline_store={"type": "feastflow.offline_store.AsofDuckDBOfflineStore"},
        online_store={"type": "redis",
                      "connection_string": f"127.0.0.1:{redis_port},db={DATABASES[engine]}"},
        batch_engine=ENGINES[engine],
    ))


def apply_view(folder: Path, features: int, redis_port: int) -> None:
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64

    entity = Entity(name="entity", join_keys=["entity_id"], value_type=ValueType.INT64)
    source = FileSource(name="table_source", path=str(folder / "table.parquet"),
                        timestamp_field="event_timestamp",
                        created_timestamp_column="created_timestamp")
    view = FeatureView(name="bench_view", entities=[entity], ttl=timedelta(days=365), source=source,
                       schema=[Field(name="entity_id", dtype=Int64)]
                       + [Field(name=f"f{i}", dtype=Float64) for i in range(features)])
    open_store(folder, features, redis_port, "feast").apply([entity, view])


def run_child(folder: Path, features: int, redis_port: int, engine: str) -> dict[str, float]:
    """Materialize the whole table with one engine; seconds and this process's peak RSS."""
    store = open_store(folder, features, redis_port, engine)
    store.list_feature_views()  # connect to the registry before the clock starts
    start = time.perf_counter()
    store.materialize(start_date=START - timedelta(days=1), end_date=START + timedelta(days=31))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries that
    across fork and exec, so a child reports at least its parent's RSS when it was started."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


class ReadProbe:
    """Reads random keys one at a time while an engine runs: the latency of each HMGET."""

    def __init__(self, redis_port: int, db: int, features: int, entities: int) -> None:
        import redis
        from feast.infra.online_stores.helpers import _mmh3
        from feast.value_type import ValueType

        from feastflow.online_writer import WriteLayout, encode_keys

        self.client = redis.Redis(port=redis_port, db=db)
        layout = WriteLayout("bench_view", ("entity_id",), (ValueType.INT64,),
                             tuple(f"f{i}" for i in range(features)), ())
        ids = np.random.default_rng(7).integers(0, entities, 2_000)
        self.keys = encode_keys(layout, [pa.array(ids)], "bench").to_pylist()
        self.fields = [_mmh3(f"bench_view:f{i}") for i in range(features)] + [b"_ts:bench_view"]
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set() and len(self.latencies) < 200_000:
            key = self.keys[i % len(self.keys)]
            started = time.perf_counter()
            self.client.hmget(key, self.fields)
            self.latencies.append((time.perf_counter() - started) * 1000)
            i += 1
            time.sleep(0.001)

    def __enter__(self) -> ReadProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def p99_ms(self) -> float | None:
        return round(float(np.percentile(self.latencies, 99)), 3) if self.latencies else None


def run_engine(folder: Path, features: int, entities: int, redis_port: int, engine: str,
               memory_cap_mb: int) -> dict[str, Any]:
    """One engine in a fresh interpreter, probed by reads; its last stdout line is its report."""
    options = [f"--option={k}={json.dumps(v)}" for k, v in ENGINES["ours"].items()  # type: ignore[union-attr]
               if k != "type"]
    cmd = [sys.executable, __file__, "--child", engine, "--data", str(folder),
           "--features", str(features), "--redis-port", str(redis_port), *options]
    with ReadProbe(redis_port, DATABASES[engine], features, entities) as probe, \
            tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        peak_mb = watch_memory(child, memory_cap_mb)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if peak_mb > memory_cap_mb:
        # Feast's #6307: the local engine holds the whole range in memory; report, don't swap
        return {"seconds": None, "peak_rss_mb": peak_mb, "read_p99_ms": probe.p99_ms(),
                "failed": f"killed at {peak_mb:.0f} MB RSS (cap {memory_cap_mb} MB) "
                          f"after {seconds:.0f} s"}
    if child.returncode:
        raise RuntimeError(f"the {engine} engine failed:\n{stderr[-3000:]}")
    report = json.loads(stdout.strip().splitlines()[-1])
    report["read_p99_ms"] = probe.p99_ms()
    return report


def watch_memory(child: subprocess.Popen[str], cap_mb: int) -> float:
    """Wait for the child; kill it once its RSS passes cap_mb. Its peak RSS seen (MB)."""
    peak = 0.0
    status = Path(f"/proc/{child.pid}/status")
    while child.poll() is None:
        try:
            rss_kb = next(int(line.split()[1]) for line in status.read_text().splitlines()
                          if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            rss_kb = 0
        peak = max(peak, rss_kb / 1024)
        if peak > cap_mb:
            child.kill()
            child.wait()
            break
        time.sleep(0.2)
    return peak


def idle_p99(redis_port: int, features: int, entities: int, seconds: float = 5.0) -> float | None:
    with ReadProbe(redis_port, DATABASES["ours"], features, entities) as probe:
        time.sleep(seconds)
    return probe.p99_ms()


def identical(redis_port: int, entities: int) -> bool:
    """Both databases hold the same keys with the same hashes (all, or a sample when large)."""
    import redis

    clients = [redis.Redis(port=redis_port, db=DATABASES[e]) for e in ("feast", "ours")]
    if clients[0].dbsize() != clients[1].dbsize():
        return False
    keys: list[bytes] = []
    for key in clients[0].scan_iter(count=10_000):
        keys.append(key)
        if len(keys) >= FULL_COMPARE:
            break
    if entities > FULL_COMPARE:
        keys = [keys[i] for i in np.random.default_rng(3).choice(len(keys), 20_000, replace=False)]
    for start in range(0, len(keys), 5_000):
        chunk = keys[start:start + 5_000]
        answers = []
        for client in clients:
            pipe = client.pipeline(transaction=False)
            for key in chunk:
                pipe.hgetall(key)
            answers.append(pipe.execute())
        if answers[0] != answers[1]:
            return False
    return True


def start_redis(work: Path) -> tuple[Process, int]:
    import redis

    port = free_port()
    server = Process("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", str(work)],
                     work / "redis.log").start()
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return server, port
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError(f"redis-server did not start:\n{server.tail()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, nargs="+", default=[200_000, 2_000_000])
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--ours-only", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--memory-cap-gb", type=int, default=18,
                        help="kill an engine whose RSS passes this and report it (the machine has 24)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=JSON",
                        help="an option of our engine, e.g. --option memory_limit='\"256MB\"'")
    parser.add_argument("--child", choices=sorted(ENGINES))
    parser.add_argument("--data", type=Path)
    parser.add_argument("--redis-port", type=int)
    args = parser.parse_args()
    for option in args.option:
        key, value = option.split("=", 1)
        ENGINES["ours"][key] = json.loads(value)  # type: ignore[index]
    if args.child:
        print(json.dumps(run_child(args.data, args.features, args.redis_port, args.child)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-materialize-") as tmp:
        work = Path(tmp)
        server, port = start_redis(work)
        try:
            for entities in args.entities:
                print(json.dumps(bench_size(work, port, entities, args.features, args.ours_only,
                                            args.seed, args.memory_cap_gb * 1024)), flush=True)
        finally:
            server.stop()


def bench_size(work: Path, port: int, entities: int, features: int, ours_only: bool,
               seed: int, memory_cap_mb: int) -> dict[str, object]:
    import redis

    folder = work / f"size_{entities}"
    folder.mkdir()
    log(f"{entities:,} entities x {features} features: writing the table")
    write_table(folder / "table.parquet", entities, features, seed)
    apply_view(folder, features, port)
    for db in DATABASES.values():
        redis.Redis(port=port, db=db).flushdb()
    idle = idle_p99(port, features, entities)
    engines = ["ours"] if ours_only else ["feast", "ours"]
    runs = {}
    for engine in engines:
        log(f"{engine}: materializing")
        runs[engine] = run_engine(folder, features, entities, port, engine, memory_cap_mb)
        log(f"{engine}: {runs[engine]}")
    ours = runs["ours"]
    if ours_only:
        return {"rows": entities, "features": features, "ours_s": round(ours["seconds"], 2),
                "rows_per_s": round(entities / ours["seconds"]),
                "ours_peak_rss_mb": round(ours["peak_rss_mb"]),
                "read_p99_ms": {"idle": idle, "during_ours": ours["read_p99_ms"]}}
    feast = runs["feast"]
    failed = "failed" in feast
    return {"entities": entities, "features": features,
            "feast_s": None if failed else round(feast["seconds"], 2),
            "ours_s": round(ours["seconds"], 2),
            "speedup": None if failed else round(feast["seconds"] / ours["seconds"], 1),
            "feast_peak_rss_mb": round(feast["peak_rss_mb"]),
            "ours_peak_rss_mb": round(ours["peak_rss_mb"]),
            **({"feast_failed": feast["failed"]} if failed else {}),
            "identical": None if failed else identical(port, entities),
            "read_p99_ms": {"idle": idle, "during_feast": feast["read_p99_ms"],
                            "during_ours": ours["read_p99_ms"]}}


if __name__ == "__main__":
    main()
