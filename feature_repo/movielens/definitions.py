"""Feast objects of the MovieLens use case (its own Feast project, `movielens`).
Declarations only: applying and materializing live in `pipelines/`. Tables are written by the
SQL files in `features/` (one file per table)."""

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
from feast.types import Array, Float64, Int64

from feastflow.store import feature_table_source

# Windowed counts write a row whenever they change, emptying included: a row never goes stale.
WINDOW_TTL = timedelta(days=36500)
# The genres of movies.csv ("(no genres listed)" is no genre), as column suffixes.
GENRES = ("action", "adventure", "animation", "children", "comedy", "crime", "documentary",
          "drama", "fantasy", "film_noir", "horror", "imax", "musical", "mystery", "romance",
          "sci_fi", "thriller", "war", "western")

# --- entities -------------------------------------------------------------------------------
# The user who rates (GroupLens' anonymous id).
user = Entity(name="user", join_keys=["userId"], value_type=ValueType.INT64)
# The movie rated or recommended (GroupLens' id).
movie = Entity(name="movie", join_keys=["movieId"], value_type=ValueType.INT64)

# --- sources --------------------------------------------------------------------------------
user_activity_source = feature_table_source(__file__, "user_activity")
movie_popularity_source = feature_table_source(__file__, "movie_popularity")
movie_profile_source = feature_table_source(__file__, "movie_profile")
user_history_source = feature_table_source(__file__, "user_history")
user_recent_source = feature_table_source(__file__, "user_recent")
# Ratings posted as events (the stream processor pushes here, realtime.py computes the row).
user_recent_push = PushSource(name="user_recent_push", batch_source=user_recent_source)
# The moment of the recommendation (the user's cut-off in evaluation).
recommendation_request = RequestSource(
    name="recommendation_request", schema=[Field(name="request_unix", dtype=Int64)])

# --- feature views --------------------------------------------------------------------------
# The user's ratings before now: counts over windows, mean, liked share, first and last time,
# and ratings per genre (ever and over 365 days).
user_activity_fv = FeatureView(
    name="user_activity_fv",
    entities=[user],
    ttl=WINDOW_TTL,
    schema=[
        Field(name="user_ratings", dtype=Int64),
        Field(name="user_ratings_30d", dtype=Int64),
        Field(name="user_ratings_365d", dtype=Int64),
        Field(name="user_mean_rating", dtype=Float64),
        Field(name="user_liked_share", dtype=Float64),
        Field(name="user_first_rating_unix", dtype=Int64),
        Field(name="user_last_rating_unix", dtype=Int64),
        *[Field(name=f"user_genre_{g}", dtype=Int64) for g in GENRES],
        *[Field(name=f"user_genre_{g}_365d", dtype=Int64) for g in GENRES],
    ],
    source=user_activity_source,
)
# The movie's ratings by anyone before now: counts over windows, sums, liked, first and last time.
movie_popularity_fv = FeatureView(
    name="movie_popularity_fv",
    entities=[movie],
    ttl=WINDOW_TTL,
    schema=[
        Field(name="movie_ratings", dtype=Int64),
        Field(name="movie_ratings_30d", dtype=Int64),
        Field(name="movie_ratings_365d", dtype=Int64),
        Field(name="movie_rating_sum", dtype=Float64),
        Field(name="movie_rating_sum_365d", dtype=Float64),
        Field(name="movie_liked_365d", dtype=Int64),
        Field(name="movie_first_rating_unix", dtype=Int64),
        Field(name="movie_last_rating_unix", dtype=Int64),
    ],
    source=movie_popularity_source,
)
# The catalogue's facts: release year, number of genres, a flag per genre.
movie_profile_fv = FeatureView(
    name="movie_profile_fv",
    entities=[movie],
    ttl=WINDOW_TTL,
    schema=[
        Field(name="movie_release_year", dtype=Int64),
        Field(name="movie_genres", dtype=Int64),
        *[Field(name=f"movie_genre_{g}", dtype=Int64) for g in GENRES],
    ],
    source=movie_profile_source,
)


# Serving only: every movie the user rated, oldest first (one row per user, at the last rating).
user_history_fv = FeatureView(
    name="user_history_fv",
    entities=[user],
    ttl=WINDOW_TTL,
    schema=[Field(name="user_rated_movies", dtype=Array(Int64))],
    source=user_history_source,
)


# Serving only, updated at every rating: the user's last rated movies and when, oldest first.
user_recent_fv = FeatureView(
    name="user_recent_fv",
    entities=[user],
    ttl=WINDOW_TTL,
    schema=[
        Field(name="recent_movies", dtype=Array(Int64)),
        Field(name="recent_rated_unix", dtype=Array(Int64)),
        Field(name="last_rating_unix", dtype=Int64),
    ],
    source=user_recent_push,
)


