"""The raw events of the fraud use case: the Fraud Detection Handbook's simulated card payments.

Source: `fraud_handbook_simulated/transactions.csv.gz`, the 183 daily files of
github.com/Fraud-Detection-Handbook/simulated-data-raw (commit 6e67dbd) concatenated
(provenance in that folder's SOURCE.md): 1,754,155 payments of 4,990 cards at 10,000
terminals, 2018-04-01 to 2018-09-30, 0.84 % fraudulent. One event is one payment, as the
acquirer sees it when authorising: the card, the terminal, the amount and the time, with
whether it was a fraud as the label (known 7 days later, the book's feedback delay).
`TX_FRAUD_SCENARIO` says how a fraud was made: it is part of the label, not an input.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

SOURCE = Path("fraud_handbook_simulated") / "transactions.csv.gz"
COLUMNS = ["event_id", "transaction_id", "customer_id", "terminal_id", "timestamp",
           "tx_amount", "tx_fraud"]


def raw_events(data_dir: Path) -> pd.DataFrame:
    """One row per payment in TRANSACTION_ID order (which is time order), ids raw: ingest
    hashes the card.

    `TX_DATETIME` has no zone and one-second resolution; it is read as UTC, so the UTC hour
    is the hour the book calls night (<= 6) or day.
    """
    raw = pd.read_csv(
        Path(data_dir) / SOURCE,
        usecols=["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT",
                 "TX_FRAUD"],
        dtype={"TRANSACTION_ID": "int64", "CUSTOMER_ID": "int64", "TERMINAL_ID": "int64",
               "TX_AMOUNT": "float64", "TX_FRAUD": "int64"},
    )
    events = pd.DataFrame({
        "event_id": "tx-" + raw["TRANSACTION_ID"].astype(str),
        "transaction_id": raw["TRANSACTION_ID"],
        "customer_id": raw["CUSTOMER_ID"].astype(str),
        "terminal_id": raw["TERMINAL_ID"],
        "timestamp": pd.to_datetime(raw["TX_DATETIME"], format="%Y-%m-%d %H:%M:%S",
                                    utc=True).astype("datetime64[us, UTC]"),
        "tx_amount": raw["TX_AMOUNT"],
        "tx_fraud": raw["TX_FRAUD"],
    })
    return events.sort_values("transaction_id", kind="stable", ignore_index=True)[COLUMNS]
