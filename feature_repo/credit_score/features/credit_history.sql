-- The applicant's credit report (dues, hard pulls, missed payments, bankruptcies), keyed by the
-- same keyed hash of dob_ssn as the events. A sample: it covers 3.5 % of the loans. Its times
-- carry no zone in the CSV: they are UTC.
SELECT hash_entity(dob_ssn::VARCHAR) AS dob_ssn,
    timezone('UTC', event_timestamp::TIMESTAMP) AS event_timestamp,
    timezone('UTC', created_timestamp::TIMESTAMP) AS created_timestamp,
    credit_card_due::BIGINT AS credit_card_due,
    mortgage_due::BIGINT AS mortgage_due,
    student_loan_due::BIGINT AS student_loan_due,
    vehicle_loan_due::BIGINT AS vehicle_loan_due,
    (credit_card_due + mortgage_due + student_loan_due + vehicle_loan_due)::BIGINT AS total_due,
    hard_pulls::BIGINT AS hard_pulls,
    missed_payments_2y::BIGINT AS missed_payments_2y,
    missed_payments_1y::BIGINT AS missed_payments_1y,
    missed_payments_6m::BIGINT AS missed_payments_6m,
    bankruptcies::BIGINT AS bankruptcies
FROM credit_reports
