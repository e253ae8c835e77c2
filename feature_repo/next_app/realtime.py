"""Real-time features of next_app: the ONE implementation of each.

The batch pipeline folds the event log through these functions to write the tables training
reads (`user_last_app.parquet`, `user_app_recency.parquet`); the stream processor calls the same
functions on every arriving event and pushes the rows to the online store. model.yaml names them.

A window is the user's last events, oldest first, as (unix microseconds, event id, app) tuples,
ordered by time then event id; the processor keeps it, capped at `realtime.window_events`.
"""

from collections.abc import Sequence

RECENT_APPS = 5  # distinct apps in `recent_apps`, most recent first


def user_last_app(window: Sequence[tuple[int, str, str]]) -> dict[str, object]:
    """The user's last app, last unlock time (Unix s) and last distinct apps, newest first."""
    last_us, _, last_app = window[-1]
    newest_first = [app for _, _, app in reversed(window)]
    return {
        "last_app": last_app,
        "last_unlock_unix": last_us // 1_000_000,
        "recent_apps": list(dict.fromkeys(newest_first))[:RECENT_APPS],
    }


def user_app_recency(last_opened_us: int) -> dict[str, object]:
    """When the user last opened the app (Unix s)."""
    return {"last_opened_unix": last_opened_us // 1_000_000}
