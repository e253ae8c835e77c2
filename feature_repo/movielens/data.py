"""The raw events of the MovieLens use case: GroupLens `ml-latest-small`, one event per rating.

Source: `movielens_latest_small/ratings.csv` (100,836 ratings of 9,724 movies by 610 users,
1996-03-29 .. 2018-09-24; provenance and licence in that folder's SOURCE.md). Ids are kept as
published (the data set is already anonymous), so that anyone can recompute the figures from the
predictions CSV by `userId` and `movieId`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

SOURCE = Path("movielens_latest_small") / "ratings.csv"
COLUMNS = ["event_id", "userId", "movieId", "rating", "timestamp"]


def raw_events(data_dir: Path) -> pd.DataFrame:
    """One row per rating, sorted by (timestamp, userId, movieId); event_id "u<user>-m<movie>"
    (a user rates a movie once in this data set)."""
    ratings = pd.read_csv(Path(data_dir) / SOURCE)
    ratings["event_id"] = ("u" + ratings["userId"].astype(str) + "-m"
                           + ratings["movieId"].astype(str)).astype("string")
    ratings["timestamp"] = pd.to_datetime(ratings["timestamp"], unit="s", utc=True).astype(
        "datetime64[us, UTC]")
    ratings = ratings.astype({"userId": "int64", "movieId": "int64", "rating": "float64"})
    ratings = ratings.sort_values(["timestamp", "userId", "movieId"], kind="stable")
    return ratings[COLUMNS].reset_index(drop=True)
