-- One chunk's staged records, for its transaction only: a resource per line, an outcome per provider and user
-- (resources_delta is made from the declaration: usersync.infrazen_bulk._stage).
CREATE TEMP TABLE resources_raw (seq bigint GENERATED ALWAYS AS IDENTITY, record jsonb NOT NULL) ON COMMIT DROP;
CREATE TEMP TABLE provider_outcomes (record jsonb NOT NULL) ON COMMIT DROP;
CREATE TEMP TABLE user_outcomes (record jsonb NOT NULL) ON COMMIT DROP;
CREATE TEMP TABLE written (provider_id int, created int, updated int, deactivated int) ON COMMIT DROP;
-- What this sync did to each resource, for its provider's resource_states rows (once its snapshot exists).
CREATE TEMP TABLE resource_changes (
    provider_id int, resource_pk int, resource_id text, resource_type text, resource_name text, state_action text,
    previous_state jsonb, current_state jsonb, changes_detected jsonb, status text, region text,
    effective_cost float8
) ON COMMIT DROP;
