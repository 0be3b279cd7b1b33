-- The customer mapping served by the lookup function.
-- Keep to the SQL that both Athena (Trino) and DuckDB run: the builder runs this file on either.
SELECT
    customer_id,
    account_id,
    segment,
    region,
    tier,
    updated_at
FROM customers
WHERE customer_id IS NOT NULL
