-- Loan applications from the zipcode over the 180 days before, and the defaults among the loans
-- whose label became known in those 180 days (a label counts from `label_known_at` on, never
-- before). Event-level: a row wherever a count changes (an application, a label becoming known,
-- either leaving the window), stamped then, and a row of zeros for every known zipcode at the
-- start of the log (so that 0 means none, as it does once a window empties). Rows stop at the
-- end of the event log.
WITH changes AS (
    SELECT zipcode, (SELECT min(snapshot_ts) - INTERVAL 1 DAY FROM snapshots) AS ts,
        0 AS applied, 0 AS labelled, 0 AS defaulted
    FROM zipcodes
    UNION ALL
    SELECT zipcode, timestamp, 1, 0, 0 FROM events
    UNION ALL
    SELECT zipcode, timestamp + INTERVAL 180 DAY, -1, 0, 0 FROM events
    UNION ALL
    SELECT zipcode, label_known_at, 0, 1, loan_status FROM labels
    UNION ALL
    SELECT zipcode, label_known_at + INTERVAL 180 DAY, 0, -1, -loan_status FROM labels
), per_time AS (
    SELECT zipcode, ts, sum(applied) AS applied, sum(labelled) AS labelled,
        sum(defaulted) AS defaulted
    FROM changes GROUP BY ALL
), running AS (
    SELECT zipcode, ts, sum(applied) OVER w AS loans, sum(labelled) OVER w AS labelled,
        sum(defaulted) OVER w AS defaults
    FROM per_time
    WINDOW w AS (PARTITION BY zipcode ORDER BY ts ROWS UNBOUNDED PRECEDING)
)
SELECT zipcode::BIGINT AS zipcode, ts AS event_timestamp, ts AS created_timestamp,
    loans::BIGINT AS loans_180d,
    labelled::BIGINT AS labelled_loans_180d,
    defaults::BIGINT AS defaults_180d,
    defaults / nullif(labelled, 0) AS default_rate_180d
FROM running
WHERE ts <= (SELECT max(snapshot_ts) FROM snapshots)
