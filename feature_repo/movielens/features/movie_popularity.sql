-- How the movie was rated strictly before each moment, by anyone: how many ratings (ever, 30
-- and 365 days), their sum (ever, 365 days: means and trends in user_movie_odfv), how many of
-- the last 365 days' were 4 or more, when it was first and last rated. Step rows with window
-- exits, as in user_activity.sql: a lookup at t - 1 us counts exactly the ratings in (t - n, t).
WITH rated AS (
    SELECT movieId, timestamp AS ts, rating FROM events
), deltas AS (
    SELECT movieId, ts, 1 AS n_all, 1 AS n30, 1 AS n365, rating AS sum_all, rating AS sum365,
        (rating >= 4)::BIGINT AS liked365, ts AS rated_at
    FROM rated
    UNION ALL
    SELECT movieId, ts + INTERVAL 30 DAY - INTERVAL 1 MICROSECOND, 0, -1, 0, 0, 0, 0, NULL
    FROM rated
    UNION ALL
    SELECT movieId, ts + INTERVAL 365 DAY - INTERVAL 1 MICROSECOND, 0, 0, -1, 0, -rating,
        -(rating >= 4)::BIGINT, NULL
    FROM rated
), per_time AS (
    SELECT movieId, ts, sum(n_all) AS n_all, sum(n30) AS n30, sum(n365) AS n365,
        sum(sum_all) AS sum_all, sum(sum365) AS sum365, sum(liked365) AS liked365,
        max(rated_at) AS rated_at, min(rated_at) AS first_at
    FROM deltas GROUP BY ALL
), running AS (
    SELECT movieId, ts, sum(n_all) OVER w AS n_all, sum(n30) OVER w AS n30,
        sum(n365) OVER w AS n365, sum(sum_all) OVER w AS sum_all, sum(sum365) OVER w AS sum365,
        sum(liked365) OVER w AS liked365, max(rated_at) OVER w AS rated_at,
        min(first_at) OVER w AS first_at
    FROM per_time
    WINDOW w AS (PARTITION BY movieId ORDER BY ts ROWS UNBOUNDED PRECEDING)
)
SELECT movieId, ts AS event_timestamp, ts AS created_timestamp,
    n_all::BIGINT AS movie_ratings, n30::BIGINT AS movie_ratings_30d,
    n365::BIGINT AS movie_ratings_365d, sum_all::DOUBLE AS movie_rating_sum,
    sum365::DOUBLE AS movie_rating_sum_365d, liked365::BIGINT AS movie_liked_365d,
    epoch(first_at)::BIGINT AS movie_first_rating_unix,
    epoch(rated_at)::BIGINT AS movie_last_rating_unix
FROM running
WHERE ts <= (SELECT max(snapshot_ts) FROM snapshots)
