"""Holdout metrics: top-k hit rates of the model and of the baselines a user would try first."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd

from feastflow.ranking import LABEL, REQUEST_ID
from feastflow.spec import ModelSpec

BASELINE_WINDOW_DAYS = 28


def hit_rates(scored: pd.DataFrame, n_requests: int, ks: tuple[int, ...] = (1, 4)
              ) -> dict[str, float]:
    """top-k hit rate over all requests (a request whose answer is not a candidate is a miss)."""
    if n_requests == 0:
        raise ValueError("no holdout requests to evaluate")
    ranked = scored.sort_values([REQUEST_ID, "score"], ascending=[True, False], kind="stable")
    position = ranked.groupby(REQUEST_ID).cumcount() + 1
    hits = ranked.loc[ranked[LABEL] == 1, REQUEST_ID].to_frame().assign(
        position=position[ranked[LABEL] == 1]
    )
    out = {f"top{k}": float((hits["position"] <= k).sum() / n_requests) for k in ks}
    out["candidate_recall"] = float(hits[REQUEST_ID].nunique() / n_requests)
    return out


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
    """top1 and topk hit rates of each baseline on the same requests as the model."""
    actual = requests[spec.event_log.item].to_numpy()
    out = {}
    for name, suggestions in baseline_rankings(con, requests, spec, k).items():
        lists = suggestions.to_numpy()
        top1 = np.mean([len(s) > 0 and s[0] == a for s, a in zip(lists, actual, strict=True)])
        topk = np.mean([a in s[:k] for s, a in zip(lists, actual, strict=True)])
        out[name] = {"top1": float(top1), f"top{k}": float(topk)}
    return out
