-- The app's share of the user's opens at each hour of day (exact, and +-1 hour) over 28 days.
WITH hourly AS (
    SELECT user_id, app, date_trunc('day', timestamp) AS day, hour(timestamp) AS hour,
        count(*) AS opens
    FROM events GROUP BY ALL
), windowed AS (
    SELECT s.snapshot_ts, h.user_id, h.app, h.hour, sum(h.opens) AS opens
    FROM snapshots s
    JOIN hourly h ON h.day < s.snapshot_ts AND h.day >= s.snapshot_ts - INTERVAL 28 DAY
    GROUP BY ALL
), spread AS (  -- each hour's opens also count for the neighbouring hours
    SELECT snapshot_ts, user_id, app, (hour + shift + 24) % 24 AS hour_of_day,
        sum(opens) FILTER (WHERE shift = 0) AS exact_opens, sum(opens) AS near_opens
    FROM windowed, (SELECT unnest([-1, 0, 1]) AS shift)
    GROUP BY ALL
)
SELECT user_id, app, hour_of_day::BIGINT AS hour_of_day,
    snapshot_ts AS event_timestamp, snapshot_ts AS created_timestamp,
    coalesce(exact_opens, 0)::BIGINT AS opens_at_hour_28d,
    coalesce(exact_opens / nullif(sum(exact_opens) OVER w, 0), 0) AS app_share_at_hour_28d,
    near_opens / sum(near_opens) OVER w AS app_share_near_hour_28d
FROM spread
WINDOW w AS (PARTITION BY user_id, snapshot_ts, hour_of_day)
