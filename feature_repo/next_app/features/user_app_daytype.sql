-- The app's share of the user's opens on weekdays (is_weekend = 0) or weekends (1), 28 days.
WITH daily AS (
    SELECT user_id, app, date_trunc('day', timestamp) AS day,
        (dayofweek(timestamp) IN (0, 6))::BIGINT AS is_weekend, count(*) AS opens
    FROM events GROUP BY ALL
), windowed AS (
    SELECT s.snapshot_ts, d.user_id, d.app, d.is_weekend, sum(d.opens) AS opens
    FROM snapshots s
    JOIN daily d ON d.day < s.snapshot_ts AND d.day >= s.snapshot_ts - INTERVAL 28 DAY
    GROUP BY ALL
)
SELECT user_id, app, is_weekend, snapshot_ts AS event_timestamp, snapshot_ts AS created_timestamp,
    opens / sum(opens) OVER (PARTITION BY user_id, snapshot_ts, is_weekend) AS app_share_daytype_28d
FROM windowed
