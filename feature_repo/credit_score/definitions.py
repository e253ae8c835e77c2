"""Feast objects of the credit-score use case (its own Feast project, `credit_score`).
Declarations only: applying and materializing live in `pipelines/`. Tables are written by the
SQL files in `features/` (one file per table)."""

from datetime import timedelta

from feast import (
    Entity,
    FeatureService,
    FeatureView,
    Field,
    RequestSource,
    ValueType,
)
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64

from feastflow.store import feature_table_source

REFERENCE_TTL = timedelta(days=3650)  # reference facts stamped once (2017, 2020) stay valid
WINDOW_TTL = timedelta(days=3650)  # windowed counts write a row when they drop, so never stale


# --- entities -------------------------------------------------------------------------------
# The applicant, as a keyed hash of their raw dob_ssn (date of birth and SSN digits).
person = Entity(name="person", join_keys=["dob_ssn"], value_type=ValueType.STRING)
# The applicant's US zipcode (as an integer: leading zeros dropped, like the source data).
zipcode = Entity(name="zipcode", join_keys=["zipcode"], value_type=ValueType.INT64)

# --- sources --------------------------------------------------------------------------------
zipcode_profile_source = feature_table_source(__file__, "zipcode_profile")
zipcode_loans_source = feature_table_source(__file__, "zipcode_loans")
credit_history_source = feature_table_source(__file__, "credit_history")
# Request-time facts of the application (taken from each event in training).
application_context = RequestSource(
    name="application_context",
    schema=[
        Field(name="loan_amnt", dtype=Int64),
        Field(name="person_income", dtype=Int64),
        Field(name="loan_int_rate", dtype=Float64),
    ],
)

# --- feature views --------------------------------------------------------------------------
# The zipcode's population, tax returns and wages (static reference data).
zipcode_profile_fv = FeatureView(
    name="zipcode_profile_fv",
    entities=[zipcode],
    ttl=REFERENCE_TTL,
    schema=[
        Field(name="population", dtype=Int64),
        Field(name="tax_returns_filed", dtype=Int64),
        Field(name="total_wages", dtype=Int64),
        Field(name="wages_per_return", dtype=Float64),
        Field(name="returns_per_resident", dtype=Float64),
    ],
    source=zipcode_profile_source,
)
# Applications from the zipcode in the last 180 days, and the defaults among labels known by then.
zipcode_loans_fv = FeatureView(
    name="zipcode_loans_fv",
    entities=[zipcode],
    ttl=WINDOW_TTL,
    schema=[
        Field(name="loans_180d", dtype=Int64),
        Field(name="labelled_loans_180d", dtype=Int64),
        Field(name="defaults_180d", dtype=Int64),
        Field(name="default_rate_180d", dtype=Float64),
    ],
    source=zipcode_loans_source,
)
# The applicant's credit report: dues, hard pulls, missed payments, bankruptcies (a sample).
credit_history_fv = FeatureView(
    name="credit_history_fv",
    entities=[person],
    ttl=REFERENCE_TTL,
    schema=[
        Field(name="credit_card_due", dtype=Int64),
        Field(name="mortgage_due", dtype=Int64),
        Field(name="student_loan_due", dtype=Int64),
        Field(name="vehicle_loan_due", dtype=Int64),
        Field(name="total_due", dtype=Int64),
        Field(name="hard_pulls", dtype=Int64),
        Field(name="missed_payments_2y", dtype=Int64),
        Field(name="missed_payments_1y", dtype=Int64),
        Field(name="missed_payments_6m", dtype=Int64),
        Field(name="bankruptcies", dtype=Int64),
    ],
    source=credit_history_source,
)


# --- on-demand features: computed at request time from the application ---------------------
@on_demand_feature_view(
    sources=[application_context],
    schema=[
        Field(name="loan_to_income", dtype=Float64),
        Field(name="interest_to_income", dtype=Float64),
    ],
    mode="python",
)
def affordability_odfv(inputs: dict[str, list]) -> dict[str, list]:
    """The loan, and its yearly interest, as shares of the applicant's yearly income.

    Python mode on lists (a missing input is None): Feast calls it on the joined training set,
    and the prediction server calls this same function on the rows it scores.
    """

    def share(amounts: list, incomes: list) -> list:
        return [None if a is None or i is None or i <= 0 else a / i
                for a, i in zip(amounts, incomes, strict=True)]

    interest = [None if a is None or r is None else a * r / 100
                for a, r in zip(inputs["loan_amnt"], inputs["loan_int_rate"], strict=True)]
    return {
        "loan_to_income": share(inputs["loan_amnt"], inputs["person_income"]),
        "interest_to_income": share(interest, inputs["person_income"]),
    }


# --- feature services: one per model version ------------------------------------------------
# Every feature credit_score_v1 scores an application with.
credit_score_v1 = FeatureService(
    name="credit_score_v1",
    features=[zipcode_profile_fv, zipcode_loans_fv, credit_history_fv, affordability_odfv],
)
