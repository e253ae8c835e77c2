-- The 10 apps everyone opened most at each hour of day over 28 days (candidates of last resort).
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
SELECT hour_of_day::BIGINT AS hour_of_day,
    snapshot_ts AS event_timestamp, snapshot_ts AS created_timestamp,
    list(app ORDER BY opens DESC, app)[1:10] AS popular_apps_at_hour
FROM windowed
GROUP BY hour_of_day, snapshot_ts
