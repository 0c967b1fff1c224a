-- resources_delta -> resources for the users written now (the users parameter; NULL: all), set-based: inserts
-- the new resources, updates the ones whose values changed (an unchanged resource is not written at all), and
-- marks inactive the resources a provider no longer lists, only for providers read completely (the complete
-- parameter: a failed or partial read proves nothing is gone).
-- A resource's state is the jsonb of its synced values: a resource changed when its state did, and
-- resource_changes keeps, per resource, what this sync did (created / updated / unchanged / deleted, the state
-- before and after, the values that changed) for resource_states. Per provider counts go to `written`.
DELETE FROM written;
DELETE FROM resource_changes;
WITH delta AS (
    SELECT * FROM resources_delta WHERE %(users)s::int[] IS NULL OR user_id = ANY (%(users)s::int[])
),
existing AS (
    SELECT r.id, r.provider_id, r.resource_id, r.resource_type, r.resource_name, r.status, r.region,
           r.effective_cost, r.is_active,
           jsonb_build_object(
               'resource_name', r.resource_name, 'service_name', r.service_name, 'region', r.region,
               'status', r.status, 'external_ip', r.external_ip, 'effective_cost', r.effective_cost,
               'daily_cost', r.daily_cost, 'original_cost', r.original_cost, 'currency', r.currency,
               'billing_period', r.billing_period, 'cost_period', r.cost_period, 'cost_frequency', r.cost_frequency,
               'provider_config', r.provider_config, 'is_active', r.is_active) AS state
    FROM resources r
    WHERE r.provider_id IN (SELECT provider_id FROM delta UNION SELECT unnest(%(complete)s::int[]))
),
compared AS (
    SELECT d.*, e.id AS pk, e.state AS previous, synced.state,
           (SELECT coalesce(jsonb_object_agg(o.key, jsonb_build_object('from', o.value, 'to', n.value)), '{}')
            FROM jsonb_each(e.state) o JOIN jsonb_each(synced.state) n USING (key)
            WHERE o.value <> n.value) AS changes
    FROM delta d
    CROSS JOIN LATERAL (SELECT jsonb_build_object(
               'resource_name', d.resource_name, 'service_name', d.service_name, 'region', d.region,
               'status', d.status, 'external_ip', d.external_ip, 'effective_cost', d.effective_cost,
               'daily_cost', d.daily_cost, 'original_cost', d.original_cost, 'currency', d.currency,
               'billing_period', d.billing_period, 'cost_period', d.cost_period, 'cost_frequency', d.cost_frequency,
               'provider_config', d.provider_config, 'is_active', true) AS state) synced
    LEFT JOIN existing e USING (provider_id, resource_id, resource_type)
),
upserted AS (
    INSERT INTO resources AS r (
        provider_id, resource_id, resource_type, resource_name, service_name, region, status, external_ip,
        effective_cost, daily_cost, original_cost, currency, billing_period, cost_period, cost_frequency,
        provider_config, is_active, last_sync)
    SELECT provider_id, resource_id, resource_type, resource_name, service_name, region, status, external_ip,
           effective_cost, daily_cost, original_cost, currency, billing_period, cost_period, cost_frequency,
           provider_config, true, now()
    FROM compared WHERE pk IS NULL OR changes <> '{}'
    ON CONFLICT (provider_id, resource_id, resource_type) DO UPDATE SET
        resource_name = EXCLUDED.resource_name, service_name = EXCLUDED.service_name, region = EXCLUDED.region,
        status = EXCLUDED.status, external_ip = EXCLUDED.external_ip, effective_cost = EXCLUDED.effective_cost,
        daily_cost = EXCLUDED.daily_cost, original_cost = EXCLUDED.original_cost, currency = EXCLUDED.currency,
        billing_period = EXCLUDED.billing_period, cost_period = EXCLUDED.cost_period,
        cost_frequency = EXCLUDED.cost_frequency, provider_config = EXCLUDED.provider_config, is_active = true,
        last_sync = now(), updated_at = now()
    RETURNING r.id, r.provider_id, r.resource_id, r.resource_type, xmax = 0 AS created
),
deactivated AS (
    UPDATE resources r SET is_active = false, last_sync = now(), updated_at = now()
    FROM existing e
    WHERE r.id = e.id AND e.provider_id = ANY (%(complete)s::int[]) AND e.is_active
      AND NOT EXISTS (SELECT FROM delta d WHERE d.provider_id = e.provider_id
                      AND d.resource_id = e.resource_id AND d.resource_type = e.resource_type)
    RETURNING e.*
),
states AS (
    INSERT INTO resource_changes
    SELECT c.provider_id, coalesce(c.pk, u.id), c.resource_id, c.resource_type, c.resource_name,
           CASE WHEN c.pk IS NULL THEN 'created' WHEN c.changes <> '{}' THEN 'updated' ELSE 'unchanged' END,
           CASE WHEN c.changes <> '{}' THEN c.previous END, c.state, nullif(c.changes, '{}'), c.status, c.region,
           c.effective_cost
    FROM compared c LEFT JOIN upserted u USING (provider_id, resource_id, resource_type)
    UNION ALL
    SELECT provider_id, id, resource_id, resource_type, resource_name, 'deleted', state,
           jsonb_set(state, '{is_active}', 'false'), '{"is_active": {"from": true, "to": false}}', status, region,
           effective_cost
    FROM deactivated
    RETURNING 1
),
counts AS (
    SELECT provider_id, count(*) FILTER (WHERE created) AS created, count(*) FILTER (WHERE NOT created) AS updated,
           0 AS deactivated
    FROM upserted GROUP BY provider_id
    UNION ALL
    SELECT provider_id, 0, 0, count(*) FROM deactivated GROUP BY provider_id
)
INSERT INTO written (provider_id, created, updated, deactivated)
SELECT provider_id, sum(created), sum(updated), sum(deactivated) FROM counts GROUP BY provider_id;

-- Tags (the providers' labels/metadata) of the resources read now: added or changed ones only, and those the
-- provider no longer sets removed.
DELETE FROM resource_tags t
USING resources r, resources_delta d
WHERE t.resource_id = r.id AND r.provider_id = d.provider_id AND r.resource_id = d.resource_id
  AND r.resource_type = d.resource_type AND NOT d.tags ? t.tag_key
  AND (%(users)s::int[] IS NULL OR d.user_id = ANY (%(users)s::int[]));

INSERT INTO resource_tags AS t (resource_id, tag_key, tag_value)
SELECT r.id, tag.key, tag.value
FROM resources_delta d
JOIN resources r USING (provider_id, resource_id, resource_type)
CROSS JOIN LATERAL jsonb_each_text(d.tags) AS tag
WHERE length(tag.key) <= 100 AND (%(users)s::int[] IS NULL OR d.user_id = ANY (%(users)s::int[]))
ON CONFLICT (resource_id, tag_key) DO UPDATE SET tag_value = EXCLUDED.tag_value, updated_at = now()
WHERE t.tag_value IS DISTINCT FROM EXCLUDED.tag_value;

SELECT coalesce(sum(created), 0)::int AS inserted, coalesce(sum(updated), 0)::int AS updated,
       coalesce(sum(deactivated), 0)::int AS deactivated
FROM written
