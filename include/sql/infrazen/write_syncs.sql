-- The bookkeeping of the users written now (the users parameter; NULL: all), set-based: per user one complete_syncs row,
-- per provider (failed ones too, with their real error and duration) its sync_snapshots row, its
-- provider_sync_references row, its resources' resource_states rows (from resource_changes), and
-- cloud_providers.last_sync/sync_status/sync_error. Statuses and totals were decided by the sync
-- (usersync.infrazen_bulk); the snapshot's resource counts come from `written`.
WITH u AS (
    SELECT (record ->> 'user_id')::int AS user_id, record AS r FROM user_outcomes
    WHERE %(users)s::int[] IS NULL OR (record ->> 'user_id')::int = ANY (%(users)s::int[])
),
p AS (
    SELECT (record ->> 'user_id')::int AS user_id, (record ->> 'provider_id')::int AS provider_id, record AS r
    FROM provider_outcomes
    WHERE %(users)s::int[] IS NULL OR (record ->> 'user_id')::int = ANY (%(users)s::int[])
),
cs AS (
    INSERT INTO complete_syncs (
        user_id, sync_type, sync_status, sync_started_at, sync_completed_at, sync_duration_seconds,
        total_providers_synced, successful_providers, failed_providers, total_resources_found, total_daily_cost,
        total_monthly_cost, cost_by_provider, resources_by_provider, error_message, error_details, sync_config)
    SELECT user_id, %(sync_type)s::text, r ->> 'status', (r ->> 'started_at')::timestamptz,
           (r ->> 'completed_at')::timestamptz, (r ->> 'duration')::int, (r ->> 'providers')::int,
           (r ->> 'successful')::int, (r ->> 'failed')::int, (r ->> 'resources')::int, (r ->> 'daily_cost')::float8,
           (r ->> 'monthly_cost')::float8, r -> 'cost_by_provider', r -> 'resources_by_provider',
           r ->> 'error_message', r -> 'error_details', r -> 'sync_config'
    FROM u
    RETURNING id, user_id, sync_status
),
snap AS (
    INSERT INTO sync_snapshots (
        provider_id, sync_type, sync_status, sync_started_at, sync_completed_at, sync_duration_seconds,
        total_resources_found, resources_created, resources_updated, resources_deleted, resources_unchanged,
        total_monthly_cost, error_message, error_details, sync_config)
    SELECT p.provider_id, 'complete_sync', r ->> 'status', (r ->> 'started_at')::timestamptz,
           (r ->> 'completed_at')::timestamptz, (r ->> 'duration')::int, (r ->> 'resources')::int,
           coalesce(w.created, 0), coalesce(w.updated, 0), coalesce(w.deactivated, 0),
           greatest((r ->> 'resources')::int - coalesce(w.created, 0) - coalesce(w.updated, 0), 0),
           (r ->> 'cost')::float8,  -- the app's quirk (spec §1.4): this column holds the daily total
           r ->> 'error', r -> 'error_details', r -> 'sync_config'
    FROM p LEFT JOIN written w USING (provider_id)
    RETURNING id, provider_id
),
states AS (  -- per resource of a provider read now: what this sync did to it (resource_changes)
    INSERT INTO resource_states (
        sync_snapshot_id, resource_id, provider_resource_id, resource_type, resource_name, state_action,
        previous_state, current_state, changes_detected, status, region, effective_cost, has_cost_change,
        has_status_change, has_config_change)
    SELECT snap.id, c.resource_pk, c.resource_id, c.resource_type, c.resource_name, c.state_action,
           c.previous_state, c.current_state, c.changes_detected, c.status, c.region, c.effective_cost,
           coalesce(c.changes_detected ?| array['effective_cost', 'daily_cost', 'original_cost'], false),
           coalesce(c.changes_detected ?| array['status', 'is_active'], false),
           coalesce(c.changes_detected - array['effective_cost', 'daily_cost', 'original_cost', 'status', 'is_active']
                    <> '{}', false)
    FROM resource_changes c JOIN snap USING (provider_id)
    RETURNING 1
),
refs AS (
    INSERT INTO provider_sync_references (
        complete_sync_id, provider_id, sync_snapshot_id, sync_order, sync_status, sync_duration_seconds,
        resources_synced, provider_cost, error_message, error_details)
    SELECT cs.id, p.provider_id, snap.id, (p.r ->> 'sync_order')::int, p.r ->> 'status', (p.r ->> 'duration')::int,
           (p.r ->> 'resources')::int, (p.r ->> 'cost')::float8, p.r ->> 'error', p.r -> 'error_details'
    FROM p JOIN cs USING (user_id) JOIN snap USING (provider_id)
    RETURNING 1
),
providers AS (
    UPDATE cloud_providers c
    SET last_sync = (p.r ->> 'completed_at')::timestamptz, sync_status = p.r ->> 'status',
        sync_error = p.r ->> 'error', provider_metadata = coalesce(p.r -> 'metadata', c.provider_metadata),
        updated_at = now()
    FROM p WHERE c.id = p.provider_id
    RETURNING 1
)
SELECT cs.user_id, cs.id AS complete_sync_id, cs.sync_status, (SELECT count(*) FROM refs) AS refs,
       (SELECT count(*) FROM providers) AS providers, (SELECT count(*) FROM states) AS states
FROM cs ORDER BY cs.user_id
