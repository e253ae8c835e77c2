"""Feast objects of the next-app use case. Declarations only: applying and materializing live in
`pipelines/`. Tables are written by the SQL files in `features/` (one file per table)."""

from datetime import timedelta

from feast import (
    Entity,
    FeatureService,
    FeatureView,
    Field,
    PushSource,
    RequestSource,
    ValueType,
)
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Array, Bool, Float64, Int64, String

from feastflow.store import feature_table_source

DAILY = timedelta(days=1)  # daily snapshots: a row older than a day is superseded or gone
EVENT_TTL = timedelta(days=90)  # event-level facts (last time an app was used) age slowly


# --- entities -------------------------------------------------------------------------------
# The phone's owner, as a keyed hash of the raw user id.
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
# An app, by its package-like name.
app = Entity(name="app", join_keys=["app"], value_type=ValueType.STRING)
# The app used in the previous unlock (transition features).
prev_app = Entity(name="prev_app", join_keys=["prev_app"], value_type=ValueType.STRING)
# Hour of day (0-23, UTC) of the unlock.
hour_of_day = Entity(name="hour_of_day", join_keys=["hour_of_day"], value_type=ValueType.INT64)
# 1 on Saturday and Sunday, else 0.
day_type = Entity(name="day_type", join_keys=["is_weekend"], value_type=ValueType.INT64)
# Coarse location: home, work, commute, other.
location = Entity(name="location", join_keys=["location"], value_type=ValueType.STRING)

# --- sources --------------------------------------------------------------------------------
user_app_usage_source = feature_table_source(__file__, "user_app_usage")
user_app_hour_source = feature_table_source(__file__, "user_app_hour")
user_app_daytype_source = feature_table_source(__file__, "user_app_daytype")
user_app_location_source = feature_table_source(__file__, "user_app_location")
app_transition_source = feature_table_source(__file__, "app_transition")
app_hour_popularity_source = feature_table_source(__file__, "app_hour_popularity")
user_profile_source = feature_table_source(__file__, "user_profile")
hour_popularity_source = feature_table_source(__file__, "hour_popularity")
user_app_recency_source = feature_table_source(__file__, "user_app_recency")
user_last_app_source = feature_table_source(__file__, "user_last_app")
# Real-time updates of the event-level views (the stream processor pushes here).
user_last_app_push = PushSource(name="user_last_app_push", batch_source=user_last_app_source)
user_app_recency_push = PushSource(
    name="user_app_recency_push", batch_source=user_app_recency_source
)
# Request-time context sent with each prediction (and taken from each event in training).
unlock_context = RequestSource(
    name="unlock_context",
    schema=[
        Field(name="request_ts_unix", dtype=Int64),
        Field(name="battery", dtype=Int64),
        Field(name="charging", dtype=Bool),
        Field(name="network", dtype=String),
    ],
)

# --- feature views: daily snapshots over the previous 1/7/28 days ---------------------------
# How often the user opened the app, and its share of all the user's opens.
user_app_usage_fv = FeatureView(
    name="user_app_usage_fv",
    entities=[user, app],
    ttl=DAILY,
    schema=[
        Field(name="opens_1d", dtype=Int64),
        Field(name="opens_7d", dtype=Int64),
        Field(name="opens_28d", dtype=Int64),
        Field(name="app_share_7d", dtype=Float64),
        Field(name="app_share_28d", dtype=Float64),
    ],
    source=user_app_usage_source,
)
# The app's share of the user's opens at this hour of day, exactly and within +-1 hour.
user_app_hour_fv = FeatureView(
    name="user_app_hour_fv",
    entities=[user, app, hour_of_day],
    ttl=DAILY,
    schema=[
        Field(name="opens_at_hour_28d", dtype=Int64),
        Field(name="app_share_at_hour_28d", dtype=Float64),
        Field(name="app_share_near_hour_28d", dtype=Float64),
    ],
    source=user_app_hour_source,
)
# The app's share of the user's opens on this kind of day (weekday or weekend).
user_app_daytype_fv = FeatureView(
    name="user_app_daytype_fv",
    entities=[user, app, day_type],
    ttl=DAILY,
    schema=[Field(name="app_share_daytype_28d", dtype=Float64)],
    source=user_app_daytype_source,
)
# The app's share of the user's opens at this location.
user_app_location_fv = FeatureView(
    name="user_app_location_fv",
    entities=[user, app, location],
    ttl=DAILY,
    schema=[Field(name="app_share_at_location_28d", dtype=Float64)],
    source=user_app_location_source,
)
# How often the user opened `app` right after `prev_app`, and that share of prev_app's followers.
app_transition_fv = FeatureView(
    name="app_transition_fv",
    entities=[user, prev_app, app],
    ttl=DAILY,
    schema=[
        Field(name="transitions_28d", dtype=Int64),
        Field(name="transition_share_28d", dtype=Float64),
    ],
    source=app_transition_source,
)
# The app's share of everyone's opens at this hour of day.
app_hour_popularity_fv = FeatureView(
    name="app_hour_popularity_fv",
    entities=[app, hour_of_day],
    ttl=DAILY,
    schema=[Field(name="global_share_at_hour_28d", dtype=Float64)],
    source=app_hour_popularity_source,
)
# The user's activity and the apps they use most (candidate list).
user_profile_fv = FeatureView(
    name="user_profile_fv",
    entities=[user],
    ttl=DAILY,
    schema=[
        Field(name="unlocks_7d", dtype=Int64),
        Field(name="distinct_apps_28d", dtype=Int64),
        Field(name="avg_session_seconds_7d", dtype=Float64),
        Field(name="top_apps_28d", dtype=Array(String)),
    ],
    source=user_profile_source,
)

