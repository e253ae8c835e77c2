-- Durations of the trips of each route (pickup area, dropoff area).
-- One row per key and moment a new duration became known (label_known_at), over every
-- duration of the key known by then. RANGE frame: durations known at the same instant are
-- peers, so each of their rows counts them all, and one of those rows is kept.
SELECT pickup_community_area, dropoff_community_area,
    label_known_at AS event_timestamp, label_known_at AS created_timestamp,
    count(*) OVER w AS route_trips,
    median(trip_seconds) OVER w AS route_median_seconds,
    avg(trip_seconds) OVER w AS route_mean_seconds,
    quantile_cont(trip_seconds, 0.25) OVER w AS route_p25_seconds,
    quantile_cont(trip_seconds, 0.75) OVER w AS route_p75_seconds,
    avg(ln(trip_seconds)) OVER w AS route_mean_log_seconds
FROM labels
WINDOW w AS (PARTITION BY pickup_community_area, dropoff_community_area
             ORDER BY label_known_at RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
QUALIFY row_number() OVER (
    PARTITION BY pickup_community_area, dropoff_community_area, label_known_at
    ORDER BY event_id) = 1