@on_demand_feature_view(
    sources=[user_activity_fv, movie_popularity_fv, movie_profile_fv, recommendation_request],
    schema=[
        Field(name="genre_affinity", dtype=Float64),
        Field(name="genre_affinity_365d", dtype=Float64),
        Field(name="genre_affinity_max", dtype=Float64),
        Field(name="movie_age_years", dtype=Float64),
        Field(name="movie_mean_rating", dtype=Float64),
        Field(name="movie_mean_rating_365d", dtype=Float64),
        Field(name="movie_liked_share_365d", dtype=Float64),
        Field(name="movie_trend_30d", dtype=Float64),
        Field(name="movie_days_since_first_rating", dtype=Float64),
        Field(name="movie_days_since_last_rating", dtype=Float64),
        Field(name="user_days_since_last_rating", dtype=Float64),
        Field(name="user_days_active", dtype=Float64),
    ],
    mode="python",
)
def user_movie_odfv(inputs: dict[str, list]) -> dict[str, list]:
    """The user's affinity to the movie's genres (mean share of the user's ratings, ever and over
    365 days, in each of the movie's genres; and the largest), the movie's age in years at the
    request, its mean rating (ever, 365 days), liked share and 30-day trend (its last 30 days
    against a twelfth of its last 365), days since its first and last rating, and the user's
    days since their last rating and days active.

    Python mode on lists (a missing input is None: nothing rated before): Feast calls it on the
    joined training set, and the server calls this same function on the rows it scores. The
    genre list is repeated here: Feast rebuilds the function from its source alone.
    """
    import math

    genres = ("action", "adventure", "animation", "children", "comedy", "crime", "documentary",
              "drama", "fantasy", "film_noir", "horror", "imax", "musical", "mystery", "romance",
              "sci_fi", "thriller", "war", "western")

    def num(value: object) -> float:
        return 0.0 if value is None or (isinstance(value, float) and math.isnan(value)) \
            else float(value)  # type: ignore[arg-type]

    def days_between(later: float, earlier: object) -> float | None:
        since = num(earlier)
        return None if since == 0.0 else (later - since) / 86400.0

    names = ("genre_affinity", "genre_affinity_365d", "genre_affinity_max", "movie_age_years",
             "movie_mean_rating", "movie_mean_rating_365d", "movie_liked_share_365d",
             "movie_trend_30d", "movie_days_since_first_rating", "movie_days_since_last_rating",
             "user_days_since_last_rating", "user_days_active")
    out: dict[str, list] = {name: [] for name in names}
    # Per distinct user and per distinct movie, computed once (the server scores ~200 movies
    # for one user): the user's genre shares; the movie's genres (positions with a flag).
    user_columns = [inputs["user_ratings"], inputs["user_ratings_365d"],
                    *[inputs[f"user_genre_{g}"] for g in genres],
                    *[inputs[f"user_genre_{g}_365d"] for g in genres]]
    movie_columns = [inputs[f"movie_genre_{g}"] for g in genres]
    users: dict[tuple, tuple[list[float], list[float]]] = {}
    movies: dict[tuple, tuple[list[int], list[float], float]] = {}
    rows = zip(inputs["request_unix"], zip(*user_columns, strict=True),
               zip(*movie_columns, strict=True), strict=True)
    for i, (unix, user_key, movie_key) in enumerate(rows):
        now = num(unix)
        if user_key not in users:
            n_user, n_user_year = num(user_key[0]), num(user_key[1])
            users[user_key] = (
                [num(v) / n_user if n_user else 0.0 for v in user_key[2:2 + len(genres)]],
                [num(v) / n_user_year if n_user_year else 0.0 for v in user_key[2 + len(genres):]])
        shares, shares_year = users[user_key]
        if movie_key not in movies:
            flags = [num(v) for v in movie_key]
            movies[movie_key] = ([j for j, f in enumerate(flags) if f], flags, sum(flags))
        # a genre without the flag adds 0.0 to a sum and nothing to a max: only flagged ones
        flagged, flags, n_genres = movies[movie_key]
        out["genre_affinity"].append(
            sum(flags[j] * shares[j] for j in flagged) / n_genres if n_genres else None)
        out["genre_affinity_365d"].append(
            sum(flags[j] * shares_year[j] for j in flagged) / n_genres if n_genres else None)
        out["genre_affinity_max"].append(max((shares[j] for j in flagged), default=None))
        year = num(inputs["movie_release_year"][i])
        out["movie_age_years"].append(
            None if year == 0.0 else 1970 + now / (365.2425 * 86400) - year)
        n_movie, n_movie_year = num(inputs["movie_ratings"][i]), num(inputs["movie_ratings_365d"][i])
        out["movie_mean_rating"].append(
            num(inputs["movie_rating_sum"][i]) / n_movie if n_movie else None)
        out["movie_mean_rating_365d"].append(
            num(inputs["movie_rating_sum_365d"][i]) / n_movie_year if n_movie_year else None)
        out["movie_liked_share_365d"].append(
            num(inputs["movie_liked_365d"][i]) / n_movie_year if n_movie_year else None)
        out["movie_trend_30d"].append(
            num(inputs["movie_ratings_30d"][i]) / (n_movie_year / 12.0 + 1.0))
        out["movie_days_since_first_rating"].append(
            days_between(now, inputs["movie_first_rating_unix"][i]))
        out["movie_days_since_last_rating"].append(
            days_between(now, inputs["movie_last_rating_unix"][i]))
        out["user_days_since_last_rating"].append(
            days_between(now, inputs["user_last_rating_unix"][i]))
        out["user_days_active"].append(days_between(now, inputs["user_first_rating_unix"][i]))
    return out


# --- feature services: one per model version ------------------------------------------------
# Every feature the ranker (stage 2) scores a (user, candidate movie) pair with.
movielens_ranker_v1 = FeatureService(
    name="movielens_ranker_v1",
    features=[user_activity_fv, movie_popularity_fv, movie_profile_fv, user_movie_odfv],
)
# What the server reads per user before stage 1 (the history the generators start from).
movielens_user_v1 = FeatureService(name="movielens_user_v1",
                                   features=[user_history_fv, user_recent_fv])
