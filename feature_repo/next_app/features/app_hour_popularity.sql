-- Each app's share of everyone's opens at each hour of day over 28 days.
WITH hourly AS (
    SELECT app, date_trunc('day', timestamp) AS day, hour(timestamp) AS hour_of_day,
        count(*) AS opens
    FROM events GROUP BY ALL
), windowed AS (
    SELECT s.snapshot_ts, h.app, h.hour_of_day, sum(h.opens) AS opens
    FROM snapshots s
    JOIN hourly h ON h.day < s.snapshot_ts AND h.day >= s.snapshot_ts - INTERVAL 28 DAY
    GROUP BY ALL
)
SELECT app, hour_of_day::BIGINT AS hour_of_day,
    snapshot_ts AS event_timestamp, snapshot_ts AS created_timestamp,
    opens / sum(opens) OVER (PARTITION BY snapshot_ts, hour_of_day) AS global_share_at_hour_28d
FROM windowed
