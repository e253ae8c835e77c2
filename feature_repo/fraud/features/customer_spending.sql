-- What the card paid strictly before each moment, over the last hour, 1, 7 and 30 days: how
-- many payments, their total and (1, 7, 30 days) their sum of squares, and when it last paid
-- (the sums of squares let payment_odfv say how far the day's and the week's payments strayed
-- from the card's usual: a card compromised for days pays a few 5x amounts among normal ones).
-- And its
-- usual spending: how many of its payments, and what total and sum of squares, are known to be
-- genuine (labels read from `labels`, counted from `label_known_at` on, over all its history):
-- a window's mean also holds the frauds of a compromise underway, its usual spending does not.
-- A window's count is a step function of time: it rises when a payment happens and falls when
-- that payment leaves the window. One row per step, stamped when it happens: a payment at T
-- enters at T and leaves window n at T + n - 1 us, so a lookup at t - 1 us (the platform's
-- "just before the event") counts exactly the payments in (t - n, t), the book's window
-- without the current payment (payment_odfv adds it). Amounts are summed as decimals: the
-- running sums add and subtract exactly. Rows stop at the end of the event log.
WITH payments AS (
    SELECT customer_id, timestamp AS ts, tx_amount::DECIMAL(18, 2) AS amount FROM events
), deltas AS (
    SELECT customer_id, ts, 1 AS c1h, amount AS s1h, 1 AS c1d, amount AS s1d,
        amount * amount AS q1d, 1 AS c7d, amount AS s7d, amount * amount AS q7d, 1 AS c30d,
        amount AS s30d, amount * amount AS q30d, ts AS paid_at,
        0 AS gn, 0::DECIMAL(18, 2) AS gs, 0::DECIMAL(38, 4) AS gq
    FROM payments
    UNION ALL
    SELECT customer_id, ts + INTERVAL 1 HOUR - INTERVAL 1 MICROSECOND, -1, -amount, 0, 0, 0, 0,
        0, 0, 0, 0, 0, NULL, 0, 0, 0 FROM payments
    UNION ALL
    SELECT customer_id, ts + INTERVAL 1 DAY - INTERVAL 1 MICROSECOND, 0, 0, -1, -amount,
        -amount * amount, 0, 0, 0, 0, 0, 0, NULL, 0, 0, 0 FROM payments
    UNION ALL
    SELECT customer_id, ts + INTERVAL 7 DAY - INTERVAL 1 MICROSECOND, 0, 0, 0, 0, 0, -1,
        -amount, -amount * amount, 0, 0, 0, NULL, 0, 0, 0 FROM payments
    UNION ALL
    SELECT customer_id, ts + INTERVAL 30 DAY - INTERVAL 1 MICROSECOND, 0, 0, 0, 0, 0, 0, 0, 0,
        -1, -amount, -amount * amount, NULL, 0, 0, 0 FROM payments
    UNION ALL
    SELECT customer_id, label_known_at, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, NULL, 1,
        tx_amount::DECIMAL(18, 2), tx_amount::DECIMAL(18, 2) * tx_amount::DECIMAL(18, 2)
    FROM labels WHERE tx_fraud = 0
), per_time AS (
    SELECT customer_id, ts, sum(c1h) AS c1h, sum(s1h) AS s1h, sum(c1d) AS c1d, sum(s1d) AS s1d,
        sum(q1d) AS q1d, sum(c7d) AS c7d, sum(s7d) AS s7d, sum(q7d) AS q7d, sum(c30d) AS c30d,
        sum(s30d) AS s30d, sum(q30d) AS q30d, max(paid_at) AS paid_at, sum(gn) AS gn,
        sum(gs) AS gs, sum(gq) AS gq
    FROM deltas GROUP BY ALL
), running AS (
    SELECT customer_id, ts,
        sum(c1h) OVER w AS c1h, sum(s1h) OVER w AS s1h, sum(c1d) OVER w AS c1d,
        sum(s1d) OVER w AS s1d, sum(q1d) OVER w AS q1d, sum(c7d) OVER w AS c7d,
        sum(s7d) OVER w AS s7d, sum(q7d) OVER w AS q7d,
        sum(c30d) OVER w AS c30d, sum(s30d) OVER w AS s30d, sum(q30d) OVER w AS q30d,
        max(paid_at) OVER w AS paid_at, sum(gn) OVER w AS gn, sum(gs) OVER w AS gs,
        sum(gq) OVER w AS gq
    FROM per_time
    WINDOW w AS (PARTITION BY customer_id ORDER BY ts ROWS UNBOUNDED PRECEDING)
)
SELECT customer_id, ts AS event_timestamp, ts AS created_timestamp,
    c1h::BIGINT AS customer_tx_1h, s1h::DOUBLE AS customer_amount_1h,
    c1d::BIGINT AS customer_tx_1d, s1d::DOUBLE AS customer_amount_1d,
    q1d::DOUBLE AS customer_amount_sq_1d,
    c7d::BIGINT AS customer_tx_7d, s7d::DOUBLE AS customer_amount_7d,
    q7d::DOUBLE AS customer_amount_sq_7d,
    c30d::BIGINT AS customer_tx_30d, s30d::DOUBLE AS customer_amount_30d,
    q30d::DOUBLE AS customer_amount_sq_30d,
    epoch(paid_at)::BIGINT AS customer_last_tx_unix,
    gn::BIGINT AS customer_genuine_tx, gs::DOUBLE AS customer_genuine_amount,
    gq::DOUBLE AS customer_genuine_amount_sq
FROM running
WHERE ts <= (SELECT max(snapshot_ts) FROM snapshots)
