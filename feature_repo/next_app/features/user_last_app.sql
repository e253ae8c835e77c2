-- Event-level: after each unlock, the user's last app, its time, and the last 5 distinct apps.
WITH ordered AS (
    SELECT user_id, timestamp, app,
        list_reverse(list(app) OVER (PARTITION BY user_id ORDER BY timestamp, event_id
                        ROWS BETWEEN 19 PRECEDING AND CURRENT ROW)) AS last_20
    FROM events
)
SELECT user_id, timestamp AS event_timestamp, timestamp AS created_timestamp,
    app AS last_app, (epoch_us(timestamp) // 1000000)::BIGINT AS last_unlock_unix,
    list_filter(last_20, lambda a, i: list_position(last_20, a) = i)[1:5] AS recent_apps
FROM ordered
