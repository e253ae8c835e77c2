"""Real-time features of fraud: the card's velocity, the ONE implementation online.

`customer_payments` is folded over the card's payments (the stream processor at every payment,
`feastflow features` over the event log): the card's payments of the 30 days up to its latest,
pushed online within a second. A windowed count falls when a payment leaves its window, with no
event to push it, so the velocity is not stored: `customer_spending_at` evaluates it at the
request's own time from those payments, the server calls it on every payment it scores
(model.yaml `realtime.at_request`), and the tests hold it equal, value for value, to the
batch rows of `customer_spending_fv` (features/customer_spending.sql) that training reads.

A window event is (Unix microseconds, event id, amount), oldest first.
"""

from collections.abc import Mapping, Sequence
from typing import Any

SECOND = 1_000_000  # microseconds
# the card's windows: payments strictly before the moment and after it minus the window
WINDOWS = (("1h", 3_600), ("1d", 86_400), ("7d", 7 * 86_400), ("30d", 30 * 86_400))
SPENDING_AT_REQUEST = (*(f"customer_{kind}_{name}" for name, _ in WINDOWS
                         for kind in ("tx", "amount")),
                       "customer_amount_sq_30d", "customer_last_tx_unix")


def customer_payments(window: Sequence[tuple[int, str, Any]]) -> dict[str, object]:
    """The card's payments of the 30 days up to its latest (times in Unix microseconds and
    amounts, oldest first) and when it last paid (Unix seconds)."""
    return {
        "payments_unix_us": [us for us, _, _ in window],
        "payments_amount": [amount for _, _, amount in window],
        "last_payment_unix": window[-1][0] // SECOND,
    }


def customer_spending_at(row: Mapping[str, Any], at_us: int) -> dict[str, Any]:
    """The card's payments strictly before `at_us` over the last hour, 1, 7 and 30 days: how
    many, their total and (30 days) their sum of squares, and when it last paid; all None when
    it paid nothing before (no batch row either).

    Amounts are summed in cents, as integers, as the batch SQL sums decimals: the same doubles.
    """
    times: Sequence[int] = row.get("payments_unix_us") or ()
    amounts: Sequence[float] = row.get("payments_amount") or ()
    before = [(us, round(amount * 100)) for us, amount in zip(times, amounts, strict=True)
              if us < at_us]
    if not before:
        return dict.fromkeys(SPENDING_AT_REQUEST)
    out: dict[str, Any] = {}
    cents: list[int] = []
    for name, seconds in WINDOWS:
        cents = [c for us, c in before if us > at_us - seconds * SECOND]
        out[f"customer_tx_{name}"] = len(cents)
        out[f"customer_amount_{name}"] = sum(cents) / 100
    out["customer_amount_sq_30d"] = sum(c * c for c in cents) / 10_000  # the last window's
    out["customer_last_tx_unix"] = max(us for us, _ in before) // SECOND
    return out
