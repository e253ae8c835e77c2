"""Real-time features of movielens: the ONE implementation of each.

The batch pipeline folds the event log through this function (`user_recent.parquet`); the stream
processor calls it at every rating posted to `POST /v1/events` and pushes the row online, where
the server reads it with the user's batch history (`user_history_fv`): a movie just rated is
dropped from the next answer and starts the next co-visitation and embedding lookups.

A window is the user's last ratings, oldest first, as (unix microseconds, event id, movie id as
text) tuples; the processor keeps `realtime.window_events` of them.
"""

from collections.abc import Sequence

SECOND = 1_000_000  # microseconds


def user_recent_ratings(window: Sequence[tuple[int, str, str]]) -> dict[str, object]:
    """The user's last rated movies and when (Unix s), oldest first, and the last rating time."""
    return {
        "recent_movies": [int(movie) for _, _, movie in window if movie],  # (a probe: none)
        "recent_rated_unix": [us // SECOND for us, _, _ in window],
        "last_rating_unix": window[-1][0] // SECOND,
    }


def user_activity_now(features: dict[str, object], genres_of: object) -> dict[str, object]:
    """`user_activity_fv`'s counts with the ratings the stream pushed after its row (the server
    reads the batch row and `user_recent_fv`; materialization catches up at the next batch).

    The ratings after `user_last_rating_unix` count in `user_ratings` (ever, 30 and 365 days)
    and in each of the movie's genres (ever and 365 days), as user_activity.sql counts them, so
    the user's genre affinities move with each rating. The mean rating and liked share wait for
    the batch: the window does not carry the rating.
    """
    last = features.get("user_last_rating_unix") or 0
    pushed = [(movie, unix) for movie, unix in zip(features.get("recent_movies") or [],  # type: ignore[call-overload]
                                                    features.get("recent_rated_unix") or [],  # type: ignore[call-overload]
                                                    strict=False) if unix > last]
    if not pushed:
        return features
    out = dict(features)
    for movie, unix in pushed:
        for name in ("user_ratings", "user_ratings_30d", "user_ratings_365d"):
            out[name] = int(out.get(name) or 0) + 1  # type: ignore[call-overload]
        for genre in genres_of(movie):  # type: ignore[operator]
            suffix = genre.lower().replace("-", "_")
            for name in (f"user_genre_{suffix}", f"user_genre_{suffix}_365d"):
                if name in out:
                    out[name] = int(out.get(name) or 0) + 1  # type: ignore[call-overload]
        out["user_first_rating_unix"] = out.get("user_first_rating_unix") or unix
        out["user_last_rating_unix"] = max(int(out.get("user_last_rating_unix") or 0), unix)  # type: ignore[call-overload]
    return out
