"""Raw events of the credit-score use case: one row per loan application.

The data are Feast's credit-scoring tutorial (github.com/feast-dev/feast-credit-score-local-tutorial,
Apache-2.0), copied under `<data_dir>/feast_credit_score/` with their provenance in SOURCE.md:
28,638 loans from 2020-08-25 to 2021-08-25, each with the applicant's attributes and whether
the loan defaulted (`loan_status`). The zipcode and credit-history tables are not events: the
feature SQL reads them as reference tables.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

# the applicant's own attributes, known when the application is made (the request context)
APPLICANT = ["person_age", "person_income", "person_home_ownership", "person_emp_length",
             "loan_intent", "loan_amnt", "loan_int_rate"]
COLUMNS = ["event_id", "dob_ssn", "timestamp", "zipcode", *APPLICANT, "loan_status"]


def raw_events(data_dir: Path) -> pd.DataFrame:
    """The loan table as raw events (dob_ssn raw: ingest hashes it), oldest first."""
    loans = pd.read_parquet(Path(data_dir) / "feast_credit_score" / "loan_table.parquet")
    events = pd.DataFrame({
        "event_id": "loan-" + loans["loan_id"].astype("int64").astype(str),
        "dob_ssn": loans["dob_ssn"].astype(str),
        "timestamp": pd.to_datetime(loans["event_timestamp"], utc=True).astype("datetime64[us, UTC]"),
        "zipcode": loans["zipcode"].astype("int64"),
        **{name: loans[name] for name in APPLICANT},
        "loan_status": loans["loan_status"].astype("int64"),
    })
    for name in ("person_age", "person_income", "loan_amnt"):
        events[name] = events[name].astype("int64")
    for name in ("person_emp_length", "loan_int_rate"):
        events[name] = events[name].astype("float64")
    for name in ("person_home_ownership", "loan_intent"):
        events[name] = events[name].astype(str)
    events = events.sort_values(["timestamp", "event_id"], kind="stable", ignore_index=True)
    return events[COLUMNS]
