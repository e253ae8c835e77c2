"""Feast objects of the fraud use case (its own Feast project, `fraud`). Declarations only:
applying and materializing live in `pipelines/`. Tables are written by the SQL files in
`features/` (one file per table); `payment_odfv` adds the payment being scored."""

from datetime import timedelta

from feast import (
    Entity,
    FeatureService,
    FeatureView,
    Field,
    PushSource,
    RequestSource,
    ValueType,
)
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Array, Float64, Int64

from feastflow.store import feature_table_source

# Windowed counts write a row whenever they change, emptying included: a row never goes stale.
WINDOW_TTL = timedelta(days=3650)
CUSTOMER_WINDOWS = ("1h", "1d", "7d", "30d")
BOOK_DAYS = (1, 7, 30)


# --- entities -------------------------------------------------------------------------------
# The card (the book's customer), as a keyed hash of its raw id.
customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)
# The payment terminal (merchant), by its id.
terminal = Entity(name="terminal", join_keys=["terminal_id"], value_type=ValueType.INT64)

# --- sources --------------------------------------------------------------------------------
customer_spending_source = feature_table_source(__file__, "customer_spending")
terminal_risk_source = feature_table_source(__file__, "terminal_risk")
# The card's recent payments, pushed by the stream processor at every payment (realtime.py).
customer_payments_push = PushSource(
    name="customer_payments_push",
    batch_source=feature_table_source(__file__, "customer_payments"),
)
# The payment being scored (taken from each event in training).
payment = RequestSource(
    name="payment",
    schema=[Field(name="tx_amount", dtype=Float64), Field(name="tx_unix", dtype=Int64)],
)

# --- feature views --------------------------------------------------------------------------
# The card's payments before this one over 1 h, 1, 7 and 30 days, when it last paid, and its
# payments known to be genuine (labels 7 days late) over all its history.
customer_spending_fv = FeatureView(
    name="customer_spending_fv",
    entities=[customer],
    ttl=WINDOW_TTL,
    schema=[
        *[Field(name=f"customer_{kind}_{w}", dtype=Int64 if kind == "tx" else Float64)
          for w in CUSTOMER_WINDOWS for kind in ("tx", "amount")],
        *[Field(name=f"customer_amount_sq_{w}", dtype=Float64) for w in ("1d", "7d", "30d")],
        Field(name="customer_last_tx_unix", dtype=Int64),
        # its usual spending: its payments known to be genuine, over all its history
        Field(name="customer_genuine_tx", dtype=Int64),
        Field(name="customer_genuine_amount", dtype=Float64),
        Field(name="customer_genuine_amount_sq", dtype=Float64),
    ],
    source=customer_spending_source,
)
# The book's terminal risk: payments and fraud share in (t-7-n, t-7] days, labels delayed 7 days;
# and ours: the terminal's last known fraud, latest known label, and its run of known frauds.
terminal_risk_fv = FeatureView(
    name="terminal_risk_fv",
    entities=[terminal],
    ttl=WINDOW_TTL,
    schema=[
        Field(name=f"terminal_id_{kind}_{n}day_window", dtype=Int64 if kind == "nb_tx" else Float64)
        for n in BOOK_DAYS for kind in ("nb_tx", "risk")
    ] + [
        Field(name="terminal_last_fraud_unix", dtype=Int64),  # when its last known fraud was
        Field(name="terminal_last_label", dtype=Int64),  # its latest known payment a fraud?
        Field(name="terminal_fraud_run", dtype=Int64),  # known frauds in a row, the latest last
        Field(name="terminal_run_start_unix", dtype=Int64),  # when that run's first fraud was
    ],
    source=terminal_risk_source,
)


