-- resources_raw -> resources_delta for the users written now (the users parameter; NULL: all): typed, the last record per
-- (provider_id, resource_id, resource_type) wins; a record the resources table cannot hold goes to quarantine
-- with its reason instead (one bad record never fails the others).
DELETE FROM resources_delta;
DELETE FROM written;
DELETE FROM resource_changes;
WITH raw AS (
    SELECT seq, record,
        CASE
            WHEN jsonb_typeof(record -> 'provider_id') <> 'number' THEN 'provider_id is not a number'
            WHEN coalesce(record ->> 'resource_id', '') = '' THEN 'resource_id missing'
            WHEN coalesce(record ->> 'resource_type', '') = '' THEN 'resource_type missing'
            WHEN length(record ->> 'resource_id') > 100 THEN 'resource_id longer than 100'
            WHEN length(record ->> 'resource_type') > 50 THEN 'resource_type longer than 50'
            WHEN length(coalesce(record ->> 'resource_name', '')) > 255 THEN 'resource_name longer than 255'
            WHEN length(coalesce(record ->> 'service_name', '')) > 100 THEN 'service_name longer than 100'
            WHEN length(coalesce(record ->> 'region', '')) > 100 THEN 'region longer than 100'
            WHEN length(coalesce(record ->> 'status', '')) > 50 THEN 'status longer than 50'
            WHEN length(coalesce(record ->> 'external_ip', '')) > 45 THEN 'external_ip longer than 45'
            WHEN coalesce(jsonb_typeof(record -> 'daily_cost'), 'null') NOT IN ('number', 'null')
              OR coalesce(jsonb_typeof(record -> 'effective_cost'), 'null') NOT IN ('number', 'null')
              OR coalesce(jsonb_typeof(record -> 'original_cost'), 'null') NOT IN ('number', 'null')
                THEN 'a cost is not a number'
            WHEN coalesce(jsonb_typeof(record -> 'tags'), 'null') NOT IN ('object', 'null') THEN 'tags is not an object'
        END AS reason
    FROM resources_raw
    WHERE %(users)s::int[] IS NULL OR (record ->> 'user_id')::int = ANY (%(users)s::int[])
),
refused AS (
    INSERT INTO quarantine (run_id, entity, reason, record)
    SELECT %(run_id)s::text, 'resources', reason, record FROM raw WHERE reason IS NOT NULL
    RETURNING 1
),
staged AS (
    INSERT INTO resources_delta
    SELECT DISTINCT ON (provider_id, resource_id, resource_type)
           user_id, provider_id, resource_id, resource_type, resource_name, service_name, region, status,
           external_ip, effective_cost, daily_cost, original_cost, currency, billing_period, cost_period,
           cost_frequency, provider_config, tags
    FROM (
        SELECT (record ->> 'user_id')::int AS user_id, (record ->> 'provider_id')::int AS provider_id,
               record ->> 'resource_id' AS resource_id, record ->> 'resource_type' AS resource_type,
               coalesce(nullif(record ->> 'resource_name', ''), record ->> 'resource_id'),
               coalesce(record ->> 'service_name', ''), coalesce(nullif(record ->> 'region', ''), 'global'),
               record ->> 'status', record ->> 'external_ip', (record ->> 'effective_cost')::float8,
               (record ->> 'daily_cost')::float8, (record ->> 'original_cost')::float8,
               coalesce(record ->> 'currency', 'RUB'), record ->> 'billing_period', record ->> 'cost_period',
               record ->> 'cost_frequency', coalesce(record -> 'provider_config', '{}'),
               coalesce(record -> 'tags', '{}'), seq
        FROM raw WHERE reason IS NULL
    ) typed (user_id, provider_id, resource_id, resource_type, resource_name, service_name, region, status,
             external_ip, effective_cost, daily_cost, original_cost, currency, billing_period, cost_period,
             cost_frequency, provider_config, tags, seq)
    ORDER BY provider_id, resource_id, resource_type, seq DESC
    RETURNING 1
)
SELECT (SELECT count(*) FROM staged) AS staged, (SELECT count(*) FROM refused) AS quarantined
