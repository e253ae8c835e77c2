"""Batch precomputation: the next 24 hours of predictions for the most active users.

The output (`<home>/precomputed/<use_case>/bundles.json`) is what the server answers
`GET /v1/users/{id}/bundle` with for those users, and its `user_hour` fallback when the online
store or the model fail. It is scored by the serving code itself (`feastflow.scoring`) against
the online store, so it is exactly what the server would have answered at each hour.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from feastflow.online import open_reader
from feastflow.scoring import FeaturePlan, Ranker, hour_of_day, hourly_requests
from feastflow.settings import Settings
from feastflow.spec import ModelSpec
from feastflow.store import open_store
from pipelines.features import event_log_connection
from registry import lifecycle

BATCH = 240  # requests per scoring call: 10 users x 24 hours


@dataclass(frozen=True)
class PrecomputeResult:
    """What was written: where, for which model version, how many users, from which hour."""

    path: Path
    model_version: str
    users: int
    known_users: int
    start: datetime


def most_active_users(settings: Settings, spec: ModelSpec, top: int, days: int = 7) -> list[str]:
    """The `top` entities with the most events in the log's last `days` days, busiest first."""
    log = spec.event_log
    con = event_log_connection(settings.events_dir(spec.name), log.timestamp)
    rows = con.execute(
        f'SELECT "{log.entity}" FROM events WHERE "{log.timestamp}" > '
        f'(SELECT max("{log.timestamp}") FROM events) - INTERVAL {int(days)} DAY '
        f'GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT {int(top)}'
    ).fetchall()
    return [r[0] for r in rows]


def precompute(settings: Settings, spec: ModelSpec, top: int, start: datetime | None, k: int,
               progress: Callable[[int, int], None] | None = None) -> PrecomputeResult:
    """Score 24 hourly requests for each of the `top` busiest users with the champion."""
    if spec.per_event:
        raise ValueError(f"{spec.name} predicts per event ({spec.task}): bundles of ranked "
                         "items per hour apply to ranking use cases")
    start = (start or datetime.now(UTC)).astimezone(UTC).replace(minute=0, second=0,
                                                                 microsecond=0)
    users = most_active_users(settings, spec, top)
    registry = lifecycle.Registry(settings.tracking_uri, settings.artifacts_uri)
    model = registry.load_by_alias(spec.registered_model_name, lifecycle.CHAMPION)
    store = open_store(settings, spec.name)
    ranker = Ranker(spec, FeaturePlan.from_store(store, spec), model.booster)
    reader = open_reader(settings, store)
    start_us = int(start.timestamp()) * 1_000_000
    context = spec.event_log.example_context
    requests = [r for user in users for r in hourly_requests(user, start_us, context)]

    async def score_all() -> list[list[str]]:
        items: list[list[str]] = []
        try:
            for i in range(0, len(requests), BATCH):
                scored = await ranker.score(requests[i:i + BATCH], reader, k)
                items += [s.items if s.known else [] for s in scored]
                if progress:
                    progress(min(i + BATCH, len(requests)), len(requests))
        finally:
            await reader.close()
        return items

    items = asyncio.run(score_all())
    bundles = {user: items[u * 24:(u + 1) * 24] for u, user in enumerate(users)}
    known = {user: hours for user, hours in bundles.items() if any(hours)}
    path = settings.home / "precomputed" / spec.name / "bundles.json"
    write_json_atomically(path, {
        "model_version": model.version, "generated_at": datetime.now(UTC).isoformat(),
        "start": start.isoformat(),
        "first_hour": hour_of_day(start_us),
        "k": k, "context": context, "users": known,
    })
    return PrecomputeResult(path, model.version, len(users), len(known), start)


def write_json_atomically(path: Path, content: object) -> None:
    """Write JSON to a temporary file beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as f:
            json.dump(content, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
