"""`feastflow serve --workers 2` over real HTTP: one scrape of /metrics counts every worker.

Each worker is its own process with its own counters; the CLI points prometheus_client's
multiprocess folder at an emptied directory, and whichever worker answers /metrics renders the
values of all of them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from pipelines.demo import free_port, stop_process

pytestmark = pytest.mark.redis
REQUESTS = "feastflow_requests"
LABELS = ["use_case", "endpoint", "code"]


def predict_body() -> dict[str, Any]:
    """A next_app request (no model here: the static default answers it)."""
    return {"user_id": "worker-test-user", "timestamp": "2026-03-02T08:05:00Z",
            "context": {"location": "home", "battery": 80, "charging": False, "network": "wifi",
                        "secs_since_prev_unlock": 60.0}, "k": 4}


def scraped_predictions(url: str) -> float:
    """The predict requests /metrics counts, over all codes, on a fresh connection."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               if family.name == REQUESTS for sample in family.samples
               if sample.name == f"{REQUESTS}_total" and sample.labels["endpoint"] == "predict")


def predictions_per_worker(folder: Path) -> Counter[int]:
    """Predict requests counted in each worker's own file (`counter_<pid>.db`)."""
    counts: Counter[int] = Counter()
    for path in folder.glob("counter_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            if f'"{REQUESTS}_total"' in key and '"predict"' in key:
                counts[pid] += int(value)
    return counts


def test_two_workers_one_scrape_counts_every_workers_requests(tmp_path: Path, redis_url: str
                                                              ) -> None:
    home, port = tmp_path / "home", free_port()
    folder = home / "prometheus" / str(port)
    folder.mkdir(parents=True)
    # A previous run's values: the CLI must empty the folder, or they would be counted.
    stale = MmapedDict(str(folder / "counter_999999.db"))
    stale.write_value(mmap_key(REQUESTS, f"{REQUESTS}_total", LABELS, ["next_app", "predict", "200"],
                               "stale"), 1000.0, 0.0)
    stale.close()
    env = {key: value for key, value in os.environ.items()
           if key not in ("PROMETHEUS_MULTIPROC_DIR", "FEASTFLOW_METRICS_MULTIPROC_DIR")}
    env.update({"FEASTFLOW_HOME": str(home), "FEASTFLOW_PROFILE": "redis", "REDIS_URL": redis_url,
                "FEASTFLOW_REGISTRY_POLL_SECONDS": "0", "FEASTFLOW_REQUEST_LOG_SAMPLE": "0",
                "FEASTFLOW_USER_HASH_SECRET": "workers-secret", "FEASTFLOW_USE_CASES": "next_app"})
    server = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", "--workers", "2",
                               "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # two workers start slowly on a loaded machine
        while True:
            assert server.poll() is None, f"the server exited with {server.returncode}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.25)
        assert not (folder / "counter_999999.db").exists()

        def predict(_: int) -> int:
            return httpx.post(f"{url}/v1/predict", json=predict_body(), timeout=30).status_code

        # New connections until both workers have answered some (the kernel picks the worker).
        sent = 0
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            while len(predictions_per_worker(folder)) < 2 and sent < 3000:
                codes = list(pool.map(predict, range(40)))
                assert codes == [200] * 40, Counter(codes)
                sent += 40
        per_worker = predictions_per_worker(folder)
        assert len(per_worker) == 2 and sum(per_worker.values()) == sent, (per_worker, sent)
        # Whichever worker answers the scrape, it counts both workers' requests.
        assert [scraped_predictions(url) for _ in range(6)] == [sent] * 6
    finally:
        stop_process(server, 30)
