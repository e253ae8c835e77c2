"""Real-time features of next_app: the ONE implementation of each.

The batch pipeline folds the event log through these functions to write the tables training
reads (`user_last_app.parquet`, `user_app_recency.parquet`); the stream processor calls the same
functions on every arriving event and pushes the rows to the online store. model.yaml names them.

A window is the user's last events, oldest first, as (unix microseconds, event id, app) tuples,
ordered by time then event id; the processor keeps it, capped at `realtime.window_events`, so
counts over the last hour count at most that many unlocks.
"""

from collections.abc import Sequence

RECENT_APPS = 5  # distinct apps in `recent_apps`, most recent first
SECOND = 1_000_000  # microseconds


def user_last_app(window: Sequence[tuple[int, str, str]]) -> dict[str, object]:
    """The user's last app, last unlock time (Unix s), last distinct apps (newest first), and
    the session so far: unlocks and distinct apps in the 5 min / 1 h up to the last unlock."""
    last_us, _, last_app = window[-1]
    newest_first = [app for _, _, app in reversed(window)]
    last_hour = [app for us, _, app in window if us > last_us - 3600 * SECOND]
    return {
        "last_app": last_app,
        "last_unlock_unix": last_us // SECOND,
        "recent_apps": list(dict.fromkeys(newest_first))[:RECENT_APPS],
        "unlocks_5m": sum(1 for us, _, _ in window if us > last_us - 300 * SECOND),
        "unlocks_1h": len(last_hour),
        "distinct_apps_1h": len(set(last_hour)),
    }


def user_app_recency(last_opened_us: int) -> dict[str, object]:
    """When the user last opened the app (Unix s)."""
    return {"last_opened_unix": last_opened_us // SECOND}