# Everyone's most opened apps at this hour of day, most first (candidates for anyone).
hour_popularity_fv = FeatureView(
    name="hour_popularity_fv",
    entities=[hour_of_day],
    ttl=DAILY,
    schema=[Field(name="popular_apps_at_hour", dtype=Array(String))],
    source=hour_popularity_source,
)

# --- feature views: event-level, updated at every unlock (batch and push) -------------------
# When the user last opened the app (Unix seconds).
user_app_recency_fv = FeatureView(
    name="user_app_recency_fv",
    entities=[user, app],
    ttl=EVENT_TTL,
    schema=[Field(name="last_opened_unix", dtype=Int64)],
    source=user_app_recency_push,
)
# The user's last app, last unlock time and the last distinct apps, most recent first; the
# session up to the last unlock: unlocks in the 5 minutes and the hour before it (that unlock
# included, at most the 20 the stream keeps) and distinct apps in that hour.
user_last_app_fv = FeatureView(
    name="user_last_app_fv",
    entities=[user],
    ttl=EVENT_TTL,
    schema=[
        Field(name="last_app", dtype=String),
        Field(name="last_unlock_unix", dtype=Int64),
        Field(name="recent_apps", dtype=Array(String)),
        Field(name="unlocks_5m", dtype=Int64),
        Field(name="unlocks_1h", dtype=Int64),
        Field(name="distinct_apps_1h", dtype=Int64),
    ],
    source=user_last_app_push,
)


# --- on-demand features: computed at request time from the context and stored features -----
@on_demand_feature_view(
    sources=[unlock_context, user_app_recency_fv, user_last_app_fv],
    schema=[
        Field(name="minutes_since_app_last_opened", dtype=Float64),
        Field(name="minutes_since_last_unlock", dtype=Float64),
        Field(name="day_of_week", dtype=Int64),
        Field(name="low_battery", dtype=Int64),
        Field(name="on_cellular", dtype=Int64),
    ],
    mode="python",
)
def unlock_context_odfv(inputs: dict[str, list]) -> dict[str, list]:
    """Recency relative to the unlock, day of week and device state flags.

    Python mode on lists (a missing input is None): Feast calls it on the joined training set,
    and the prediction server calls this same function on the rows it scores.
    """
    now = inputs["request_ts_unix"]

    def minutes_since(then: list) -> list:
        return [None if n is None or t is None else (n - t) / 60 for n, t in zip(now, then, strict=True)]

    return {
        "minutes_since_app_last_opened": minutes_since(inputs["last_opened_unix"]),
        "minutes_since_last_unlock": minutes_since(inputs["last_unlock_unix"]),
        "day_of_week": [None if n is None else (n // 86400 + 3) % 7 for n in now],
        "low_battery": [None if b is None else int(b < 20) for b in inputs["battery"]],
        "on_cellular": [int(network == "cellular") for network in inputs["network"]],
    }


# --- feature services: one per model version ------------------------------------------------
# Stage 1 of next_app_v1: what candidate generation needs about the user.
next_app_user_v1 = FeatureService(
    name="next_app_user_v1",
    features=[
        user_last_app_fv[["last_app", "recent_apps"]],
        user_profile_fv[["top_apps_28d"]],
        hour_popularity_fv,
    ],
)
# Stage 2 of next_app_v1: every feature the ranker scores a (user, app, context) row with.
next_app_ranker_v1 = FeatureService(
    name="next_app_ranker_v1",
    features=[
        user_app_usage_fv,
        user_app_hour_fv,
        user_app_daytype_fv,
        user_app_location_fv,
        app_transition_fv,
        app_hour_popularity_fv,
        user_profile_fv[["unlocks_7d", "distinct_apps_28d", "avg_session_seconds_7d"]],
        user_last_app_fv[["unlocks_5m", "unlocks_1h", "distinct_apps_1h"]],
        unlock_context_odfv,
    ],
)