# The card's payments of the 30 days up to its latest, online within a second of each payment:
# the server evaluates customer_spending_fv's windows from them at the request's own time
# (model.yaml `realtime.at_request`). Read online only, never in training.
customer_payments_fv = FeatureView(
    name="customer_payments_fv",
    entities=[customer],
    ttl=WINDOW_TTL,
    schema=[
        Field(name="payments_unix_us", dtype=Array(Int64)),
        Field(name="payments_amount", dtype=Array(Float64)),
        Field(name="last_payment_unix", dtype=Int64),  # when the card last paid
    ],
    source=customer_payments_push,
)


# --- on-demand features: the payment itself, with the card's history before it -------------
@on_demand_feature_view(
    sources=[customer_spending_fv, terminal_risk_fv, payment],
    schema=[
        Field(name="tx_during_weekend", dtype=Int64),
        Field(name="tx_during_night", dtype=Int64),
        *[Field(name=f"customer_id_{kind}_{n}day_window", dtype=Int64 if kind == "nb_tx"
                else Float64) for n in BOOK_DAYS for kind in ("nb_tx", "avg_amount")],
        Field(name="customer_tx_in_1h", dtype=Int64),
        Field(name="seconds_since_last_tx", dtype=Float64),
        Field(name="amount_to_mean_30d", dtype=Float64),
        Field(name="amount_zscore_30d", dtype=Float64),
        Field(name="amount_to_mean_1d", dtype=Float64),
        Field(name="amount_to_mean_7d", dtype=Float64),
        Field(name="seconds_since_terminal_fraud", dtype=Float64),
        Field(name="seconds_since_terminal_run_start", dtype=Float64),
        Field(name="usual_amount", dtype=Float64),
        Field(name="amount_to_usual", dtype=Float64),
        Field(name="amount_zscore_usual", dtype=Float64),
        Field(name="mean_1d_to_usual", dtype=Float64),
        Field(name="mean_7d_to_usual", dtype=Float64),
        Field(name="sq_zscore_1d_usual", dtype=Float64),
        Field(name="sq_zscore_7d_usual", dtype=Float64),
    ],
    mode="python",
)
def payment_odfv(inputs: dict[str, list]) -> dict[str, list]:
    """The book's payment features (weekend, night, the card's count and mean amount over 1, 7
    and 30 days counting this payment), and ours: payments in the last hour, seconds since the
    card's previous payment, the amount against the card's usual (ratio to its 30-day and 1-day
    means before this payment, z-score over 30 days), seconds since the terminal's last known
    fraud and since the start of its run of known frauds, and the amount (and the card's 1- and
    7-day means) against its usual spending, the payments known to be genuine; and how far the
    card's payments of the last day and week strayed from that usual (their mean squared
    z-score): a compromised card pays a few 5x amounts among normal ones for days, which marks
    its next payments, however small, as the card's.

    Python mode on lists (a missing input is None: no payment before): Feast calls it on the
    joined training set, and the prediction server calls this same function on the rows it
    scores. `math` is imported here: Feast rebuilds the function from its source alone.
    """
    import math

    def num(value: object) -> float:
        return 0.0 if value is None or (isinstance(value, float) and math.isnan(value)) else value

    amounts, unix = inputs["tx_amount"], inputs["tx_unix"]
    out: dict[str, list] = {"tx_during_weekend": [], "tx_during_night": [],
                            "customer_tx_in_1h": [], "seconds_since_last_tx": [],
                            "amount_to_mean_30d": [], "amount_zscore_30d": [],
                            "amount_to_mean_1d": [], "amount_to_mean_7d": [],
                            "seconds_since_terminal_fraud": [],
                            "seconds_since_terminal_run_start": [], "usual_amount": [],
                            "amount_to_usual": [], "amount_zscore_usual": [],
                            "mean_1d_to_usual": [], "mean_7d_to_usual": [],
                            "sq_zscore_1d_usual": [], "sq_zscore_7d_usual": []}
    for window in ("1day", "7day", "30day"):
        out[f"customer_id_nb_tx_{window}_window"] = []
        out[f"customer_id_avg_amount_{window}_window"] = []
    for i, amount in enumerate(amounts):
        amount = num(amount)
        seconds = int(unix[i])
        # 1970-01-01 was a Thursday (weekday 3, Monday 0); the book's night is hour <= 6
        out["tx_during_weekend"].append(int((seconds // 86400 + 3) % 7 >= 5))
        out["tx_during_night"].append(int(seconds % 86400 // 3600 <= 6))
        for days, window in ((1, "1d"), (7, "7d"), (30, "30d")):
            count = int(num(inputs[f"customer_tx_{window}"][i])) + 1
            total = num(inputs[f"customer_amount_{window}"][i]) + amount
            out[f"customer_id_nb_tx_{days}day_window"].append(count)
            out[f"customer_id_avg_amount_{days}day_window"].append(total / count)
        out["customer_tx_in_1h"].append(int(num(inputs["customer_tx_1h"][i])) + 1)
        for name, at in (("seconds_since_last_tx", "customer_last_tx_unix"),
                         ("seconds_since_terminal_fraud", "terminal_last_fraud_unix"),
                         ("seconds_since_terminal_run_start", "terminal_run_start_unix")):
            last = inputs[at][i]
            out[name].append(None if last is None or (isinstance(last, float) and math.isnan(last))
                             else float(seconds - last))
        n30 = num(inputs["customer_tx_30d"][i])
        if n30 > 0:
            mean = num(inputs["customer_amount_30d"][i]) / n30
            var = max(num(inputs["customer_amount_sq_30d"][i]) / n30 - mean * mean, 0.0)
            out["amount_to_mean_30d"].append(amount / mean if mean > 0 else None)
            # spread floored at one unit: a card that always pays the same has no z of infinity
            out["amount_zscore_30d"].append((amount - mean) / max(math.sqrt(var), 1.0))
        else:
            out["amount_to_mean_30d"].append(None)
            out["amount_zscore_30d"].append(None)
        for window in ("1d", "7d"):
            n = num(inputs[f"customer_tx_{window}"][i])
            mean = num(inputs[f"customer_amount_{window}"][i]) / n if n > 0 else 0.0
            out[f"amount_to_mean_{window}"].append(amount / mean if mean > 0 else None)
        genuine = num(inputs["customer_genuine_tx"][i])
        usual = num(inputs["customer_genuine_amount"][i]) / genuine if genuine > 0 else 0.0
        if usual > 0:
            var = max(num(inputs["customer_genuine_amount_sq"][i]) / genuine - usual * usual, 0.0)
            out["usual_amount"].append(usual)
            out["amount_to_usual"].append(amount / usual)
            out["amount_zscore_usual"].append((amount - usual) / max(math.sqrt(var), 1.0))
            for window in ("1d", "7d"):
                n = num(inputs[f"customer_tx_{window}"][i])
                total = num(inputs[f"customer_amount_{window}"][i])
                out[f"mean_{window}_to_usual"].append(total / n / usual if n > 0 else None)
                # sum of (a - usual)^2 over the window from its count, sum and sum of squares
                squares = (num(inputs[f"customer_amount_sq_{window}"][i]) - 2 * usual * total
                           + n * usual * usual)
                out[f"sq_zscore_{window}_usual"].append(
                    max(squares, 0.0) / n / max(var, 1.0) if n > 0 else None)
        else:
            for name in ("usual_amount", "amount_to_usual", "amount_zscore_usual",
                         "mean_1d_to_usual", "mean_7d_to_usual", "sq_zscore_1d_usual",
                         "sq_zscore_7d_usual"):
                out[name].append(None)
    return out


# --- feature services: one per model version ------------------------------------------------
# Every feature fraud_v1 scores a payment with.
fraud_v1 = FeatureService(
    name="fraud_v1",
    features=[terminal_risk_fv, customer_spending_fv, payment_odfv],
)
