-- Durations of the trips to each dropoff area.
-- One row per key and moment a new duration became known (label_known_at), over every
-- duration of the key known by then. RANGE frame: durations known at the same instant are
-- peers, so each of their rows counts them all, and one of those rows is kept.
SELECT dropoff_community_area,
    label_known_at AS event_timestamp, label_known_at AS created_timestamp,
    count(*) OVER w AS dropoff_trips,
    median(trip_seconds) OVER w AS dropoff_median_seconds,
    avg(trip_seconds) OVER w AS dropoff_mean_seconds,
    quantile_cont(trip_seconds, 0.25) OVER w AS dropoff_p25_seconds,
    quantile_cont(trip_seconds, 0.75) OVER w AS dropoff_p75_seconds,
    avg(ln(trip_seconds)) OVER w AS dropoff_mean_log_seconds
FROM labels
WINDOW w AS (PARTITION BY dropoff_community_area
             ORDER BY label_known_at RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
QUALIFY row_number() OVER (
    PARTITION BY dropoff_community_area, label_known_at ORDER BY event_id) = 1
