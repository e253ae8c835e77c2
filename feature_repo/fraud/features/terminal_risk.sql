-- The book's terminal risk: of the terminal's payments in (t - 7 - n days, t - 7 days], how
-- many there were and which share were frauds, for n = 1, 7, 30. Frauds are known 7 days after
-- the payment (event_log.label_delay), so this reads the `labels` view and a payment counts
-- from its `label_known_at` on, never before: it enters every window at label_known_at and
-- leaves window n at label_known_at + n days - 1 us. One row per change, stamped when it
-- happens: a lookup at t - 1 us counts the payments in (t - 7 - n, t - 7) days. The book's
-- window also holds a payment exactly 7 days before to the second, whose label is known only
-- at the instant of the payment scored: not used here. The book's 0 when a
-- window is empty. Ours beside them: when the terminal's last known fraud happened and whether
-- its latest known payment was one, and how many known frauds in a row end its known payments
-- (a compromised terminal stays so for weeks, and a 1-day window 7 days back is often empty),
-- and when that run began (a compromise has an end: a run known for long may be over).
-- Rows stop at the end of the event log.
WITH ordered AS (
    SELECT terminal_id, label_known_at AS ts, tx_fraud AS fraud, timestamp AS paid_at, event_id,
        sum(1 - tx_fraud) OVER (PARTITION BY terminal_id ORDER BY timestamp, event_id
                                ROWS UNBOUNDED PRECEDING) AS genuine_before
    FROM labels
), labelled AS (
    SELECT terminal_id, ts, fraud, paid_at, sum(fraud) OVER run AS fraud_run,
        -- when the run began (a genuine payment, which ends a run, stands for itself)
        coalesce(min(CASE WHEN fraud = 1 THEN paid_at END) OVER run, paid_at) AS run_start
    FROM ordered
    WINDOW run AS (PARTITION BY terminal_id, genuine_before ORDER BY paid_at, event_id
                   ROWS UNBOUNDED PRECEDING)
), deltas AS (
    -- every terminal starts at zero before the log (the book's 0 for an empty window)
    SELECT DISTINCT terminal_id, (SELECT min(timestamp) FROM events) - INTERVAL 1 DAY AS ts,
        0 AS n1, 0 AS f1, 0 AS n7, 0 AS f7, 0 AS n30, 0 AS f30,
        NULL::TIMESTAMPTZ AS fraud_at, NULL::INTEGER AS label, NULL::BIGINT AS fraud_run,
        NULL::TIMESTAMPTZ AS run_start
    FROM events
    UNION ALL
    SELECT terminal_id, ts, 1, fraud, 1, fraud, 1, fraud,
        CASE WHEN fraud = 1 THEN paid_at END, fraud, fraud_run, run_start
    FROM labelled
    UNION ALL
    SELECT terminal_id, ts + INTERVAL 1 DAY - INTERVAL 1 MICROSECOND, -1, -fraud, 0, 0, 0, 0,
        NULL, NULL, NULL, NULL FROM labelled
    UNION ALL
    SELECT terminal_id, ts + INTERVAL 7 DAY - INTERVAL 1 MICROSECOND, 0, 0, -1, -fraud, 0, 0,
        NULL, NULL, NULL, NULL FROM labelled
    UNION ALL
    SELECT terminal_id, ts + INTERVAL 30 DAY - INTERVAL 1 MICROSECOND, 0, 0, 0, 0, -1, -fraud,
        NULL, NULL, NULL, NULL FROM labelled
), per_time AS (
    SELECT terminal_id, ts, sum(n1) AS n1, sum(f1) AS f1, sum(n7) AS n7, sum(f7) AS f7,
        sum(n30) AS n30, sum(f30) AS f30, max(fraud_at) AS fraud_at, max(label) AS label,
        max(fraud_run) AS fraud_run, min(run_start) AS run_start
    FROM deltas GROUP BY ALL
), running AS (
    SELECT terminal_id, ts, sum(n1) OVER w AS n1, sum(f1) OVER w AS f1, sum(n7) OVER w AS n7,
        sum(f7) OVER w AS f7, sum(n30) OVER w AS n30, sum(f30) OVER w AS f30,
        max(fraud_at) OVER w AS fraud_at, last_value(label IGNORE NULLS) OVER w AS label,
        last_value(fraud_run IGNORE NULLS) OVER w AS fraud_run,
        last_value(run_start IGNORE NULLS) OVER w AS run_start
    FROM per_time
    WINDOW w AS (PARTITION BY terminal_id ORDER BY ts ROWS UNBOUNDED PRECEDING)
)
SELECT terminal_id::BIGINT AS terminal_id, ts AS event_timestamp, ts AS created_timestamp,
    n1::BIGINT AS terminal_id_nb_tx_1day_window,
    coalesce(f1 / nullif(n1, 0), 0)::DOUBLE AS terminal_id_risk_1day_window,
    n7::BIGINT AS terminal_id_nb_tx_7day_window,
    coalesce(f7 / nullif(n7, 0), 0)::DOUBLE AS terminal_id_risk_7day_window,
    n30::BIGINT AS terminal_id_nb_tx_30day_window,
    coalesce(f30 / nullif(n30, 0), 0)::DOUBLE AS terminal_id_risk_30day_window,
    epoch(fraud_at)::BIGINT AS terminal_last_fraud_unix,
    label::BIGINT AS terminal_last_label,
    fraud_run::BIGINT AS terminal_fraud_run,
    CASE WHEN fraud_run > 0 THEN epoch(run_start)::BIGINT END AS terminal_run_start_unix
FROM running
WHERE ts <= (SELECT max(snapshot_ts) FROM snapshots)
