"""The raw events of the taxi-ETA use case, from a sample of real Chicago taxi trips.

Source: `chicago_taxi_trips/trips.csv.gz`, 15,002 trips of the City of Chicago's public "Taxi
Trips" data set (2013-2016) as shipped with TensorFlow TFX's Chicago taxi example (Apache 2.0;
provenance in that folder's SOURCE.md). One event is one trip, as known when the rider books:
the pickup and dropoff community areas and coordinates, the time and the company, with the
trip's duration as label. What is measured during the trip (fare, tips, payment type, miles)
is left out. Trips without a duration (0 or empty) or without both community areas are dropped
(14,053 remain); the few implausible durations are left for the contract's max to reject.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

SOURCE = Path("chicago_taxi_trips") / "trips.csv.gz"
COLUMNS = [
    "event_id",
    "pickup_community_area",
    "dropoff_community_area",
    "timestamp",
    "pickup_latitude",
    "pickup_longitude",
    "dropoff_latitude",
    "dropoff_longitude",
    "company",
    "trip_seconds",
]


def raw_events(data_dir: Path) -> pd.DataFrame:
    """One row per trip with a duration and both areas, sorted by pickup time (deterministic).

    `data_dir` holds `chicago_taxi_trips/`. `event_id` is "trip-<row number in the file>"
    (1-based, header excluded). `trip_start_timestamp` holds Chicago local time written as
    Unix seconds; it is read as UTC, so the UTC hour is the local hour of the pickup.
    """
    trips = pd.read_csv(Path(data_dir) / SOURCE)
    trips["event_id"] = "trip-" + pd.Series(range(1, len(trips) + 1), index=trips.index).astype(str)
    keep = (
        (trips["trip_seconds"] > 0)
        & trips["pickup_community_area"].notna()
        & trips["dropoff_community_area"].notna()
    )
    events = trips.loc[keep].copy()
    events["timestamp"] = pd.to_datetime(
        events["trip_start_timestamp"], unit="s", utc=True
    ).astype("datetime64[us, UTC]")
    events = events.astype(
        {
            "pickup_community_area": "int64",
            "dropoff_community_area": "int64",
            "pickup_latitude": "float64",
            "pickup_longitude": "float64",
            "dropoff_latitude": "float64",
            "dropoff_longitude": "float64",
            "event_id": "string",
            "company": "string",
            "trip_seconds": "float64",
        }
    )
    events = events.sort_values(["timestamp", "event_id"], kind="stable")
    return events[COLUMNS].reset_index(drop=True)
