-- The user's activity over 7 and 28 days, and their 20 most opened apps (most first).
WITH daily AS (
    SELECT user_id, app, date_trunc('day', timestamp) AS day, count(*) AS opens,
        sum(session_seconds) AS session_seconds
    FROM events GROUP BY ALL
), windowed AS (
    SELECT s.snapshot_ts, d.user_id, d.app,
        sum(d.opens) AS opens_28d,
        coalesce(sum(d.opens) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 7 DAY), 0) AS opens_7d,
        coalesce(sum(d.session_seconds) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 7 DAY), 0)
            AS session_seconds_7d
    FROM snapshots s
    JOIN daily d ON d.day < s.snapshot_ts AND d.day >= s.snapshot_ts - INTERVAL 28 DAY
    GROUP BY ALL
)
SELECT user_id, snapshot_ts AS event_timestamp, snapshot_ts AS created_timestamp,
    sum(opens_7d)::BIGINT AS unlocks_7d,
    count(*)::BIGINT AS distinct_apps_28d,
    coalesce(sum(session_seconds_7d) / nullif(sum(opens_7d), 0), 0) AS avg_session_seconds_7d,
    list(app ORDER BY opens_28d DESC, app)[1:20] AS top_apps_28d
FROM windowed
GROUP BY user_id, snapshot_ts
