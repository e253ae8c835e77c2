-- How often each user opened `app` in the unlock right after one that opened `prev_app`.
WITH pairs AS (
    SELECT user_id, timestamp, app,
        lag(app) OVER (PARTITION BY user_id ORDER BY timestamp, event_id) AS prev_app
    FROM events
), daily AS (
    SELECT user_id, prev_app, app, date_trunc('day', timestamp) AS day, count(*) AS n
    FROM pairs WHERE prev_app IS NOT NULL GROUP BY ALL
), windowed AS (
    SELECT s.snapshot_ts, d.user_id, d.prev_app, d.app, sum(d.n) AS transitions
    FROM snapshots s
    JOIN daily d ON d.day < s.snapshot_ts AND d.day >= s.snapshot_ts - INTERVAL 28 DAY
    GROUP BY ALL
)
SELECT user_id, prev_app, app, snapshot_ts AS event_timestamp, snapshot_ts AS created_timestamp,
    transitions::BIGINT AS transitions_28d,
    transitions / sum(transitions) OVER (PARTITION BY user_id, snapshot_ts, prev_app)
        AS transition_share_28d
FROM windowed
