-- resources_delta -> resources, set-based: inserts the new resources, updates the ones whose values changed
-- (an unchanged resource is not written at all), and marks inactive the resources a provider no longer lists,
-- only for providers read completely (the complete parameter: a failed or partial read proves nothing is gone).
-- Per provider counts go to `written`, for its sync_snapshots row.
WITH upserted AS (
    INSERT INTO resources AS r (
        provider_id, resource_id, resource_type, resource_name, service_name, region, status, external_ip,
        effective_cost, daily_cost, original_cost, currency, billing_period, cost_period, cost_frequency,
        provider_config, is_active, last_sync)
    SELECT provider_id, resource_id, resource_type, resource_name, service_name, region, status, external_ip,
           effective_cost, daily_cost, original_cost, currency, billing_period, cost_period, cost_frequency,
           provider_config, true, now()
    FROM resources_delta
    ON CONFLICT (provider_id, resource_id, resource_type) DO UPDATE SET
        resource_name = EXCLUDED.resource_name, service_name = EXCLUDED.service_name, region = EXCLUDED.region,
        status = EXCLUDED.status, external_ip = EXCLUDED.external_ip, effective_cost = EXCLUDED.effective_cost,
        daily_cost = EXCLUDED.daily_cost, original_cost = EXCLUDED.original_cost, currency = EXCLUDED.currency,
        billing_period = EXCLUDED.billing_period, cost_period = EXCLUDED.cost_period,
        cost_frequency = EXCLUDED.cost_frequency, provider_config = EXCLUDED.provider_config, is_active = true,
        last_sync = now(), updated_at = now()
    WHERE (r.resource_name, r.service_name, r.region, r.status, r.external_ip, r.effective_cost, r.daily_cost,
           r.original_cost, r.currency, r.billing_period, r.cost_period, r.cost_frequency, r.provider_config,
           r.is_active)
          IS DISTINCT FROM
          (EXCLUDED.resource_name, EXCLUDED.service_name, EXCLUDED.region, EXCLUDED.status, EXCLUDED.external_ip,
           EXCLUDED.effective_cost, EXCLUDED.daily_cost, EXCLUDED.original_cost, EXCLUDED.currency,
           EXCLUDED.billing_period, EXCLUDED.cost_period, EXCLUDED.cost_frequency, EXCLUDED.provider_config, true)
    RETURNING r.provider_id, xmax = 0 AS created
),
deactivated AS (
    UPDATE resources r SET is_active = false, last_sync = now(), updated_at = now()
    WHERE r.provider_id = ANY (%(complete)s::int[]) AND r.is_active
      AND NOT EXISTS (SELECT FROM resources_delta d WHERE d.provider_id = r.provider_id
                      AND d.resource_id = r.resource_id AND d.resource_type = r.resource_type)
    RETURNING r.provider_id
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

-- Tags (the providers' labels/metadata): added or changed ones only.
INSERT INTO resource_tags AS t (resource_id, tag_key, tag_value)
SELECT r.id, tag.key, tag.value
FROM resources_delta d
JOIN resources r USING (provider_id, resource_id, resource_type)
CROSS JOIN LATERAL jsonb_each_text(d.tags) AS tag
WHERE length(tag.key) <= 100
ON CONFLICT (resource_id, tag_key) DO UPDATE SET tag_value = EXCLUDED.tag_value, updated_at = now()
WHERE t.tag_value IS DISTINCT FROM EXCLUDED.tag_value;

SELECT coalesce(sum(created), 0)::int AS inserted, coalesce(sum(updated), 0)::int AS updated,
       coalesce(sum(deactivated), 0)::int AS deactivated
FROM written
