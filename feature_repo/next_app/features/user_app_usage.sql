-- Opens of each app by each user over the 1, 7 and 28 days before each snapshot.
WITH daily AS (
    SELECT user_id, app, date_trunc('day', timestamp) AS day, count(*) AS opens
    FROM events GROUP BY ALL
), windowed AS (
    SELECT s.snapshot_ts, d.user_id, d.app,
        coalesce(sum(d.opens) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 1 DAY), 0) AS opens_1d,
        coalesce(sum(d.opens) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 7 DAY), 0) AS opens_7d,
        sum(d.opens) AS opens_28d
    FROM snapshots s
    JOIN daily d ON d.day < s.snapshot_ts AND d.day >= s.snapshot_ts - INTERVAL 28 DAY
    GROUP BY ALL
)
SELECT user_id, app, snapshot_ts AS event_timestamp, snapshot_ts AS created_timestamp,
    opens_1d::BIGINT AS opens_1d, opens_7d::BIGINT AS opens_7d, opens_28d::BIGINT AS opens_28d,
    coalesce(opens_7d / nullif(sum(opens_7d) OVER (PARTITION BY user_id, snapshot_ts), 0), 0)
        AS app_share_7d,
    opens_28d / sum(opens_28d) OVER (PARTITION BY user_id, snapshot_ts) AS app_share_28d
FROM windowed
