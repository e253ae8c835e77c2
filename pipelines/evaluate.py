"""Ranking baselines a user would try first, from the event log strictly before each request:
the entity's most recent distinct items, its most frequent over 28 days, its most frequent at this
hour of day (topped up with the most frequent)."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd

from feastflow.ranking import REQUEST_ID
from feastflow.spec import ModelSpec
from pipelines.metrics import list_metrics

BASELINE_WINDOW_DAYS = 28
_LIST_OF_KIND = {"most_recent": "mru", "most_frequent": "mfu", "most_frequent_at_hour": "mfu_hour"}


def baseline_rankings(con: duckdb.DuckDBPyConnection, requests: pd.DataFrame, spec: ModelSpec,
                      k: int) -> dict[str, pd.Series]:
    """For each request, the k items each baseline suggests, from history strictly before it.

    mru: most recently used distinct items; mfu: most used over 28 days; mfu_hour: most used at
    this hour of day over 28 days, topped up with mfu when fewer than k.
    """
    log = spec.event_log
    con.register("requests_df", requests[[REQUEST_ID, log.entity, log.timestamp]])
    ranked = con.execute(
        f"""
        WITH hist AS (
            SELECT r.{REQUEST_ID} AS request_id, e.{log.item} AS item,
                max(e.{log.timestamp}) AS last_seen, count(*) AS n,
                count(*) FILTER (WHERE hour(e.{log.timestamp}) = hour(r.{log.timestamp})) AS n_hour
            FROM requests_df r JOIN events e
              ON e.{log.entity} = r.{log.entity}
             AND e.{log.timestamp} < r.{log.timestamp}
             AND e.{log.timestamp} >= r.{log.timestamp} - INTERVAL {BASELINE_WINDOW_DAYS} DAY
            GROUP BY ALL
        )
        SELECT request_id,
            list(item ORDER BY last_seen DESC)[1:{k}] AS mru,
            list(item ORDER BY n DESC, last_seen DESC)[1:{k}] AS mfu,
            list(item ORDER BY n_hour DESC, n DESC, last_seen DESC)[1:{k}] AS mfu_hour
        FROM hist GROUP BY request_id
        """
    ).df()
    con.unregister("requests_df")
    ranked = requests[[REQUEST_ID]].merge(ranked, on=REQUEST_ID, how="left")
    return {
        name: ranked[name].map(lambda v: list(v) if isinstance(v, list | np.ndarray) else [])
        for name in ("mru", "mfu", "mfu_hour")
    }


def baseline_metrics(con: duckdb.DuckDBPyConnection, requests: pd.DataFrame, spec: ModelSpec,
                     k: int = 4) -> dict[str, dict[str, float]]:
    """The ranking metrics of each declared baseline on the same requests as the model."""
    actual = requests[spec.event_log.label_column].tolist()
    lists = baseline_rankings(con, requests, spec, k)
    return {name: list_metrics(lists[_LIST_OF_KIND[baseline.kind]].tolist(), actual, (1, k))
            for name, baseline in spec.baselines.items()}
