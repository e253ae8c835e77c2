"""user_movie_odfv, the on-demand view training and serving share, on hand-computed rows: two
users, movies with and without genres, missing inputs."""

from __future__ import annotations

from typing import Any

import pytest

DAY = 86_400
# The definitions are imported in the tests, not at collection: importing Feast's ODFV machinery
# sets PROMETHEUS_MULTIPROC_DIR (feast.metrics), which would put every prometheus_client metric
# created after it in multiprocess mode, summing counters across tests/test_serving_units.py.


def _rows(users: list[dict[str, Any]], movies: list[dict[str, Any]], now: int
          ) -> dict[str, list[Any]]:
    """The ODFV's inputs for (user i, movie i) rows; unnamed counts 0."""
    from feature_repo.movielens.definitions import GENRES

    columns: dict[str, list[Any]] = {"request_unix": [now] * len(users)}
    names = ["user_ratings", "user_ratings_365d", "user_last_rating_unix", "user_first_rating_unix",
             *[f"user_genre_{g}{s}" for g in GENRES for s in ("", "_365d")]]
    movie_names = ["movie_release_year", "movie_ratings", "movie_ratings_365d", "movie_rating_sum",
                   "movie_rating_sum_365d", "movie_liked_365d", "movie_ratings_30d",
                   "movie_first_rating_unix", "movie_last_rating_unix",
                   *[f"movie_genre_{g}" for g in GENRES]]
    for name in names:
        columns[name] = [u.get(name, 0) for u in users]
    for name in movie_names:
        columns[name] = [m.get(name, 0) for m in movies]
    return columns


def test_genre_affinity_is_the_mean_share_over_the_movies_genres() -> None:
    from feature_repo.movielens.definitions import user_movie_odfv

    now = 10_000 * DAY
    fan = {"user_ratings": 10, "user_ratings_365d": 4, "user_genre_comedy": 5,
           "user_genre_drama": 2, "user_genre_comedy_365d": 1, "user_last_rating_unix": now - DAY,
           "user_first_rating_unix": now - 10 * DAY}
    new = {"user_ratings": None}  # nothing rated: every share 0
    comedy_drama = {"movie_genre_comedy": 1, "movie_genre_drama": 1, "movie_release_year": 1990,
                    "movie_ratings": 4, "movie_rating_sum": 14.0, "movie_ratings_365d": 2,
                    "movie_liked_365d": 1, "movie_ratings_30d": 3,
                    "movie_last_rating_unix": now - 2 * DAY}
    no_genre = {"movie_release_year": None}
    out = user_movie_odfv.feature_transformation.udf(
        _rows([fan, fan, new, fan], [comedy_drama, no_genre, comedy_drama, comedy_drama], now))
    assert out["genre_affinity"][0] == pytest.approx((0.5 + 0.2) / 2)
    assert out["genre_affinity_365d"][0] == pytest.approx((0.25 + 0.0) / 2)
    assert out["genre_affinity_max"][0] == pytest.approx(0.5)
    assert out["genre_affinity"][1] is None and out["genre_affinity_max"][1] is None
    assert out["genre_affinity"][2] == 0.0 and out["genre_affinity_max"][2] == 0.0
    assert out["genre_affinity"][3] == out["genre_affinity"][0]  # same inputs, same value
    assert out["movie_age_years"][1] is None
    assert out["movie_mean_rating"][0] == pytest.approx(3.5)
    assert out["movie_mean_rating_365d"][0] == 0.0  # no 365-day rating sum given: 0 / 2
    assert out["movie_liked_share_365d"][0] == pytest.approx(0.5)
    assert out["movie_trend_30d"][0] == pytest.approx(3 / (2 / 12 + 1))
    assert out["movie_days_since_first_rating"][0] is None  # never rated: unknown
    assert out["movie_days_since_last_rating"][0] == pytest.approx(2.0)
    assert out["user_days_since_last_rating"][0] == pytest.approx(1.0)
    assert out["user_days_active"][0] == pytest.approx(10.0)
