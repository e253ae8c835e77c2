-- Event-level: at each unlock, the opened app's last-opened time becomes that unlock's time.
SELECT user_id, app, timestamp AS event_timestamp, timestamp AS created_timestamp,
    (epoch_us(timestamp) // 1000000)::BIGINT AS last_opened_unix
FROM events
