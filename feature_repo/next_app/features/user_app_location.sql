-- The app's share of the user's opens at each coarse location over 28 days.
WITH daily AS (
    SELECT user_id, app, location, date_trunc('day', timestamp) AS day, count(*) AS opens
    FROM events GROUP BY ALL
), windowed AS (
    SELECT s.snapshot_ts, d.user_id, d.app, d.location, sum(d.opens) AS opens
    FROM snapshots s
    JOIN daily d ON d.day < s.snapshot_ts AND d.day >= s.snapshot_ts - INTERVAL 28 DAY
    GROUP BY ALL
)
SELECT user_id, app, location, snapshot_ts AS event_timestamp, snapshot_ts AS created_timestamp,
    opens / sum(opens) OVER (PARTITION BY user_id, snapshot_ts, location)
        AS app_share_at_location_28d
FROM windowed
