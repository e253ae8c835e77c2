"""What `POST /v1/events` costs per event behind the HTTP layer: check, hash, append.

    python bench/event_intake.py [--batch 100] [--requests 300]

`EventIntake.submit` (what the route runs in a thread) on batches of next_app events against a
private redis-server: the per-event checker, the keyed hash and JSON encoding, and one Lua call
per batch (dedupe + XADD). Beside it, the frame path the endpoint used before (`validate_events`,
`hash_columns`, `encode_events` on a pandas frame), on the same batches without the append.

Prints one JSON object: {"events_per_request", "requests", "submit_us_per_event" (median over
the requests), "check_us_per_event", "encode_us_per_event", "append_us_per_event",
"frame_path_us_per_event", "speedup"}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from harness import PROJECT_ROOT, RedisServer, free_port, log
from streaming import next_app_event

sys.path.insert(0, str(PROJECT_ROOT))  # run as a script from anywhere

from feastflow.event_log import hash_columns
from feastflow.events import encode_events, event_columns, validate_events
from feastflow.settings import FEATURE_REPO
from feastflow.spec import load_spec
from feastflow.stream import RedisEventStream
from serving.events import EventIntake

SECRET = "bench-intake-secret"


def per_event_us(seconds: list[float], batch: int) -> float:
    """The median request's time per event, in microseconds."""
    return round(float(np.median(seconds)) / batch * 1e6, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=100, help="events per request")
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()

    contract = load_spec("next_app", FEATURE_REPO).event_log
    batches = [[next_app_event("intake", request * args.batch + i, request)
                for i in range(args.batch)] for request in range(args.requests)]
    work = Path(tempfile.mkdtemp(prefix="bench_intake_"))
    redis_server = RedisServer(free_port(), work / "redis", work / "redis.log")
    redis_server.start()
    try:
        stream = RedisEventStream(redis_server.url, "bench:intake:events")
        intake = EventIntake(stream, SECRET, contract)
        checker = intake.checker
        intake.submit(batches[0][:1])  # the script loaded, the clock measured
        submit, check, encode, append, frame_path = [], [], [], [], []
        log(f"{args.requests} requests of {args.batch} events")
        for items in batches:
            t0 = time.perf_counter()
            result = intake.submit(items)
            submit.append(time.perf_counter() - t0)
            if result.accepted + result.duplicates != len(items):
                raise RuntimeError(f"events were rejected: {result.rejected[:3]}")
            t0 = time.perf_counter()
            good, _ = checker.check(items)
            t1 = time.perf_counter()
            payloads = [checker.encode(values, SECRET) for _, values in good]
            t2 = time.perf_counter()
            stream.append([(f"again-{event_id}", payload) for event_id, payload in payloads])
            t3 = time.perf_counter()
            check.append(t1 - t0)
            encode.append(t2 - t1)
            append.append(t3 - t2)
            t0 = time.perf_counter()
            clean, _ = validate_events(pd.DataFrame(items, columns=event_columns(contract)),
                                       contract)
            encode_events(hash_columns(clean, SECRET, contract.hashed_columns), contract)
            frame_path.append(time.perf_counter() - t0)
        stream.close()
    finally:
        redis_server.stop()
    ours = per_event_us(submit, args.batch)
    before = per_event_us(frame_path, args.batch)
    print(json.dumps({
        "events_per_request": args.batch, "requests": args.requests,
        "submit_us_per_event": ours, "check_us_per_event": per_event_us(check, args.batch),
        "encode_us_per_event": per_event_us(encode, args.batch),
        "append_us_per_event": per_event_us(append, args.batch),
        "frame_path_us_per_event": before, "speedup": round(before / ours, 1)}))


if __name__ == "__main__":
    main()
