-- Every movie the user rated, oldest first: what the server's generators start from and what
-- stage 3 drops. Serving only (the ranker learns from no list: the protocol gives training its
-- history), so one row per user, stamped at the user's last rating; ratings posted later reach
-- the server through the stream (user_recent_fv).
SELECT userId, max(timestamp) AS event_timestamp, max(timestamp) AS created_timestamp,
    list(movieId ORDER BY timestamp, movieId) AS user_rated_movies
FROM events
GROUP BY userId
