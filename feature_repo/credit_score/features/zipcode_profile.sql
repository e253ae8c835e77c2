-- Static facts of each zipcode (tax returns of one year, stamped 2017-01-01): size and wages.
SELECT zipcode::BIGINT AS zipcode,
    event_timestamp::TIMESTAMPTZ AS event_timestamp,
    created_timestamp::TIMESTAMPTZ AS created_timestamp,
    population::BIGINT AS population,
    tax_returns_filed::BIGINT AS tax_returns_filed,
    total_wages::BIGINT AS total_wages,
    total_wages / nullif(tax_returns_filed, 0) AS wages_per_return,
    tax_returns_filed / nullif(population, 0) AS returns_per_resident
FROM zipcodes
