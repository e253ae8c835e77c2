"""Feast objects of the taxi-ETA use case (its own Feast project, `taxi_eta`). Declarations only:
applying and materializing live in `pipelines/`. Tables are written by the SQL files in
`features/` (one file per table)."""

from datetime import timedelta

from feast import (
    Entity,
    FeatureService,
    FeatureView,
    Field,
    RequestSource,
    ValueType,
)
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64

from feastflow.store import feature_table_source

# Trips are sparse (a route may see one trip a year): a statistic stays valid until superseded.
STATS_TTL = timedelta(days=3650)
# What every table holds of the durations known before the request (see features/*.sql).
STATS = ("trips", "median_seconds", "mean_seconds", "p25_seconds", "p75_seconds",
         "mean_log_seconds")


def _stats(prefix: str) -> list[Field]:
    """The duration statistics every table holds, named `<prefix>_<statistic>`."""
    return [
        Field(name=f"{prefix}_{stat}", dtype=Int64 if stat == "trips" else Float64)
        for stat in STATS
    ]


# --- entities -------------------------------------------------------------------------------
# Community area (1-77) where the trip starts.
pickup_area = Entity(
    name="pickup_area", join_keys=["pickup_community_area"], value_type=ValueType.INT64
)
# Community area (1-77) where the rider asks to go.
dropoff_area = Entity(
    name="dropoff_area", join_keys=["dropoff_community_area"], value_type=ValueType.INT64
)
# Hour of day (0-23, UTC) of the request; the event times are Chicago local time read as UTC.
hour_of_day = Entity(name="hour_of_day", join_keys=["hour_of_day"], value_type=ValueType.INT64)

# --- sources --------------------------------------------------------------------------------
pickup_area_duration_source = feature_table_source(__file__, "pickup_area_duration")
dropoff_area_duration_source = feature_table_source(__file__, "dropoff_area_duration")
route_duration_source = feature_table_source(__file__, "route_duration")
route_hour_duration_source = feature_table_source(__file__, "route_hour_duration")
hour_duration_source = feature_table_source(__file__, "hour_duration")
# Request-time coordinates of the pickup and the asked-for dropoff (may be missing).
trip_request = RequestSource(
    name="trip_request",
    schema=[
        Field(name="pickup_latitude", dtype=Float64),
        Field(name="pickup_longitude", dtype=Float64),
        Field(name="dropoff_latitude", dtype=Float64),
        Field(name="dropoff_longitude", dtype=Float64),
    ],
)

# --- feature views: trailing duration statistics, one row per newly known duration ---------
# Durations of the trips from the pickup area known before the request.
pickup_area_duration_fv = FeatureView(
    name="pickup_area_duration_fv",
    entities=[pickup_area],
    ttl=STATS_TTL,
    schema=_stats("pickup"),
    source=pickup_area_duration_source,
)
# Durations of the trips to the dropoff area known before the request.
dropoff_area_duration_fv = FeatureView(
    name="dropoff_area_duration_fv",
    entities=[dropoff_area],
    ttl=STATS_TTL,
    schema=_stats("dropoff"),
    source=dropoff_area_duration_source,
)
# Durations of the trips of the same route (pickup area, dropoff area).
route_duration_fv = FeatureView(
    name="route_duration_fv",
    entities=[pickup_area, dropoff_area],
    ttl=STATS_TTL,
    schema=_stats("route"),
    source=route_duration_source,
)
# Durations of the trips of the same route at the same hour of day (its median: the baseline).
route_hour_duration_fv = FeatureView(
    name="route_hour_duration_fv",
    entities=[pickup_area, dropoff_area, hour_of_day],
    ttl=STATS_TTL,
    schema=_stats("route_hour"),
    source=route_hour_duration_source,
)
# Durations of all trips at the same hour of day (traffic).
hour_duration_fv = FeatureView(
    name="hour_duration_fv",
    entities=[hour_of_day],
    ttl=STATS_TTL,
    schema=_stats("hour"),
    source=hour_duration_source,
)


# --- on-demand features: computed at request time from the request --------------------------
@on_demand_feature_view(
    sources=[trip_request],
    schema=[Field(name="straight_km", dtype=Float64)],
    mode="python",
)
def trip_distance_odfv(inputs: dict[str, list]) -> dict[str, list]:
    """Great-circle (haversine) distance in km from pickup to dropoff; None if a coordinate is.

    Python mode on lists: Feast calls it on the joined training set, and the prediction server
    calls this same function on the rows it scores. `math` is imported here: Feast rebuilds
    the function from its source, without this module's imports.
    """
    import math

    points = zip(inputs["pickup_latitude"], inputs["pickup_longitude"],
                 inputs["dropoff_latitude"], inputs["dropoff_longitude"], strict=True)
    km = []
    for lat1, lon1, lat2, lon2 in points:
        if None in (lat1, lon1, lat2, lon2) or any(math.isnan(v) for v in (lat1, lon1, lat2, lon2)):
            km.append(None)
            continue
        p1, p2 = math.radians(lat1), math.radians(lat2)
        a = (math.sin((p2 - p1) / 2) ** 2
             + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
        km.append(2 * 6371.0088 * math.asin(math.sqrt(a)))
    return {"straight_km": km}


# --- feature services: one per model version ------------------------------------------------
# Every feature taxi_eta_v1 reads.
taxi_eta_v1 = FeatureService(
    name="taxi_eta_v1",
    features=[
        pickup_area_duration_fv,
        dropoff_area_duration_fv,
        route_duration_fv,
        route_hour_duration_fv,
        hour_duration_fv,
        trip_distance_odfv,
    ],
)
